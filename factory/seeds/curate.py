"""Seed curation: split web documents into passages, score them for educational value and
reasoning content, and pick a topic-balanced set; plus seeds from Q&A pairs and code files.

Scores combine transparent heuristics with a small offline classifier: a hashed uni/bigram
logistic regression (numpy) trained on labels the factory produces itself, by default the
confident ends of the heuristic score (weak supervision), or teacher ratings from
`teacher_labels`. Balancing uses the corpus `topic` field, or spherical k-means over hashed
TF-IDF vectors when there is none.
"""

from __future__ import annotations

import io
import json
import math
import random
import re
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from factory.core.errors import FactoryError
from factory.core.schema import extra as row_extra
from factory.core.schema import make_doc, sha

CODE_SEEDS = Path(__file__).resolve().parents[2] / "seeds" / "code"
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*|\d+(?:\.\d+)?")
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


class SeedCurateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int | None = Field(None, ge=1, description="passages to keep (all that pass if unset)")
    min_words: int = Field(30, ge=1)
    max_words: int = Field(220, ge=10)
    min_score: float = Field(0.0, ge=0, le=1, description="drop passages scoring below this")
    classifier: bool = Field(True, description="blend in the hashed n-gram classifier")
    classifier_weight: float = Field(0.5, ge=0, le=1)
    balance: Literal["topic", "cluster", "none"] = "topic"
    clusters: int | None = Field(None, ge=1, description="k for clustering (default sqrt(n/2))")
    seed: int = 0
    inputs: str | None = Field(None, description="a stage folder of seed rows (e.g. from `factory seeds`)")
    out: str = Field("runs/seeds_curated", description="output folder (any fsspec URL)")
    code: bool = Field(False, description="also add the code seeds shipped in seeds/code/")


# passages -----------------------------------------------------------------------------------
def words(text: str) -> list[str]:
    return _WORD.findall(text)


def split_passages(text: str, min_words: int = 30, max_words: int = 220) -> list[str]:
    """Paragraphs merged up to `max_words`; long paragraphs cut at sentence ends."""
    units: list[str] = []
    for para in re.split(r"\n\s*\n", text.strip()):
        para = " ".join(para.split())
        if not para:
            continue
        if len(para.split()) <= max_words:
            units.append(para)
            continue
        cur: list[str] = []
        for s in _SENT.split(para):
            if cur and len(" ".join(cur + [s]).split()) > max_words:
                units.append(" ".join(cur))
                cur = []
            cur.append(s)
        if cur:
            units.append(" ".join(cur))
    out: list[str] = []
    for u in units:  # merge short neighbours
        if out and len(out[-1].split()) < min_words and len((out[-1] + " " + u).split()) <= max_words:
            out[-1] = out[-1] + "\n\n" + u
        else:
            out.append(u)
    if len(out) > 1 and len(out[-1].split()) < min_words and len((out[-2] + " " + out[-1]).split()) <= max_words:
        out[-2:] = [out[-2] + "\n\n" + out[-1]]
    return [p for p in out if len(p.split()) >= min_words]


# heuristics ---------------------------------------------------------------------------------
_DEFINE = re.compile(r"\b(is an?|are|was an?|refers? to|known as|consists? of|defined as|called|describes?)\b", re.I)
_REASON = re.compile(
    r"\b(because|therefore|thus|hence|since|as a result|due to|leads? to|caused? by|causes?|so that|in order to|"
    r"if|then|however|although|whereas|which means|consequently|explains?|why|how|depends? on|results? in|"
    r"compared (?:to|with)|more than|less than|instead)\b", re.I)
_CHATTY = re.compile(r"\b(click|subscribe|buy now|cookie|log ?in|sign up|lol|omg|my blog|follow us)\b|https?://", re.I)


def _clip(x: float) -> float:
    return max(0.0, min(1.0, x))


