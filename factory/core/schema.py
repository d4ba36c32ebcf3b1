"""The document row every stage reads and writes (parquet, zstd), with its provenance."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any, Iterable

import pyarrow as pa

KINDS = ("web", "synthetic", "rewrite", "code", "qa")

META_FIELDS = [
    pa.field("seed_id", pa.string()),
    pa.field("recipe", pa.string()),
    pa.field("prompt_sha", pa.string()),
    pa.field("teacher_model", pa.string()),
    pa.field("sampling", pa.string()),  # JSON of the sampling params
    pa.field("prompt_tokens", pa.int64()),
    pa.field("completion_tokens", pa.int64()),
    pa.field("finish_reason", pa.string()),
    pa.field("created_at", pa.string()),
    pa.field("extra", pa.string()),  # JSON: recipe variables, verdicts, topic, ...
]
META_TYPE = pa.struct(META_FIELDS)
DOC_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("meta", META_TYPE),
    ]
)


def sha(*parts: Any, n: int = 16) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\x1f")
    return h.hexdigest()[:n]


def doc_id(text: str, source: str, seed_id: str | None = None, recipe: str | None = None, sample: int = 0) -> str:
    """Stable content + provenance hash: the same text from the same seed and recipe keeps its id."""
    return sha(text, source, seed_id or "", recipe or "", sample, n=20)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def make_meta(**kw: Any) -> dict[str, Any]:
    """A full meta struct; dicts for `sampling` and `extra` are stored as JSON."""
    meta = {f.name: None for f in META_FIELDS}
    for k, v in kw.items():
        if k not in meta:
            raise KeyError(f"unknown meta field {k!r}; put it under extra")
        meta[k] = json.dumps(v, sort_keys=True) if k in ("sampling", "extra") and not isinstance(v, str) and v is not None else v
    meta["created_at"] = meta["created_at"] or now()
    return meta


def make_doc(text: str, kind: str, source: str, *, id: str | None = None, sample: int = 0, **meta: Any) -> dict[str, Any]:
    m = make_meta(**meta)
    return {
        "id": id or doc_id(text, source, m["seed_id"], m["recipe"], sample),
        "text": text,
        "kind": kind,
        "source": source,
        "meta": m,
    }


def to_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=DOC_SCHEMA)


def extra(row: dict[str, Any]) -> dict[str, Any]:
    """The decoded `meta.extra` of a row."""
    raw = (row.get("meta") or {}).get("extra")
    return json.loads(raw) if raw else {}
