"""Seeds for generation: read, checked row by row (bad rows quarantined), split into shards."""

from __future__ import annotations

from typing import Any

from factory.core.errors import FactoryError
from factory.core.readers import read_jsonl
from factory.core.stage import exists, read_docs
from factory.generate.config import GenerateConfig
from factory.generate.shard import reject_row, seed_id_of


def load_seeds(cfg: GenerateConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(good rows, quarantined rows): a seed needs non-empty `text` and an id (`id` or meta.seed_id)."""
    src = cfg.seeds
    if src.endswith(".jsonl"):
        if not exists(src):
            raise FactoryError("seed file not found", where=src, field="seeds", fix="run `factory seeds` or fix the path")
        numbered, unreadable = read_jsonl(src)
        rows: list[tuple[str, Any]] = [(f"line {n}", r) for n, r in numbered]
        rows += [(f"line {q['line']}", {"_bad": q["detail"]}) for q in unreadable]
        rows.sort(key=lambda lr: int(lr[0].split()[1]))
    else:
        rows = [(f"row {n}", r) for n, r in enumerate(read_docs(src).to_pylist(), 1)]
    good, bad = [], []
    for at, r in rows:
        problem = None
        if "_bad" in r:
            problem = r["_bad"]
        elif r.get("meta") is not None and not isinstance(r["meta"], dict):
            problem = f"{at}: meta is not an object"
        elif not isinstance(r.get("text"), str) or not r["text"].strip():
            problem = f"{at}: missing or empty text"
        elif not seed_id_of(r):
            problem = f"{at}: no id or meta.seed_id"
        if problem:
            sid = seed_id_of(r) if isinstance(r.get("meta") or {}, dict) else ""
            bad.append(reject_row(sid or at, "", 0, "malformed_seed", {"at": at, "problem": problem}))
        else:
            r.setdefault("meta", {})
            good.append(r)
        if cfg.limit and len(good) >= cfg.limit:
            break
    return good, bad


def split(rows: list[dict[str, Any]], shards: int) -> list[list[dict[str, Any]]]:
    return [rows[k::shards] for k in range(shards)]