def heuristic_scores(text: str) -> dict[str, float]:
    """Educational value and reasoning content in [0, 1], from surface features."""
    ws = words(text)
    n = max(len(ws), 1)
    sents = [s for s in _SENT.split(text) if s.strip()] or [text]
    avg_wlen = sum(len(w) for w in ws) / n
    numbers = sum(w[0].isdigit() for w in ws) / n
    caps = sum(w[0].isupper() for w in ws) / n
    define = len(_DEFINE.findall(text)) / len(sents)
    reason = len(_REASON.findall(text)) / len(sents)
    chatty = len(_CHATTY.findall(text))
    first_person = len(re.findall(r"\b(I|me|my|you|your)\b", text)) / n
    sent_len = n / len(sents)
    edu = (0.25 * _clip((avg_wlen - 3.5) / 2.5) + 0.25 * _clip(define) + 0.15 * _clip(numbers * 10)
           + 0.1 * _clip(caps * 5) + 0.15 * _clip(1 - abs(sent_len - 20) / 20) + 0.1 * _clip(n / 80)
           - 0.3 * _clip(chatty / 2) - 0.5 * _clip(first_person * 10))
    rsn = 0.7 * _clip(reason / 1.5) + 0.3 * _clip(len(re.findall(r"\d\s*[-+*/=×]\s*\d", text)) / 3)
    return {"edu": round(_clip(edu), 4), "reasoning": round(_clip(rsn), 4)}


# classifier ---------------------------------------------------------------------------------
def _hash(tok: str, dim: int) -> int:
    return zlib.crc32(tok.encode()) % dim


def hashed_features(text: str, dim: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """Indices and l2-normalized log-tf values of hashed unigrams and bigrams."""
    ws = [w.lower() for w in words(text)]
    counts: dict[int, float] = defaultdict(float)
    for tok in ws + [a + " " + b for a, b in zip(ws, ws[1:])]:
        counts[_hash(tok, dim)] += 1.0
    idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
    val = np.log1p(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))
    norm = np.linalg.norm(val)
    return idx, (val / norm if norm else val)


