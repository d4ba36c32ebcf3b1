"""`factory ablate GRID.yaml`: train one model per grid cell and seed, evaluate, report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from factory.core.ui import console


def ablate(
    grid: Path = typer.Argument(..., help="ablation grid YAML (see mixes/ablations/)"),
    out: Optional[str] = typer.Option(None, help="output folder or URL, e.g. s3://bucket/abl (default: the grid's `out`, "
                                      "else runs/ablations/NAME)"),
    data: Optional[Path] = typer.Option(None, help="tokenized data folder on local disk (default: the grid's data_root)"),
    scratch: Optional[Path] = typer.Option(None, help="with a URL --out: the local folder for mixes, plans and benchmarks"),
    dry_run: bool = typer.Option(False, "--dry-run", help="only expand the grid and print the cells"),
    plan_only: bool = typer.Option(False, "--plan-only", help="write the mixes, plans and OUT/tasks.json, then stop: "
                                   "train them with `python -m train.suite OUT/tasks.json` (torch only, e.g. on a bare "
                                   "GPU host), then run this again to report"),
    address: Optional[str] = typer.Option(None, "--address", help="run the cells on this Ray cluster (host:port of its "
                                          "GCS; RAY_ADDRESS works too with the grid's `parallel: ray`)"),
) -> None:
    """Expand a mix grid, train and evaluate every cell x seed (finished ones are skipped), write the report."""
    from factory import ablate as ab
    from factory.core.errors import FactoryError
    from factory.core.ui import table
    from train.storage import StorageError

    if dry_run:
        g = ab.load_grid(grid)
        cells = ab.scaled(ab.expand(grid, g), g)  # each cell once per scale
        keys = list(cells[0]["params"])
        console.print(table(f"{g.name}: {len(cells)} cells x {len(g.seeds)} seeds", ["cell", *keys],
                            [[c["id"], *[c["params"][k] for k in keys]] for c in cells]))
        return
    try:
        res = ab.run(grid, out, data_root=data, scratch=scratch, plan_only=plan_only, address=address)
    except StorageError as e:
        raise FactoryError(e.what, where=e.url, fix=e.fix) from None
    if plan_only:
        console.print(f"{res['to_run']} runs to train: python -m train.suite {res['tasks_file']}")
        return
    console.print(f"{res['ran']} runs trained, {res['skipped']} already done; report: {res['report']['report_md']}")


def register(app: typer.Typer) -> None:
    app.command("ablate")(ablate)
