"""The request cache: a teacher completion is paid for once, whatever crashes, lost nodes or reruns follow.

The cache lives under any fsspec URL, by default `<out>/cache`, in one folder per seed->shard
layout (`layout-<id>/`, the id hashes which seed went to which shard). A record is one JSON line
`{"key", "completion", "seed"}`; the key is a sha of (model, messages, sampling, sample index, seed).

- On a local or shared POSIX folder, each shard has one append log `shard-k.jsonl`: every
  completion is appended and flushed as it arrives, so a SIGKILL loses at most the requests in flight.
- On an object store (s3://, gs://, ...), which cannot append, a shard's cache is a set of immutable
  segments `shard-k/seg-<time>-<uid>.jsonl`. The worker appends each completion to a node-local
  spool file (the same append log, under `FACTORY_SPOOL_DIR`, default `~/.cache/synth-factory/spool`)
  and uploads the records not yet uploaded as a new segment every `flush_every` completions or
  `flush_bytes` bytes, whichever comes first, every `flush_s` seconds, and when the shard ends.
  Uploads run on a pool of threads shared by the process's shards (the requests never wait on the
  store; the shards' segments go up concurrently), one at a time per shard: a window that fills
  while its shard's last one is still going up waits for it and goes up whole, so a slow store gets
  fewer, larger segments, never a queue of small ones. Nothing lists the shard's folder but its
  open. A killed worker loses nothing: its node's spool is uploaded when the shard opens again
  there. A lost node repays, per shard it had in flight, what was not yet up: the window being
  filled and the one being uploaded, so fewer than 2 x `flush_every` completions (and 2 x
  `flush_bytes` bytes), none older than `flush_s` seconds plus one upload.

Opening a shard's cache reads its append log, every segment and the local spool, so a shard
resumed on another node reads what every node paid for. Writers never overwrite: segments have
unique names, a torn last line is skipped, and a key paid twice by racing workers is kept once.

A run with another layout (other `shards`, more seeds, another order) first `adopt`s the records
of the other layouts, routed to its own shards by their seed id, so more samples, an extra recipe
or a new shard count pay only for what is new when runs share a cache folder.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fsspec

from factory.core.schema import sha
from factory.core.stage import is_local
from factory.teacher.types import Completion

SPOOL_ENV = "FACTORY_SPOOL_DIR"
FLUSH_BYTES = 4 * 1024 * 1024  # a segment's size bound, beside flush_every
UPLOAD_THREADS = 8  # segment uploads at once, over the process's shards
_POOL: list[ThreadPoolExecutor] = []
_POOL_LOCK = threading.Lock()


def _uploader() -> ThreadPoolExecutor:
    """The process's pool of upload threads (shared by its shards' caches)."""
    with _POOL_LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="cache-upload"))
        return _POOL[0]


def request_key(model: str, messages: list[dict[str, Any]], sampling: dict[str, Any], sample: int, seed: int | None) -> str:
    return sha(model, messages, sampling, sample, seed, n=32)


def join(url: str, name: str) -> str:
    return f"{str(url).rstrip('/')}/{name}"


def shard_file(cache_dir: str, k: int) -> str:
    """The shard's cache, named by its append log (the segments sit in the folder of the same stem)."""
    return join(cache_dir, f"shard-{k:05d}.jsonl")


def spool_root() -> Path:
    return Path(os.environ.get(SPOOL_ENV) or Path.home() / ".cache" / "synth-factory" / "spool")


def _records(data: bytes) -> tuple[list[tuple[str, dict[str, Any], bytes]], int]:
    """The (key, completion, line) records of `data`, and how many torn or bad lines were skipped."""
    out, bad = [], 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out.append((rec["key"], rec["completion"], line))
        except (ValueError, KeyError, TypeError):
            bad += 1
    return out, bad


