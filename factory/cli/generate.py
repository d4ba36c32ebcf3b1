"""`factory generate CONFIG.yaml`: seeds x recipes through the teacher on Ray, resumable."""

from __future__ import annotations

from typing import Optional

import typer

from factory.core.ui import console, table


def generate(config: str = typer.Argument(..., help="generation config YAML"),
             out: Optional[str] = typer.Option(None, help="output folder (overrides the config's `out`)"),
             ray_address: Optional[str] = typer.Option(None, "--address", help="Ray address (default: RAY_ADDRESS or a local Ray)"),
             limit: Optional[int] = typer.Option(None, help="use only the first N seeds"),
             pilot: Optional[int] = typer.Option(None, min=1, help="run N seeds spread over the set through generate "
                                                 "and curate (into OUT-pilot) and forecast the full run instead"),
             replicas: Optional[int] = typer.Option(None, "--replicas", min=1, help="with --pilot: teacher replicas "
                                                    "the wall-time forecast assumes (default: the config's)"),
             curate_config: Optional[str] = typer.Option(None, "--curate", help="with --pilot: the curation config YAML "
                                                         "(default: the packaged one)")) -> None:
    """Generate synthetic documents; rerun the same command to resume."""
    from factory.core.config import load_config
    from factory.generate import GenerateConfig, run

    overrides = {k: v for k, v in {"out": out, "ray_address": ray_address, "limit": limit}.items() if v is not None}
    cfg = load_config(GenerateConfig, config, overrides)
    if pilot:
        from factory.generate.forecast import rows as forecast_rows
        from factory.generate.forecast import run_pilot

        fc = run_pilot(cfg, pilot, where=config, replicas=replicas, curate_config=curate_config)
        console.print(table(f"forecast for {fc['seeds']:,} seeds from a pilot of {fc['pilot_seeds']}",
                            ["", "forecast", "95% interval", "per seed"], forecast_rows(fc)))
        console.print(f"pilot outputs and forecast.json: {fc['pilot_folder']}")
        return
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
