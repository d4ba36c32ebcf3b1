"""`factory seeds CONFIG.yaml --out DIR`: write seed rows for the recipes."""

from __future__ import annotations

from typing import Optional

import typer

from factory.config import load_config
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


def register(app: typer.Typer) -> None:
    app.command("seeds")(seeds)
