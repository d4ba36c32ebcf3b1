"""`factory demo`: the whole factory on one machine, offline."""

from __future__ import annotations

from typing import Optional

import typer


def demo(
    out: str = typer.Option("runs/demo", help="output folder; a rerun skips finished stages"),
    seeds: int = typer.Option(40, help="web passages that seed the recipes"),
    web_docs: int = typer.Option(3000, help="Wikipedia summaries in the web source"),
    replicas: int = typer.Option(2, help="llama.cpp teacher processes"),
    tokens: Optional[int] = typer.Option(None, help="training tokens per model (default: each mix's total_tokens)"),
    seq_len: Optional[int] = typer.Option(None, help="override the mixes' sequence length"),
    eval_items: int = typer.Option(400, help="items per benchmark"),
    mix: Optional[list[str]] = typer.Option(None, help="mix YAML files to compare (default: mixes/web_only.yaml mixes/phi4.yaml)"),
) -> None:
    """Seeds -> teacher -> generate -> curate -> tokenize -> mix -> train -> eval -> report."""
    from factory.demo import DemoConfig, check_ready, run

    check_ready()
    extra = {"mixes": mix} if mix else {}
    run(DemoConfig(out=out, seeds=seeds, web_docs=web_docs, replicas=replicas, tokens=tokens, seq_len=seq_len, eval_items=eval_items, **extra))


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
