"""A small offline quality classifier: logistic regression (numpy only), of one of two kinds.

- `ngrams`: hashed word n-grams of the text alone, trained on labeled documents (clean = 1, any
  defect = 0) plus seed passages as positives.
- `seed`: a few measures of a document against its own seed (`SEED_FEATURES`: how much of it is
  the seed's wording, how much is new, names and relations the seed lacks, length against the
  seed, list and fragment shape), trained on labeled documents with their seeds. A document whose
  seed is not found is not scored.

The score (P(clean)) goes to `meta.extra.quality` and, below a threshold, rejects the document.

    python -m factory.curate.quality train LABELS.jsonl --split dev --seeds SEED_FOLDER --out quality.npz [--kind seed]
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


SEED_FEATURES = ("copied_trigrams", "novel_words", "unsupported_share", "relations", "log_length_ratio",
                 "list_lines", "unended_lines", "sentence_words", "short_lines", "log_words")
_LIST = re.compile(r"\s*(?:[-*•]|\d+[.)])")
_SENTS = re.compile(r"(?<=[.!?])\s+|\n+")


def seed_features(text: str, seed: str) -> np.ndarray:
    """`SEED_FEATURES` of a document against its seed passage."""
    from factory.curate.faithful import Support, _norm, novelty, relations, unsupported

    sup = Support(seed)
    words, seed_words = _norm(text).split(), _norm(seed).split()
    tri = {tuple(words[i:i + 3]) for i in range(len(words) - 2)}
    seed_tri = {tuple(seed_words[i:i + 3]) for i in range(len(seed_words) - 2)}
    bad, total = unsupported(text, sup)
    rel, _ = relations(text, sup)
    lines = [x for x in text.split("\n") if x.strip()] or [""]
    sents = [x for x in _SENTS.split(text) if x.strip()] or [""]
    return np.array([
        len(tri & seed_tri) / max(1, len(tri)), novelty(text, sup), len(bad) / max(1, total), len(rel),
        np.log(max(1, len(words)) / max(1, len(seed_words))),
        sum(_LIST.match(x) is not None for x in lines) / len(lines),
        sum(not x.rstrip().endswith((".", "!", "?", ":", '"', "”")) for x in lines) / len(lines),
        np.mean([len(x.split()) for x in sents]) / 20, sum(len(x.split()) < 5 for x in lines) / len(lines),
        np.log1p(len(words))], np.float32)


@dataclass
class Model:
    w: np.ndarray
    b: float
    dim: int = DIM
    kind: str = "ngrams"  # or "seed": w weighs SEED_FEATURES, standardized by mu and sd
    mu: np.ndarray | None = None
    sd: np.ndarray | None = None

    @property
    def needs_seed(self) -> bool:
        return self.kind == "seed"

    def score(self, text: str, seed: str | None = None) -> float:
        if self.needs_seed:
            if seed is None:
                raise ValueError("a seed-feature quality model scores a document against its seed")
            z = float(((seed_features(text, seed) - self.mu) / self.sd) @ self.w) + self.b
        else:
            idx, val = features(text, self.dim)
            z = float(val @ self.w[idx]) + self.b
        return 1.0 / (1.0 + np.exp(-z))

    def save(self, url: str) -> None:
        import io

        import fsspec

        buf = io.BytesIO()
        extra = {"mu": self.mu, "sd": self.sd} if self.needs_seed else {}
        np.savez_compressed(buf, w=self.w, b=np.float32(self.b), dim=np.int64(self.dim), kind=np.str_(self.kind),
                            **extra)
        with fsspec.open(url, "wb") as f:
            f.write(buf.getvalue())

    @classmethod
    def load(cls, url: str) -> "Model":
        import io

        import fsspec

        from factory.core.errors import FactoryError

        try:
            with fsspec.open(url, "rb") as f:
                z = np.load(io.BytesIO(f.read()))
                kind = str(z["kind"]) if "kind" in z else "ngrams"
                if kind == "seed":
                    return cls(z["w"], float(z["b"]), int(z["dim"]), kind, z["mu"], z["sd"])
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


def train_seeded(texts: list[str], seeds: list[str], labels: list[int], epochs: int = 2000, lr: float = 0.5,
                 l2: float = 1e-2) -> Model:
    """A `seed` model: logistic regression on the standardized SEED_FEATURES of each document
    against its seed, classes weighted to equal total weight."""
    x = np.stack([seed_features(t, s) for t, s in zip(texts, seeds)])
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x = (x - mu) / sd
    y = np.asarray(labels, np.float32)
    pos, neg = max(1.0, float(y.sum())), max(1.0, float(len(y) - y.sum()))
    cw = np.where(y > 0, len(y) / (2 * pos), len(y) / (2 * neg)).astype(np.float32)
    w, b = np.zeros(x.shape[1], np.float32), 0.0
    for _ in range(epochs):
        p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
        g = (p - y) * cw / len(y)
        w -= lr * (x.T @ g + l2 * w)
        b -= lr * float(g.sum())
    return Model(w.astype(np.float32), b, len(SEED_FEATURES), "seed", mu.astype(np.float32), sd.astype(np.float32))


class QualityFilter(Step):
    """Score each document with the classifier; record it; reject below `threshold`. A `seed`
    model looks each document's seed up in `seeds` (seed stage folders); one without is not scored."""

    name = reason = "quality"

    def __init__(self, model: str, threshold: float, exclusion_writer=None, seeds: list[str] | None = None):
        from factory.curate.faithful import SeedTexts

        super().__init__(exclusion_writer)
        self.model_url, self.threshold = model, threshold
        self.seeds = SeedTexts(list(seeds or []))
        self._model: Model | None = None

    def __getstate__(self):
        return {**self.__dict__, "_model": None}

    def filter(self, doc):
        from factory.curate.filters import _meta

        if self._model is None:
            self._model = Model.load(self.model_url)
        seed = None
        if self._model.needs_seed:
            seed = self.seeds.get(_meta(doc).get("seed_id"))
            if seed is None:
                self.stat_update("no_seed")
                return True
        s = round(self._model.score(doc.text, seed), 4)
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
               seeds: list[str] = typer.Option([], help="seed stage folders: their passages are positives (ngrams), "
                                                         "or each document's seed (seed)"),
               kind: str = typer.Option("ngrams", help="ngrams (the text alone) or seed (against its seed)"),
               out: str = typer.Option("quality.npz", help="where to write the weights")) -> None:
        from factory.core.errors import FactoryError
        from factory.curate.faithful import load_seeds

        by_id = load_seeds(seeds)
        rows = read_labels(labels, split)
        if kind == "seed":
            missing = sorted({r.get("seed_id") for r in rows if r.get("seed_id") not in by_id}, key=str)
            if missing:
                raise FactoryError(f"{len(missing)} seeds of the labeled documents are not in --seeds (first: "
                                   f"{missing[0]})", where=labels, field="seed_id",
                                   fix="give the seed stage folders the documents were generated from")
            texts, ys = [r["text"] for r in rows], [int(r["label"] == "clean") for r in rows]
            train_seeded(texts, [by_id[r["seed_id"]] for r in rows], ys).save(out)
        elif kind == "ngrams":
            texts, ys = training_set(rows, sorted(set(by_id.values())))
            train(texts, ys).save(out)
        else:
            raise FactoryError(f"unknown model kind '{kind}'", field="--kind", fix="use ngrams or seed")
        typer.echo(f"trained a {kind} model on {len(texts)} documents ({sum(ys)} positive) -> {out}")

    @app.callback()
    def _cb() -> None:
        """Quality classifier."""

    from factory.core.errors import FactoryError

    try:
        app(argv)
    except FactoryError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
