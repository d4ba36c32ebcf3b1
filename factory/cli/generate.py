"""`factory generate CONFIG.yaml`: seeds x recipes through the teacher on Ray, resumable."""

from __future__ import annotations

from typing import Optional

import typer

from factory.ui import console, table


def generate(config: str = typer.Argument(..., help="generation config YAML"),
             out: Optional[str] = typer.Option(None, help="output folder (overrides the config's `out`)"),
             ray_address: Optional[str] = typer.Option(None, "--address", help="Ray address (default: RAY_ADDRESS or a local Ray)"),
             limit: Optional[int] = typer.Option(None, help="use only the first N seeds")) -> None:
    """Generate synthetic documents; rerun the same command to resume."""
    from factory.config import load_config
    from factory.generate import GenerateConfig, run

    overrides = {k: v for k, v in {"out": out, "ray_address": ray_address, "limit": limit}.items() if v is not None}
    cfg = load_config(GenerateConfig, config, overrides)
    m = run(cfg, where=config)
    acc, counts = m.get("accounting", {}), m.get("counts", {})
    rows = [["documents", counts.get("docs", 0)], ["seeds", counts.get("seeds", 0)], ["rejected", counts.get("rejected", 0)]]
    rows += [[f"  {r}", n] for r, n in sorted(m.get("dropped", {}).items())]
    this = m.get("this_run", {})  # what this run paid and took; the folder's totals are in the manifest
    rows += [[f"{k} (this run)", this.get(k, 0)] for k in ("requests", "retries", "cache_hits", "completion_tokens", "cost")]
    rows += [["completion tokens (all runs)", acc.get("completion_tokens", 0)], ["cost (all runs)", acc.get("cost", 0)]]
    rows += [["wall s (this run)", m.get("timings", {}).get("wall_s", 0)], ["output", cfg.out]]
    console.print(table("generate", ["", "value"], rows))


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
