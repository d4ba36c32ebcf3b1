"""`factory curate [CONFIG.yaml] --in DIR --out DIR`: filter, dedup and decontaminate documents."""

from __future__ import annotations

from typing import List, Optional

import typer

from factory.ui import console, table


def curate(
    config: Optional[str] = typer.Argument(None, help="curation YAML (default: the packaged default.yaml)"),
    inputs: Optional[List[str]] = typer.Option(None, "--in", help="input stage folder (repeatable)"),
    out: Optional[str] = typer.Option(None, "--out", help="output stage folder (any fsspec URL)"),
    reference: Optional[List[str]] = typer.Option(None, "--reference", help="web/seed folder to dedup against"),
    bench: Optional[List[str]] = typer.Option(None, "--bench", help="benchmark JSONL file or folder to decontaminate against"),
    ray: bool = typer.Option(False, "--ray", help="run on Ray (RAY_ADDRESS or a local ray.init())"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address"),
    tasks: Optional[int] = typer.Option(None, help="datatrove tasks per stage"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override, e.g. --set filters.faithfulness.enabled=false "
                                             "(repeatable)"),
) -> None:
    """Curate documents with datatrove: quality and synthetic filters, dedup, decontamination."""
    import os

    from factory.curate import config as C
    from factory.curate import run
    from factory.curate.logs import LOG

    cfg = C.load(config)
    data = cfg.model_dump()
    if inputs:
        data["inputs"] = list(inputs)
    if out:
        data["out"] = out
    if reference:
        data["dedup"]["reference"] = list(reference)
    if bench:
        data["decont"]["benchmarks"] = list(bench)
    if ray or address:
        data["executor"]["ray"] = True
        data["executor"]["ray_address"] = address or os.environ.get("RAY_ADDRESS") or None
    elif os.environ.get("RAY_ADDRESS") and not cfg.executor.ray_address:  # inside a Ray job: use the cluster
        data["executor"]["ray"] = True
        data["executor"]["ray_address"] = os.environ["RAY_ADDRESS"]
    if tasks:
        data["executor"]["tasks"] = tasks
    if set_:  # the same `section.key=value` overrides as `factory train --set`
        from factory.errors import FactoryError
        from train.config import ConfigError, _merge, parse_overrides

        try:
            data = _merge(data, parse_overrides(set_))
        except ConfigError as e:
            raise FactoryError(str(e), field="--set", fix="write --set section.key=value") from None
    cfg = C.validate_config(data, config or str(C.DEFAULT_YAML))
    m = run(cfg)
    c = m["counts"]
    rows = [["in", c.get("in", 0)], ["kept", c.get("kept", 0)]]
    rows += [[f"dropped: {k}", v] for k, v in sorted(m["dropped"].items(), key=lambda kv: -kv[1])]
    console.print(table(f"curate -> {cfg.out} ({m.get('executor')})", ["count", "docs"], rows))
    console.print(f"report: {cfg.out.rstrip('/')}/report.md; datatrove's logs: {cfg.out.rstrip('/')}/{LOG}")


def register(app: typer.Typer) -> None:
    app.command("curate")(curate)
