"""`factory eval RUN_DIR --bench DIR...` scores a trained model (a local folder or a URL such as
s3://bucket/run, read straight from the store); `factory evalsets OUT` writes the built-in
benchmark files (the same files curation decontaminates against)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from factory.core.errors import FactoryError
from factory.core.ui import console, table


def evaluate(
    run_dir: str = typer.Argument(..., help="a run folder (its hf/ export) or an HF export folder; a path or a URL"),
    bench: List[str] = typer.Option([], "--bench", "-b", help="benchmark folder or lm-eval style JSONL; repeatable (default: the built-ins)"),
    max_items: Optional[int] = typer.Option(None, help="score only the first N items of each benchmark"),
    batch_size: int = typer.Option(32, help="sequences per forward pass"),
    n: int = typer.Option(500, help="items per built-in benchmark when --bench is not given"),
    out: Optional[str] = typer.Option(None, help="write the scores as JSON here, a path or a URL (default: RUN_DIR/eval.json)"),
) -> None:
    """Score a trained model on benchmarks (multiple choice by log-likelihood, greedy exact match, loss)."""
    from factory.evaluate.score import score_run
    from train import storage

    res = score_run(run_dir, bench, max_items=max_items, batch_size=batch_size, n_builtin=n)
    dest = out or storage.join(run_dir, "eval.json")
    try:
        storage.write_text(dest, json.dumps(res, indent=1))
    except storage.StorageError as e:
        raise FactoryError(e.what, where=e.url, fix=e.fix) from None
    rows = [[k, v["metric"], f"{v['score']:.4f}", f"{v['stderr']:.4f}", v["n"], v["seconds"]] for k, v in res.items()]
    console.print(table(f"eval: {run_dir}", ["benchmark", "metric", "score", "stderr", "n", "s"], rows))
    console.print(f"wrote {dest}")


def evalsets(
    out: Path = typer.Argument(..., help="folder to write one benchmark folder per built-in benchmark into"),
    n: int = typer.Option(500, help="items per benchmark"),
    seed: int = typer.Option(0, help="item sampling seed (same seed, same files)"),
    holdout: Optional[Path] = typer.Option(None, help="file of wiki titles kept out of training, one a line (makes wiki_val)"),
) -> None:
    """Write the built-in benchmarks (factory.evaluate.sets.BENCHMARKS; wiki_val only with --holdout)."""
    from factory.evaluate import sets as ev

    titles = [t for t in holdout.read_text().splitlines() if t.strip()] if holdout else None
    made = ev.build(out, holdout_titles=titles, seed=seed, n=n)
    rows = [[k, d, sum(1 for _ in open(Path(d) / "data.jsonl"))] for k, d in made["dirs"].items()]
    console.print(table("benchmarks", ["name", "folder", "items"], rows))


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate)
    app.command("evalsets")(evalsets)