class HashedLogReg:
    """Binary logistic regression over hashed n-grams, trained by full-batch Adam (numpy only)."""

    def __init__(self, dim: int = 1 << 16, l2: float = 1e-4):
        self.dim, self.l2 = dim, l2
        self.w = np.zeros(dim)
        self.b = 0.0

    def _matrix(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows, cols, vals = [], [], []
        for i, t in enumerate(texts):
            idx, val = hashed_features(t, self.dim)
            rows.append(np.full(len(idx), i)), cols.append(idx), vals.append(val)
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)

    def _logits(self, X: tuple[np.ndarray, np.ndarray, np.ndarray], n: int) -> np.ndarray:
        r, c, v = X
        return np.bincount(r, weights=v * self.w[c], minlength=n) + self.b

    def fit(self, texts: list[str], labels: list[int] | np.ndarray, epochs: int = 100, lr: float = 0.1) -> "HashedLogReg":
        y = np.asarray(labels, dtype=np.float64)
        if len(set(y.tolist())) < 2:
            raise ValueError("need both positive and negative labels to train")
        X, n = self._matrix(texts), len(texts)
        m, s, mb, sb = np.zeros(self.dim), np.zeros(self.dim), 0.0, 0.0
        for t in range(1, epochs + 1):
            p = 1 / (1 + np.exp(-self._logits(X, n)))
            g = (p - y) / n
            gw = np.bincount(X[1], weights=X[2] * g[X[0]], minlength=self.dim) + self.l2 * self.w
            gb = g.sum()
            m, s = 0.9 * m + 0.1 * gw, 0.999 * s + 0.001 * gw**2
            mb, sb = 0.9 * mb + 0.1 * gb, 0.999 * sb + 0.001 * gb**2
            self.w -= lr * (m / (1 - 0.9**t)) / (np.sqrt(s / (1 - 0.999**t)) + 1e-8)
            self.b -= lr * (mb / (1 - 0.9**t)) / (math.sqrt(sb / (1 - 0.999**t)) + 1e-8)
        return self

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return 1 / (1 + np.exp(-self._logits(self._matrix(texts), len(texts))))

    def save(self, path: str | Path) -> None:
        """Write the weights (npz) to `path` (any fsspec URL)."""
        from factory.core.stage import put_bytes

        nz = np.nonzero(self.w)[0]
        buf = io.BytesIO()
        np.savez_compressed(buf, idx=nz, w=self.w[nz], b=self.b, dim=self.dim)
        put_bytes(str(path), buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "HashedLogReg":
        from factory.core.stage import read_bytes

        z = np.load(io.BytesIO(read_bytes(str(path))))
        m = cls(int(z["dim"]))
        m.w[z["idx"]] = z["w"]
        m.b = float(z["b"])
        return m


def weak_labels(scores: list[float], frac: float = 0.3) -> tuple[list[int], list[int]]:
    """Indices and labels of the confident ends: top `frac` -> 1, bottom `frac` -> 0."""
    order = np.argsort(scores, kind="stable")
    k = max(1, int(len(scores) * frac))
    idx = list(order[-k:]) + list(order[:k])
    return [int(i) for i in idx], [1] * k + [0] * k


async def teacher_labels(passages: list[str], complete, sampling: dict | None = None) -> list[int | None]:
    """Ask the teacher to rate each passage's educational value 1-5; >= 3 is positive, None unparsed."""
    import asyncio

    prompt = ("Rate the educational value of this text for a student on a scale from 1 (none) to 5 "
              "(excellent). Reply with the number only.\n\nText:\n{t}")

    async def one(t: str) -> int | None:
        c = await complete([{"role": "user", "content": prompt.format(t=" ".join(t.split()[:200]))}],
                           {"temperature": 0.0, "max_tokens": 4, **(sampling or {})})
        m = re.search(r"[1-5]", c.text or "")
        return None if not m else int(int(m.group()) >= 3)

    return list(await asyncio.gather(*(one(t) for t in passages)))


# balancing ----------------------------------------------------------------------------------
def cluster_topics(texts: list[str], k: int, seed: int = 0, dim: int = 1024, iters: int = 20) -> list[int]:
    """Spherical k-means over hashed TF-IDF vectors (k-means++ init, deterministic for `seed`)."""
    n = len(texts)
    if n == 0:
        return []
    k = max(1, min(k, n))
    X = np.zeros((n, dim), dtype=np.float32)
    df = np.zeros(dim)
    feats = [hashed_features(t, dim) for t in texts]
    for i, (idx, val) in enumerate(feats):
        X[i, idx] = val
        df[idx] += 1
    X *= np.log((1 + n) / (1 + df)).astype(np.float32) + 1
    X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-9)
    rng = np.random.default_rng(seed)
    centers = [X[rng.integers(n)]]
    for _ in range(1, k):
        d = 1 - np.max(X @ np.stack(centers).T, axis=1)
        d = np.clip(d, 0, None)
        centers.append(X[rng.choice(n, p=d / d.sum())] if d.sum() > 0 else X[rng.integers(n)])
    C = np.stack(centers)
    assign = np.zeros(n, dtype=int)
    for _ in range(iters):
        new = np.argmax(X @ C.T, axis=1)
        if _ > 0 and np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            members = X[assign == j]
            if len(members):
                c = members.sum(0)
                C[j] = c / max(np.linalg.norm(c), 1e-9)
    return assign.tolist()


def balance(rows: list[dict[str, Any]], n: int | None, group: list[str], score: list[float], seed: int = 0) -> list[int]:
    """Round-robin over groups (best-scored first within each): as even a topic mix as the data allows."""
    by: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(group):
        by[g].append(i)
    for g in by:
        by[g].sort(key=lambda i: (-score[i], rows[i]["id"]))
    order = sorted(by)
    random.Random(seed).shuffle(order)
    picked, depth, total = [], 0, n if n is not None else len(rows)
    while len(picked) < total and any(depth < len(by[g]) for g in order):
        for g in order:
            if depth < len(by[g]) and len(picked) < total:
                picked.append(by[g][depth])
        depth += 1
    return picked