def _parse(data: bytes, into: dict[str, bytes]) -> int:
    """Add the records of `data` to `into` (key -> its line); returns the number of torn or bad lines skipped."""
    recs, bad = _records(data)
    into.update((key, line) for key, _, line in recs)
    return bad


def _append(path: Path, data: bytes) -> None:
    """Append whole lines to a local log, starting on a fresh line if a torn one ends it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lead = b""
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            lead = b"" if fh.read(1) == b"\n" else b"\n"
    with open(path, "ab") as fh:
        fh.write(lead + data)
        os.fsync(fh.fileno())


class CompletionCache:
    """One shard's cache. `url` is the shard's append-log name (see `shard_file`)."""

    def __init__(self, url: str, flush_every: int = 64, flush_s: float = 30.0, flush_bytes: int = FLUSH_BYTES):
        self.url = str(url)
        self.fs, self.path = fsspec.core.url_to_fs(self.url)
        self.local = is_local(self.fs)
        self.seg_dir = self.path[: -len(".jsonl")]
        self.flush_every, self.flush_s, self.flush_bytes = max(1, int(flush_every)), float(flush_s), max(1, int(flush_bytes))
        # key -> its record's JSON line (parsed again on a hit): one bytes object per record, which the garbage
        # collector never walks, rather than a dict of objects it walks at every full collection
        self._data: dict[str, bytes] = {}
        self._pending: list[bytes] = []  # spooled lines not yet in a segment (object stores)
        self._pending_bytes = 0
        self._lock = threading.Lock()
        self._one_upload = threading.Lock()  # one segment upload at a time per shard (the stated bound)
        self._queued = False  # an upload of this shard is waiting or running: new records join it
        self._uploads: list[Future] = []
        self._last_flush = time.monotonic()
        self.torn_lines = self.segments_written = 0
        if self.local:
            self.log = Path(self.path)
        else:
            self.log = spool_root() / sha(self.url, n=16) / Path(self.path).name
            self._load_segments()
        if self.log.exists():
            data = self.log.read_bytes()
            self.torn_lines += _parse(data, self._data) if self.local else self._recover(data)
            if not data.endswith(b"\n") and data:
                _append(self.log, b"")  # the next append starts on a fresh line
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.log, "ab", buffering=0)
        if self._pending:
            self.flush()

    # loading ----------------------------------------------------------------------------------
    def _load_segments(self) -> None:
        self.fs.invalidate_cache(self.seg_dir)
        files = sorted(self.fs.glob(f"{self.seg_dir}/seg-*.jsonl"))
        for data in self.fs.cat(files).values() if files else ():
            self.torn_lines += _parse(data, self._data)

    def _recover(self, data: bytes) -> int:
        """A spool left by a worker killed on this node: its records not in any segment go up now."""
        recs, bad = _records(data)
        for key, _, line in recs:
            if key not in self._data:
                self._data[key] = line
                self._pending.append(line + b"\n")
                self._pending_bytes += len(line) + 1
        return bad

    # the mapping --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str) -> Completion | None:
        line = self._data.get(key)
        if line is None:
            return None
        return Completion(**{**json.loads(line)["completion"], "cached": True})

    def put(self, key: str, completion: Completion, seed: str | None = None) -> None:
        rec = {k: v for k, v in completion.to_dict().items() if k != "cached"}
        line = (json.dumps({"key": key, "completion": rec, **({"seed": seed} if seed else {})}, ensure_ascii=False)
                + "\n").encode()
        self._data[key] = line[:-1]
        self._fh.write(line)
        if not self.local:
            with self._lock:
                self._pending.append(line)
                self._pending_bytes += len(line)
                due = not self._queued and (len(self._pending) >= self.flush_every or self._pending_bytes >= self.flush_bytes)
                if due:
                    self._queued = True
            if due:  # uploaded by the pool's threads: the event loop sending requests never waits on the store
                self._uploads.append(_uploader().submit(self._queued_flush))

    def flush_due(self) -> bool:
        """True when spooled records have waited `flush_s` seconds (call `flush` then)."""
        return bool(self._pending) and time.monotonic() - self._last_flush >= self.flush_s

    def _queued_flush(self) -> None:
        try:
            self.flush(queued=True)
        finally:
            with self._lock:
                self._queued = False
                due = len(self._pending) >= self.flush_every or self._pending_bytes >= self.flush_bytes
                if due:  # a window filled while this one went up: it goes up next, whole
                    self._queued = True
            if due:
                self._uploads.append(_uploader().submit(self._queued_flush))

    def flush(self, queued: bool = False) -> None:
        """Upload the spooled records as one immutable segment (object stores; a no-op locally)."""
        self._last_flush = time.monotonic()
        with self._one_upload:
            with self._lock:  # put() may run meanwhile (the periodic flush runs in a thread)
                batch, self._pending, self._pending_bytes = self._pending, [], 0
            if self.local or not batch:
                return
            name = f"{self.seg_dir}/seg-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
            data = b"".join(batch)
            try:
                self.fs.pipe_file(name, data)
            except BaseException:
                with self._lock:
                    self._pending[:0] = batch
                    self._pending_bytes += len(data)
                raise
            self.segments_written += 1

    def drain(self) -> None:
        """Wait for the background uploads (a failed one has put its records back for the next flush)."""
        while self._uploads:
            self._uploads.pop(0).exception()

    def for_seed(self, seed: str) -> "SeedCache":
        return SeedCache(self, seed)

    def close(self) -> None:
        if self._fh.closed:
            return
        os.fsync(self._fh.fileno())
        self._fh.close()
        self.drain()
        if not self.local:
            self.flush()  # raises if the store is down: the spool stays for the next open
            self.log.unlink(missing_ok=True)  # every record is in a segment now

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


def adopt(root: str, here: str, shard_of: dict[str, int]) -> int:
    """Add to the shards under `here` every record found under `root` (outside `here`) whose seed is
    in `shard_of`; returns how many. The bytes already taken from each file are kept in
    `here/adopted.json`, so each record is adopted once (logs only grow, segments never change)."""
    fs, root_p = fsspec.core.url_to_fs(str(root).rstrip("/"))
    _, here_p = fsspec.core.url_to_fs(str(here).rstrip("/"))
    local = is_local(fs)
    book_path = f"{here_p}/adopted.json"
    fs.invalidate_cache(root_p)
    book = json.loads(fs.cat_file(book_path)) if fs.exists(book_path) else {}
    found = fs.find(root_p, detail=True) if fs.exists(root_p) else {}
    routed: dict[int, list[bytes]] = {}
    for f in sorted(found):
        name = f[len(root_p) + 1:]
        start = book.get(name, 0)
        if not f.endswith(".jsonl") or f.startswith(here_p + "/") or found[f]["size"] <= start:
            continue
        data = fs.cat_file(f, start=start)
        end = data.rfind(b"\n") + 1  # a line still being written: next time
        for line in data[:end].splitlines(keepends=True):
            try:
                k = shard_of.get(json.loads(line).get("seed"))
            except (ValueError, AttributeError):
                continue
            if k is not None:
                routed.setdefault(k, []).append(line)
        book[name] = start + end
    if not routed and not book:
        return 0
    for k, lines in routed.items():
        if local:
            _append(Path(shard_file(here_p, k)), b"".join(lines))
        else:
            seg = f"{shard_file(here_p, k)[: -len('.jsonl')]}/seg-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.jsonl"
            fs.pipe_file(seg, b"".join(lines))
    fs.makedirs(here_p, exist_ok=True)
    data = json.dumps(book, indent=1).encode()
    if local:
        tmp = f"{book_path}.tmp"
        fs.pipe_file(tmp, data)
        os.replace(tmp, book_path)
    else:
        fs.pipe_file(book_path, data)
    return sum(len(v) for v in routed.values())
