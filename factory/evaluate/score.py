"""Scoring a trained model: the one place that loads a run's model and runs benchmarks on it.

Used by `factory eval`, the ablation runner and the demo. Errors come back as one FactoryError
naming the run or the benchmark and the fix.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from factory.core.errors import FactoryError


def builtin_benchmarks(run_dir: str, n: int = 500) -> list[str]:
    """The built-in benchmark folders: next to a local run, or in a shared temp folder for a URL."""
    from factory.evaluate import sets as evalsets
    from train import storage

    where = Path(tempfile.gettempdir()) / "factory-eval" / f"n{n}" if storage.is_url(run_dir) else Path(run_dir)
    return list(evalsets.build(where / "benchmarks", n=n)["dirs"].values())


def score_run(run_dir: str, benches: list[str] | None = None, max_items: int | None = None, batch_size: int = 32,
              device: str | None = None, n_builtin: int = 500) -> dict[str, Any]:
    """Load the run's model (local folder or URL; GPU when there is one) and score it on `benches`
    (default: the built-ins, `n_builtin` items each, written only once the model has loaded)."""
    from train import storage
    from train.eval import BenchmarkError, evaluate
    from train.model import load_for_eval

    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:  # the model first: a missing run is refused before anything is written
        model, tok = load_for_eval(run_dir, device=device)
    except storage.StorageError as e:
        raise FactoryError(e.what, where=e.url, fix=e.fix) from None
    except FileNotFoundError as e:
        raise FactoryError(str(e), where=str(run_dir), fix="give a run folder with an hf/ export") from None
    if tok is None:
        raise FactoryError("no tokenizer.json next to the model", where=str(run_dir), fix="export the run with its tokenizer")
    if not benches:
        benches = builtin_benchmarks(run_dir, n_builtin)
    try:
        return evaluate(model, tok, benches, max_items=max_items, batch_size=batch_size)
    except BenchmarkError as e:
        raise FactoryError(str(e), fix="see the benchmark format in docs/guide/extending.md") from None
