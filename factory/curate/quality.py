"""A small offline quality classifier: logistic regression on hashed word n-grams (numpy only).

Trained on labeled documents (clean = 1, any defect = 0) plus seed passages as positives; its
score (P(clean)) goes to `meta.extra.quality` and, below a threshold, rejects the document.

    python -m factory.curate.quality train LABELS.jsonl --split dev --seeds SEED_FOLDER --out quality.npz
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from factory.curate.chatter import record_extra
from factory.curate.filters import Step
from factory.curate.io import reject

DIM = 1 << 18
_TOK = re.compile(r"\w+|[^\w\s]")


def features(text: str, dim: int = DIM) -> tuple[np.ndarray, np.ndarray]:
    """Hashed word 1- and 2-grams (lowercased, punctuation kept as tokens), log counts, L2-normalized."""
    toks = _TOK.findall(text.lower())
    grams = toks + [f"{a} {b}" for a, b in zip(toks, toks[1:])]
    if not grams:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    h = np.fromiter((zlib.crc32(g.encode()) for g in grams), np.int64, len(grams)) % dim
    idx, cnt = np.unique(h, return_counts=True)
    val = np.log1p(cnt).astype(np.float32)
    return idx, val / np.linalg.norm(val)


@dataclass
class Model:
    w: np.ndarray
    b: float
    dim: int = DIM

    def score(self, text: str) -> float:
        idx, val = features(text, self.dim)
        z = float(val @ self.w[idx]) + self.b
        return 1.0 / (1.0 + np.exp(-z))

    def save(self, url: str) -> None:
        import io

        import fsspec

        buf = io.BytesIO()
        np.savez_compressed(buf, w=self.w, b=np.float32(self.b), dim=np.int64(self.dim))
        with fsspec.open(url, "wb") as f:
            f.write(buf.getvalue())

    @classmethod
    def load(cls, url: str) -> "Model":
        import io

        import fsspec

        from factory.errors import FactoryError

        try:
            with fsspec.open(url, "rb") as f:
                z = np.load(io.BytesIO(f.read()))
                return cls(z["w"], float(z["b"]), int(z["dim"]))
        except (OSError, ValueError, KeyError) as e:
            raise FactoryError(f"cannot read the quality model: {e}", where=url, field="filters.quality.model",
                               fix="train one with `python -m factory.curate.quality train ...`") from None


def train(texts: list[str], labels: list[int], dim: int = DIM, epochs: int = 300, lr: float = 2.0,
          l2: float = 1e-4) -> Model:
    """Full-batch gradient descent on the logistic loss, classes weighted to equal total weight."""
    y = np.asarray(labels, np.float32)
    feats = [features(t, dim) for t in texts]
    rows = np.concatenate([np.full(len(i), k) for k, (i, _) in enumerate(feats)]).astype(np.int64)
    cols = np.concatenate([i for i, _ in feats])
    vals = np.concatenate([v for _, v in feats])
    pos = max(1.0, float(y.sum()))
    neg = max(1.0, float(len(y) - y.sum()))
    cw = np.where(y > 0, len(y) / (2 * pos), len(y) / (2 * neg)).astype(np.float32)
    w = np.zeros(dim, np.float32)
    b = 0.0
    for _ in range(epochs):
        z = np.bincount(rows, vals * w[cols], minlength=len(y)) + b
        p = 1.0 / (1.0 + np.exp(-z))
        g = (p - y) * cw / len(y)
        gw = np.bincount(cols, vals * g[rows], minlength=dim).astype(np.float32) + l2 * w
        w -= lr * gw
        b -= lr * float(g.sum())
    return Model(w, b, dim)


class QualityFilter(Step):
    """Score each document with the classifier; record it; reject below `threshold`."""

    name = reason = "quality"

    def __init__(self, model: str, threshold: float, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.model_url, self.threshold = model, threshold
        self._model: Model | None = None

    def __getstate__(self):
        return {**self.__dict__, "_model": None}

    def filter(self, doc):
        if self._model is None:
            self._model = Model.load(self.model_url)
        s = round(self._model.score(doc.text), 4)
        record_extra(doc, quality=s)
        return reject(doc, self.reason, f"score {s:.3f} < {self.threshold}") if s < self.threshold else True


def read_labels(path: str, split: str | None = None) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in rows if split is None or r.get("split") == split]


def training_set(labels: list[dict], seed_texts: list[str]) -> tuple[list[str], list[int]]:
    texts = [r["text"] for r in labels] + list(seed_texts)
    ys = [int(r["label"] == "clean") for r in labels] + [1] * len(seed_texts)
    return texts, ys


def main(argv: list[str] | None = None) -> None:
    import typer

    app = typer.Typer(add_completion=False)

    @app.command("train")
    def _train(labels: str = typer.Argument(..., help="labeled JSONL (text, label, split)"),
               split: str = typer.Option("dev", help="the split to train on"),
               seeds: list[str] = typer.Option([], help="seed stage folders: their passages are positives"),
               out: str = typer.Option("quality.npz", help="where to write the weights")) -> None:
        from factory.curate.faithful import load_seeds

        seed_texts = sorted({t for t in load_seeds(seeds).values()})
        texts, ys = training_set(read_labels(labels, split), seed_texts)
        train(texts, ys).save(out)
        typer.echo(f"trained on {len(texts)} documents ({sum(ys)} positive) -> {out}")

    @app.callback()
    def _cb() -> None:
        """Quality classifier."""

    app(argv)


if __name__ == "__main__":
    main()
