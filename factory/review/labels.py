"""Reviewers' labels: `labels.jsonl`, one JSON line per label, append-only.

Each label is written as it is made (one write, flush, fsync), so a reload or a crash loses
nothing already acknowledged. The file is never rewritten or truncated: the last label per
(document, reviewer) wins when it is read; a line that is not a valid label (a torn write, a hand
edit) is reported by its line number and skipped.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

LABELS = ("clean", "unfaithful", "meta", "truncated", "repetitive", "other")
FILE = "labels.jsonl"
MAX_NOTE = 2000


@dataclass
class Labels:
    latest: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (doc, reviewer) -> record
    bad_lines: list[int] = field(default_factory=list)
    lines: int = 0

    def of(self, reviewer: str) -> dict[str, dict[str, Any]]:
        return {d: r for (d, who), r in self.latest.items() if who == reviewer}

    def reviewers(self) -> list[str]:
        return sorted({who for _, who in self.latest})


def valid(rec: Any) -> bool:
    return (isinstance(rec, dict) and isinstance(rec.get("id"), str) and rec.get("label") in LABELS
            and isinstance(rec.get("reviewer"), str) and isinstance(rec.get("note", ""), str))


class LabelStore:
    """`labels.jsonl` at a local path (labels are only written where an append can be fsynced)."""

    def __init__(self, path: str):
        self.path = str(path)
        self._lock = threading.Lock()

    def read(self) -> Labels:
        out = Labels()
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return out
        for n, raw in enumerate(data.split(b"\n"), 1):
            if not raw.strip():
                continue
            out.lines += 1
            try:
                rec = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                rec = None
            if not valid(rec):
                out.bad_lines.append(n)
                continue
            out.latest[(rec["id"], rec["reviewer"])] = rec
        return out

    def append(self, doc: str, label: str, note: str, reviewer: str) -> dict[str, Any]:
        """Write one label line durably (flush + fsync) and return it."""
        rec = {"id": doc, "label": label, "note": note, "reviewer": reviewer,
               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        line = json.dumps(rec, ensure_ascii=False).encode() + b"\n"
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size:  # a torn last line (a crash mid-write) stays as it is, on a line of its own
                    with open(self.path, "rb") as f:
                        f.seek(size - 1)
                        if f.read(1) != b"\n":
                            line = b"\n" + line
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        return rec


def agreement(labels: Labels) -> list[dict[str, Any]]:
    """For each pair of reviewers: documents both labeled, the share with the same label and
    Cohen's kappa (None where chance agreement is 1: both used one and the same label)."""
    by: dict[str, dict[str, str]] = {}
    for (doc, who), rec in labels.latest.items():
        by.setdefault(who, {})[doc] = rec["label"]
    out = []
    for a, b in combinations(sorted(by), 2):
        both = sorted(set(by[a]) & set(by[b]))
        n = len(both)
        if not n:
            out.append({"reviewers": [a, b], "both": 0, "agree": None, "kappa": None})
            continue
        same = sum(by[a][d] == by[b][d] for d in both)
        ca, cb = Counter(by[a][d] for d in both), Counter(by[b][d] for d in both)
        po = same / n
        pe = sum(ca[k] * cb[k] for k in set(ca) | set(cb)) / (n * n)
        kappa = None if pe >= 1 else (po - pe) / (1 - pe)
        out.append({"reviewers": [a, b], "both": n, "same": same, "agree": round(po, 4),
                    "kappa": None if kappa is None else round(kappa, 4)})
    return out
