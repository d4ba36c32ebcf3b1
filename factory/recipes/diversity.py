"""Diversity report of a generated set: repeated openings and n-gram repetition.

Cosmopedia found that half its stories opened the same way; this measures that (share of docs
whose first 3 / 5 words are shared with another doc, the most common openings) and n-gram
repetition across the set (share of n-gram occurrences that are repeats) and within documents.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Any, Iterable

_TOK = re.compile(r"\w+(?:'\w+)?")


def tokens(text: str) -> list[str]:
    return _TOK.findall(text.lower())


def opening(text: str, n: int) -> str:
    return " ".join(tokens(text)[:n])


def openings(texts: list[str], n: int, top: int = 10) -> dict[str, Any]:
    c = Counter(opening(t, n) for t in texts if tokens(t))
    total = sum(c.values())
    repeated = sum(v for v in c.values() if v > 1)
    return {"n": n, "distinct": len(c), "distinct_ratio": round(len(c) / total, 4) if total else 0.0,
            "repeated_share": round(repeated / total, 4) if total else 0.0,
            "top": [[k, v] for k, v in c.most_common(top) if v > 1]}


def ngram_repetition(texts: list[str], n: int = 4, top: int = 10) -> dict[str, Any]:
    """Across the set: 1 - distinct/total n-grams; within docs: mean share of repeated n-grams;
    `top`: the n-grams found in the most documents."""
    across: Counter[tuple[str, ...]] = Counter()
    doc_freq: Counter[tuple[str, ...]] = Counter()
    within = []
    for t in texts:
        tk = tokens(t)
        grams = [tuple(tk[i : i + n]) for i in range(len(tk) - n + 1)]
        if not grams:
            continue
        c = Counter(grams)
        across.update(c)
        doc_freq.update(c.keys())
        within.append(1 - len(c) / len(grams))
    total = sum(across.values())
    return {"n": n, "total": total, "repeated_share": round(1 - len(across) / total, 4) if total else 0.0,
            "within_doc_mean": round(sum(within) / len(within), 4) if within else 0.0,
            "top_by_docs": [[" ".join(g), d] for g, d in doc_freq.most_common(top) if d > 1]}


def report(texts: Iterable[str], ngram: int = 4, top: int = 10) -> dict[str, Any]:
    texts = [t for t in texts if t and t.strip()]
    return {"docs": len(texts), "openings_3": openings(texts, 3, top), "openings_5": openings(texts, 5, top),
            "ngrams": ngram_repetition(texts, ngram, top)}


def report_rows(rows: Iterable[dict[str, Any]], by: str = "recipe", **kw: Any) -> dict[str, Any]:
    """The report for all rows and per `meta.<by>` (e.g. per recipe)."""
    rows = list(rows)
    groups: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        groups[str((r.get("meta") or {}).get(by) or r.get(by) or "-")].append(r["text"])
    return {"all": report([r["text"] for r in rows], **kw), "by": {k: report(v, **kw) for k, v in sorted(groups.items())}}
