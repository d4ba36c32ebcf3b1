"""`factory seeds CONFIG --out DIR`: write seed rows for the recipes;
`factory curate-seeds [CONFIG] --in DIR --out DIR`: passages scored and balanced."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from factory.core.config import load_config
from factory.core.errors import FactoryError
from factory.core.ui import console, table


def seeds(
    config: str = typer.Argument("seeds/wiki.yaml", help="seeds YAML"),
    out: Optional[str] = typer.Option(None, "--out", help="output folder, any fsspec URL (default: the config's out, runs/seeds)"),
    n: Optional[int] = typer.Option(None, "--n", help="override the number of seeds"),
) -> None:
    """Write seed documents (Wikipedia summaries, JSONL or parquet rows) to a stage folder."""
    from factory.seeds import sources as stage

    cfg = load_config(stage.SeedsConfig, config, {k: v for k, v in {"n": n, "out": out}.items() if v})
    m = stage.run(cfg)
    rows = [[k, v] for k, v in m["counts"].items()] + [[f"quarantined: {k}", v] for k, v in m["dropped"].items()]
    console.print(table(f"seeds -> {cfg.out}", ["count", "n"], rows))


def curate_seeds(
    config: Optional[str] = typer.Argument(None, help="seed-curation YAML (SeedCurateConfig fields; default: the defaults)"),
    inputs: Optional[str] = typer.Option(None, "--in", help="a stage folder of seed rows (e.g. from `factory seeds`)"),
    out: Optional[str] = typer.Option(None, "--out", help="output folder (default: the config's out, runs/seeds_curated)"),
    n: Optional[int] = typer.Option(None, "--n", help="how many passages to keep"),
    code: bool = typer.Option(False, "--code", help="also add the code seeds shipped in seeds/code/"),
) -> None:
    """Split seeds into passages, score them for educational value, balance by topic."""
    from factory.core.config import validate
    from factory.seeds import curate as seedcurate

    if config and Path(config).is_dir():
        raise FactoryError("the argument is the seed-curation config file, not the seed folder", where=config,
                           fix=f"give the seed folder with --in: factory curate-seeds --in {config}")
    over = {k: v for k, v in {"inputs": inputs, "out": out, "n": n, "code": code or None}.items() if v is not None}
    cfg = load_config(seedcurate.SeedCurateConfig, config, over) if config else \
        validate(seedcurate.SeedCurateConfig, over, "seed-curation options")
    m = seedcurate.run(cfg)
    rows = [[k, v] for k, v in m["counts"].items()] + [[f"dropped: {k}", v] for k, v in m["dropped"].items()]
    console.print(table(f"seed curation -> {cfg.out}", ["count", "n"], rows))


def register(app: typer.Typer) -> None:
    app.command("seeds")(seeds)
    app.command("curate-seeds")(curate_seeds)
