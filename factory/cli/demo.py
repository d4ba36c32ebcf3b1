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
    eval_items: int = typer.Option(400, help="items per benchmark"),
) -> None:
    """Seeds -> teacher -> generate -> curate -> tokenize -> mix -> train -> eval -> report."""
    from factory.demo import DemoConfig, check_ready, run

    check_ready()
    run(DemoConfig(out=out, seeds=seeds, web_docs=web_docs, replicas=replicas, tokens=tokens, eval_items=eval_items))


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
