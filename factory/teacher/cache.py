"""The request cache: a teacher completion is paid for once, whatever crashes or reruns follow.

Design: one append-only JSONL file per shard under `<cache_dir>/layout-<id>/`, where the layout
id hashes which seed went to which shard. Each finished completion is written as one line
`{"key", "completion", "seed"}` and flushed at once, so a SIGKILL loses at most the requests in
flight (the kernel keeps what was flushed). A torn last line is skipped on load. The key is a sha
of (model, messages, sampling, sample index, seed). Because a shard belongs to one worker at a
time, every file has a single writer and no locks are needed; the key contains the seed's text,
so within a layout a completion can only be wanted by the shard that made it.

A run with another layout (other `shards`, more seeds, another order) first `adopt`s the records
of the other layouts' files, routed to its own shards by their seed id, so more samples, an extra
recipe or a new shard count pay only for what is new when runs share `cache_dir`. Plain files
also make the cache easy to inspect, copy and delete. One run at a time per cache folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from factory.schema import sha
from factory.teacher.types import Completion


def request_key(model: str, messages: list[dict[str, Any]], sampling: dict[str, Any], sample: int, seed: int | None) -> str:
    return sha(model, messages, sampling, sample, seed, n=32)


def shard_file(cache_dir: str | Path, k: int) -> Path:
    return Path(cache_dir) / f"shard-{k:05d}.jsonl"


class CompletionCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._data: dict[str, dict[str, Any]] = {}
        self.torn_lines = 0
        if self.path.exists():
            with open(self.path, "rb") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                        self._data[rec["key"]] = rec["completion"]
                    except (ValueError, KeyError, TypeError):
                        self.torn_lines += 1
            if self.torn_lines:  # make sure the next append starts on a fresh line
                with open(self.path, "ab") as f:
                    f.write(b"\n")
        self._fh = open(self.path, "ab", buffering=0)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str) -> Completion | None:
        rec = self._data.get(key)
        if rec is None:
            return None
        return Completion(**{**rec, "cached": True})

    def put(self, key: str, completion: Completion, seed: str | None = None) -> None:
        rec = {k: v for k, v in completion.to_dict().items() if k != "cached"}
        self._data[key] = rec
        line = {"key": key, "completion": rec, **({"seed": seed} if seed else {})}
        self._fh.write((json.dumps(line, ensure_ascii=False) + "\n").encode())

    def for_seed(self, seed: str) -> "SeedCache":
        return SeedCache(self, seed)

    def close(self) -> None:
        if not self._fh.closed:
            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self) -> "CompletionCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SeedCache:
    """A shard's cache as one seed's requests see it: what they write carries the seed id."""

    def __init__(self, cache: CompletionCache, seed: str):
        self.cache, self.seed = cache, seed

    def __contains__(self, key: str) -> bool:
        return key in self.cache

    def get(self, key: str) -> Completion | None:
        return self.cache.get(key)

    def put(self, key: str, completion: Completion) -> None:
        self.cache.put(key, completion, seed=self.seed)


def adopt(root: str | Path, here: str | Path, shard_of: dict[str, int]) -> int:
    """Append to the shard files under `here` every record under `root` (outside `here`) whose seed
    is in `shard_of`; returns how many. The bytes already taken from each file are kept in
    `here/adopted.json`, so each record is adopted once (the files are append-only)."""
    root, here = Path(root), Path(here)
    book_path = here / "adopted.json"
    book = json.loads(book_path.read_text()) if book_path.exists() else {}
    routed: dict[int, list[bytes]] = {}
    for f in sorted(root.rglob("*.jsonl")) if root.exists() else []:
        if f.parent == here:
            continue
        name = str(f.relative_to(root))
        pos = start = book.get(name, 0)
        with open(f, "rb") as fh:
            fh.seek(start)
            for line in fh:
                if not line.endswith(b"\n"):  # a line still being written: next time
                    break
                pos += len(line)
                try:
                    k = shard_of.get(json.loads(line).get("seed"))
                except (ValueError, AttributeError):
                    continue
                if k is not None:
                    routed.setdefault(k, []).append(line)
        book[name] = pos
    if not routed and not book:
        return 0
    here.mkdir(parents=True, exist_ok=True)
    for k, lines in routed.items():
        path = shard_file(here, k)
        lead = b""
        if path.exists() and path.stat().st_size:
            with open(path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                lead = b"" if fh.read(1) == b"\n" else b"\n"
        with open(path, "ab") as fh:
            fh.write(lead + b"".join(lines))
            os.fsync(fh.fileno())
    tmp = book_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(book, indent=1))
    os.replace(tmp, book_path)
    return sum(len(v) for v in routed.values())
