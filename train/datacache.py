"""Training data on object storage: a plan (or its sources, or its tokenizer) at a URL is copied once
to this node's scratch and trained from there, since the loader memory-maps local `.ds` shards.

The copy lives under `<scratch>/data/<sha of the plan URL>/`: one folder per source URL, the
tokenizer, and a `plan.json` whose paths point at them. A file already there with the size the store
reports is not fetched again, so a resumed run or a second run on the same plan reads the store only
for listings. Files arrive under a temporary name and are renamed, so a killed copy never leaves a
truncated shard. On several ranks of a node, local rank 0 copies and the others wait at a barrier.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

from train import storage


def _tag(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()[:16]


def _fetch(url: str, local: Path) -> None:
    """`url` to `local` unless a file of the same size is already there."""
    fs, path = storage.fs_path(url)
    with storage.errors(url):
        size = fs.size(path)
        if local.exists() and local.stat().st_size == size:
            return
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.part")
        fs.get_file(path, str(tmp))
    os.replace(tmp, local)


def _source(url: str, root: Path, fetch: bool) -> str:
    """A tokenized source folder at a URL -> its local copy (the .ds shards, their index and metadata)."""
    local = root / _tag(url)
    if fetch:
        files = storage.glob(storage.join(url, "*.ds")) + storage.glob(storage.join(url, "*.ds.*"))
        if not files:
            raise storage.StorageError(url, "no .ds shards there", "tokenize the source there, or fix the plan")
        for f in files:
            _fetch(f, local / f.rsplit("/", 1)[1])
    return str(local)


def local_plan(plan: str, scratch: Path, fetch: bool = True) -> str:
    """The path of a local plan.json equal to `plan` (a path or URL) with every URL in it replaced by
    its local copy; `plan` itself when nothing in it is remote. `fetch=False` only names the copy
    (for ranks that wait while local rank 0 fetches)."""
    text = storage.read_text(plan) if storage.is_url(plan) else Path(plan).read_text()
    p = json.loads(text)
    srcs = [s for ph in p.get("phases", []) for s in ph.get("sources", [])]
    tok = p.get("tokenizer")
    if tok and not storage.is_url(tok) and storage.is_url(plan) and not Path(tok).is_absolute():
        tok = storage.join(plan.rsplit("/", 1)[0], tok)  # relative to a plan on the store
    if not storage.is_url(plan) and not any(storage.is_url(s.get("path", "")) for s in srcs) \
            and not (tok and storage.is_url(tok)):
        return plan
    root = scratch / "data" / _tag(plan)
    for s in srcs:
        if storage.is_url(s.get("path", "")):
            s["path"] = _source(s["path"], root, fetch)
    if tok and storage.is_url(tok):
        local_tok = root / "tokenizer.json"
        if fetch:
            _fetch(tok, local_tok)
        p["tokenizer"] = str(local_tok)
    out = root / "plan.json"
    if fetch:
        root.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".plan.{uuid.uuid4().hex[:8]}.json")
        tmp.write_text(json.dumps(p, indent=1))
        os.replace(tmp, out)
    return str(out)


def stage(cfg, scratch: Path, lead: bool, barrier) -> None:
    """Point cfg.data's plan, val_plan and tokenizer at local copies of what is on a store: `lead`
    (local rank 0) fetches, then `barrier()`, and the node's other ranks only name the copies."""
    d = cfg.data
    if lead:
        _point(d, scratch, True)
    barrier()
    if not lead:
        _point(d, scratch, False)


def _point(d, scratch: Path, fetch: bool) -> None:
    for k in ("plan", "val_plan"):
        if getattr(d, k) and d.source == "plan":
            setattr(d, k, local_plan(getattr(d, k), scratch, fetch))
    if d.tokenizer:
        d.tokenizer = local_file(d.tokenizer, scratch, fetch)


def local_file(url: str, scratch: Path, fetch: bool = True) -> str:
    """A single file (a tokenizer.json) at a URL -> its local copy; a local path as it is."""
    if not storage.is_url(url):
        return url
    local = scratch / "data" / _tag(url) / url.rsplit("/", 1)[1]
    if fetch:
        _fetch(url, local)
    return str(local)