# the stage's entry ---------------------------------------------------------------------------
def passages(rows: Iterable[dict[str, Any]], cfg: SeedCurateConfig) -> list[dict[str, Any]]:
    """One seed row per passage, keeping the parent's provenance and title/topic."""
    out = []
    for row in rows:
        ex = row_extra(row)
        parent = (row.get("meta") or {}).get("seed_id") or row["id"]
        parts = split_passages(row["text"], cfg.min_words, cfg.max_words)
        for j, p in enumerate(parts):
            sid = parent if len(parts) == 1 else f"{parent}#p{j}"
            out.append(make_doc(p, row.get("kind", "web"), row.get("source", "web"), seed_id=sid,
                                extra={**ex, "parent": parent, "passage": j}))
    return out


def curate(rows: Iterable[dict[str, Any]], cfg: SeedCurateConfig | None = None,
           labels: dict[str, int] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Passages scored, filtered by `min_score`, balanced by topic; returns (rows, report).

    `labels` (passage text sha -> 0/1, e.g. from `teacher_labels`) replace the weak labels.
    """
    cfg = cfg or SeedCurateConfig()
    rows = list(rows)
    ps = passages(rows, cfg)
    report: dict[str, Any] = {"docs_in": len(rows), "passages": len(ps)}
    if not ps:
        return [], report
    texts = [p["text"] for p in ps]
    h = [heuristic_scores(t) for t in texts]
    base = [0.7 * s["edu"] + 0.3 * s["reasoning"] for s in h]
    clf = None
    if cfg.classifier and len(ps) >= 10:
        if labels:
            idx = [i for i, t in enumerate(texts) if sha(t) in labels]
            y = [labels[sha(texts[i])] for i in idx]
        else:
            idx, y = weak_labels(base)
        if len(set(y)) == 2:
            model = HashedLogReg().fit([texts[i] for i in idx], y)
            clf = model.predict_proba(texts).tolist()
            report["classifier"] = {"trained_on": len(idx), "labels": "given" if labels else "weak",
                                    "train_accuracy": round(float(np.mean((np.array(clf)[idx] > 0.5) == np.array(y))), 4)}
    w = cfg.classifier_weight if clf is not None else 0.0
    final = [(1 - w) * b + w * (clf[i] if clf is not None else 0.0) for i, b in enumerate(base)]
    keep = [i for i, s in enumerate(final) if s >= cfg.min_score]
    report["below_min_score"] = len(ps) - len(keep)
    topics = [row_extra(p).get("topic") for p in ps]
    if cfg.balance == "cluster" or (cfg.balance == "topic" and not all(topics)):
        k = cfg.clusters or max(2, int(math.sqrt(max(len(keep), 1) / 2)))
        assign = cluster_topics([texts[i] for i in keep], k, cfg.seed)
        for i, a in zip(keep, assign):
            topics[i] = f"cluster:{a}"
        report["balance"] = f"cluster (k={k})"
    else:
        report["balance"] = cfg.balance
    if cfg.balance == "none":
        chosen = sorted(keep, key=lambda i: -final[i])[: cfg.n]
    else:
        sub = balance([ps[i] for i in keep], cfg.n, [str(topics[i]) for i in keep], [final[i] for i in keep], cfg.seed)
        chosen = [keep[j] for j in sub]
    out = []
    for i in chosen:
        p = ps[i]
        ex = {**row_extra(p), "topic": topics[i],
              "scores": {**h[i], "classifier": round(clf[i], 4) if clf is not None else None, "score": round(final[i], 4)}}
        p["meta"]["extra"] = json.dumps(ex, sort_keys=True)
        out.append(p)
    counts: dict[str, int] = defaultdict(int)
    for i in chosen:
        counts[str(topics[i])] += 1
    report.update(kept=len(out), topics=dict(sorted(counts.items())))
    return out, report


# other seed kinds ---------------------------------------------------------------------------
def qa_rows(pairs: Iterable[dict[str, Any]] | str | Path, source: str = "qa") -> list[dict[str, Any]]:
    """Seed rows from Q&A pairs (dicts, or a JSONL file at any fsspec URL with `question` and `answer`)."""
    from factory.core.stage import exists, read_text

    where = None
    if isinstance(pairs, (str, Path)):
        where = str(pairs)
        if not exists(where):
            raise FactoryError("Q&A seed file not found", where=where, fix="give a JSONL file of {question, answer}")
        pairs = [json.loads(line) for line in read_text(where).splitlines() if line.strip()]
    out = []
    for i, rec in enumerate(pairs):
        q, a = str(rec.get("question") or "").strip(), str(rec.get("answer") or "").strip()
        if not q or not a:
            raise FactoryError("a Q&A seed needs a non-empty question and answer", where=where or "qa pairs",
                               field=f"line {i + 1}", fix="fill in both fields or drop the line")
        out.append(make_doc(f"Question: {q}\nAnswer: {a}", "qa", source, seed_id=f"qa:{sha(q, a)}",
                            extra={"title": q[:80], "topic": rec.get("topic") or "general knowledge"}))
    return out


def code_rows(folder: str | Path = CODE_SEEDS) -> list[dict[str, Any]]:
    """Seed rows from `NAME.py` + `NAME_test.py` pairs in a folder at any fsspec URL (tests import
    the code as `solution`)."""
    from factory.core.stage import fresh_fs, storage_errors

    where = str(folder)
    with storage_errors(where):
        fs, root = fresh_fs(where)
        if not fs.isdir(root):
            raise FactoryError("code seed folder not found", where=where, fix="point at a folder of NAME.py files")
        texts = {f.rsplit("/", 1)[1][:-3]: fs.cat_file(f).decode() for f in sorted(fs.glob(f"{root}/*.py"))}
    out = []
    for stem, code in texts.items():
        if stem.endswith("_test"):
            continue
        out.append(make_doc(code.strip() + "\n", "code", "code", seed_id=f"code:{stem}",
                            extra={"title": stem, "entry": stem, "topic": "programming",
                                   "tests": texts.get(f"{stem}_test")}))
    return out


def run(cfg: SeedCurateConfig) -> dict[str, Any]:
    """The seed-curation stage: read seed rows from `cfg.inputs`, write curated passages to `cfg.out`
    (plus the code seeds when `cfg.code`), with counts and the topic mix in the manifest. Both are
    fsspec URLs, each with its own filesystem."""
    from factory.core.stage import StageDir, check_store, licences, read_docs, storage_errors, write_card

    inputs, out, code = cfg.inputs, cfg.out, cfg.code
    if not inputs:
        raise FactoryError("no seed folder to curate", field="inputs", fix="give it with --in DIR (or inputs: in the config)")
    check_store(out)
    with storage_errors(out, remote_only=True):
        stage = StageDir(out, "seedcurate", cfg.model_dump(mode="json", exclude={"inputs", "out"}), inputs=[inputs])
        old = stage.read_manifest(out)
        if old and old.get("status") == "done":
            return old
    with storage_errors(inputs):
        docs = read_docs(inputs).to_pylist()
    kept, rep = curate(docs, cfg)
    if code:
        kept += code_rows()
    stage.counts.update(docs_in=rep["docs_in"], passages=rep["passages"], kept=len(kept))
    stage.dropped.update(below_min_score=rep.get("below_min_score", 0),
                         not_picked=max(0, rep["passages"] - rep.get("below_min_score", 0) - rep.get("kept", 0)))
    with storage_errors(out, remote_only=True):
        stage.write_docs("seeds.parquet", kept)
        write_card(stage, "Curated seeds", {"rows": len(kept), "passages": rep["passages"], "code seeds": code},
                   licences([inputs]) + (["apache-2.0"] if code else []))  # the code seeds are this project's own
        return stage.finish(report=rep)
