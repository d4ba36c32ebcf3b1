"""`factory seeds CONFIG.yaml --out DIR`: write seed rows for the recipes."""

from __future__ import annotations

from typing import Optional

import typer

from factory.config import load_config, read_yaml
from factory.ui import console, table


def seeds(
    config: str = typer.Argument("seeds/wiki.yaml", help="seeds YAML"),
    out: str = typer.Option("runs/seeds", help="output folder (any fsspec URL)"),
    n: Optional[int] = typer.Option(None, help="override the number of seeds"),
) -> None:
    """Write seed documents (Wikipedia summaries, JSONL or parquet rows) to a stage folder."""
    from factory import seeds as stage

    cfg = load_config(stage.SeedsConfig, config, {"n": n} if n else None)
    m = stage.run(cfg, out)
    rows = [[k, v] for k, v in m["counts"].items()] + [[f"quarantined: {k}", v] for k, v in m["dropped"].items()]
    console.print(table(f"seeds -> {out}", ["count", "n"], rows))




def curate_seeds(
    inputs: str = typer.Argument(..., help="a stage folder of seed rows (e.g. from `factory seeds`)"),
    out: str = typer.Option("runs/seeds_curated", help="output folder"),
    config: Optional[str] = typer.Option(None, help="seed-curation YAML (SeedCurateConfig fields)"),
    n: Optional[int] = typer.Option(None, help="how many passages to keep"),
    code: bool = typer.Option(False, help="also add the code seeds shipped in seeds/code/"),
) -> None:
    """Split seeds into passages, score them for educational value, balance by topic."""
    from factory import seedcurate
    from factory.config import validate

    data = {} if config is None else read_yaml(config)
    if n:
        data["n"] = n
    cfg = validate(seedcurate.SeedCurateConfig, data, config or "seed-curation options")
    m = seedcurate.run(cfg, inputs, out, code=code)
    rows = [[k, v] for k, v in m["counts"].items()] + [[f"dropped: {k}", v] for k, v in m["dropped"].items()]
    console.print(table(f"seed curation -> {out}", ["count", "n"], rows))


def register(app: typer.Typer) -> None:
    app.command("seeds")(seeds)
    app.command("curate-seeds")(curate_seeds)
