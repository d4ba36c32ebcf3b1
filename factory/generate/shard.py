"""One shard of generation: every (seed, recipe, sample) of the shard, run concurrently against
the teacher, written atomically when all are done.

Outputs per shard k (the docs parquet is written last and is the shard's completion marker):
  rejected/shard-k.parquet  quarantined items: seed_id, recipe, sample, reason, detail (JSON)
  stats/shard-k.json        accounting of the run that finished the shard
  data/train-shard-k.parquet  the documents, sorted by id, ids unique (factory.core.stage.doc_path)
The request cache is `<cache_dir>/shard-k.jsonl` or its segments (see factory.teacher.cache); what
a seed's requests write to it carries the seed id. A shard that another worker finished meanwhile
(a node that came back late, a retried task) is not written again.

A worker's memory stays flat however large the shard: items are made as the in-flight gate lets
them in, documents and quarantined items go to a local temporary parquet file in batches of
`SPILL_ROWS` as they come (read back, sorted and deduplicated by id when the shard is written),
and the request cache keeps one line of bytes per record. While a shard runs, what was alive
before it (imports, clients, the shard's seeds) is frozen out of the cyclic garbage collector's
walks, which otherwise re-read it at every full collection, more often the more is in flight.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import gc
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from factory.core.errors import FactoryError
from factory.core.schema import DOC_SCHEMA
from factory.core.stage import StageDir, doc_path
from factory.teacher import client as client_mod
from factory.teacher.cache import CompletionCache, shard_file
from factory.teacher.client import TeacherClient
from factory.teacher.types import Deferred, TeacherError

REJECT_SCHEMA = pa.schema([("seed_id", pa.string()), ("recipe", pa.string()), ("sample", pa.int64()),
                           ("reason", pa.string()), ("detail", pa.string())])
ACCOUNT_KEYS = ("requests", "retries", "cache_hits", "prompt_tokens", "completion_tokens")
SPILL_ROWS = 1000  # rows a spool holds in memory before it writes them out


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.parquet"


def reject_row(seed_id: str, recipe: str, sample: int, reason: str, detail: Any) -> dict[str, Any]:
    return {"seed_id": seed_id, "recipe": recipe, "sample": sample, "reason": reason,
            "detail": json.dumps(detail, sort_keys=True, default=str)[:4000]}


def seed_id_of(row: dict[str, Any]) -> str:
    return str((row.get("meta") or {}).get("seed_id") or row.get("id") or "")


class Gate:
    """A semaphore whose size follows `limit()` (the adaptive windows), shared by the shards a worker
    runs at once. The size is read again when the gate is full and every `every` entries (reading
    it sums over the endpoints: not once per request); a size given as a number is exact, a
    followed one may lag by that many."""

    def __init__(self, limit: Callable[[], int], every: int = 32):
        self.limit, self.n, self.every = limit, 0, every
        self._size, self._entries = limit(), 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    async def acquire(self) -> None:
        self._entries += 1
        if self.n >= self._size or self._entries % self.every == 0:
            self._size = self.limit()
        while self.n >= self._size:
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._wake()  # woken, then cancelled: the wake goes to the next waiter
                raise
            self._size = self.limit()
        self.n += 1

    def release(self) -> None:
        self.n -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)
                return


def make_gate(client: TeacherClient, concurrency: int | None) -> Gate:
    """Items in flight: `concurrency` when given; else with adaptive windows twice what they take, so a
    window always has work to grow into (a killed worker repays at most these); 16 with fixed ones."""
    if concurrency:
        return Gate(lambda: concurrency)
    return Gate(lambda: max(16, 2 * client.window_total()) if client.cfg.adaptive_on else 16)


class Spool:
    """Rows of one schema, written to a local temporary parquet file `SPILL_ROWS` at a time; `table()`
    reads them all back (in arrival order) once the shard is done."""

    def __init__(self, schema: pa.Schema, folder: str):
        self.schema, self.path = schema, os.path.join(folder, f"{id(self)}.parquet")
        self.rows: list[dict[str, Any]] = []
        self.writer: pq.ParquetWriter | None = None
        self.n = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.n += 1
        if len(self.rows) >= SPILL_ROWS:
            self._spill()

    def _spill(self) -> None:
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, self.schema, compression="lz4")
        self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
        self.rows = []

    def table(self) -> pa.Table:
        if self.writer is None:
            return pa.Table.from_pylist(self.rows, schema=self.schema)
        self._spill()
        self.writer.close()
        return pq.read_table(self.path, schema=self.schema)


def unique_by_id(table: pa.Table) -> tuple[pa.Table, int]:
    """The rows sorted by id, the first of each id kept (the sort is stable); and how many were dropped."""
    table = table.take(pc.sort_indices(table, [("id", "ascending")]))
    if table.num_rows < 2:
        return table, 0
    ids = table["id"]
    keep = pa.concat_arrays([pa.array([True]), pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1)).combine_chunks()])
    return table.filter(keep), table.num_rows - pc.sum(keep).as_py()


_quiet = 0


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """Objects alive now are left out of the cyclic GC's walks until the (outermost) shard ends.
    They are still freed by reference counting; a cycle among them waits for the next collection
    after the shard."""
    global _quiet
    _quiet += 1
    if _quiet == 1:
        gc.freeze()
    try:
        yield
    finally:
        _quiet -= 1
        if _quiet == 0:
            gc.unfreeze()


class Progress:
    """Counters a driver can poll while shards run."""

    def __init__(self) -> None:
        self.units = self.docs = self.rejected = self.completion_tokens = self.requests = 0

    def snapshot(self) -> dict[str, int]:
        return dict(vars(self))


async def process_shard(k: int, rows: list[dict[str, Any]], recipes: list[Any], samples: int, client: TeacherClient,
                        stage: StageDir, cache_dir: str, concurrency: int | None,
                        progress: Progress | None = None, complete_factory: Callable | None = None,
                        flush_every: int = 64, flush_s: float = 30.0, where: dict[str, Any] | None = None,
                        gate: Gate | None = None, flush_bytes: int = 4 * 1024 * 1024) -> dict[str, Any]:
    """Run shard `k` and write its outputs; returns its stats (with `where` it ran, e.g. the Ray
    node). Raises TeacherError(retryable) to leave the shard unfinished (a later attempt or run
    redoes it, served from the cache). Several shards may run at once on one client: `gate` (the
    worker's, make_gate) bounds their items in flight together, and each shard's accounting is its
    own (client.TALLY)."""
    t0 = time.time()
    tally = client_mod.TALLY.set(collections.Counter())
    try:
        with tempfile.TemporaryDirectory(prefix=f"factory-shard-{k:05d}-") as tmp, quiet_gc():
            return await _process_shard(k, rows, recipes, samples, client, stage, cache_dir, gate or make_gate(client, concurrency),
                                        progress, complete_factory, (flush_every, flush_s, flush_bytes), where, tmp, t0)
    finally:
        client_mod.TALLY.reset(tally)


async def _process_shard(k: int, rows: list[dict[str, Any]], recipes: list[Any], samples: int, client: TeacherClient,
                         stage: StageDir, cache_dir: str, gate: Gate, progress: Progress | None,
                         complete_factory: Callable | None, flush: tuple[int, float, int],
                         where: dict[str, Any] | None, tmp: str, t0: float) -> dict[str, Any]:
    progress = progress or Progress()
    tally = client_mod.TALLY.get()
    docs, rejected = Spool(DOC_SCHEMA, tmp), Spool(REJECT_SCHEMA, tmp)
    reasons: collections.Counter[str] = collections.Counter()
    deferred = 0

    def reject(row: dict[str, Any]) -> None:
        rejected.add(row)
        reasons[row["reason"]] += 1

    n_units = 0
    # the cache's load and close, and the shard's writes, run in a thread: the worker's other shard
    # keeps its requests flowing meanwhile (on object storage these take round trips)
    flush_every, flush_s, flush_bytes = flush
    cache = await asyncio.to_thread(CompletionCache, shard_file(cache_dir, k), flush_every, flush_s, flush_bytes)
    try:
        make = complete_factory or (lambda c: functools.partial(client.complete, cache=c))

        async def unit(row: dict[str, Any], recipe: Any, sample: int) -> None:
            nonlocal deferred
            sid = seed_id_of(row)
            try:
                res = await recipe.run(row, sample, make(cache.for_seed(sid)))
            except Deferred:
                deferred += 1
                return
            except TeacherError as e:
                if e.retryable:
                    raise
                reject(reject_row(sid, recipe.name, sample, f"teacher_{e.reason}", {"detail": e.detail}))
                progress.rejected += 1
                return
            except (FactoryError, asyncio.CancelledError):
                raise
            except Exception as e:  # a recipe bug on one item must not sink the shard
                reject(reject_row(sid, recipe.name, sample, "recipe_error", {"error": f"{type(e).__name__}: {e}"}))
                progress.rejected += 1
                return
            for d in res.docs:  # duplicate ids are dropped when the shard is written
                docs.add(d)
                progress.completion_tokens += int(d["meta"].get("completion_tokens") or 0)
            for reason, detail in res.rejected:
                reject(reject_row(sid, recipe.name, sample, reason, detail))
            progress.units += 1
            progress.docs += len(res.docs)
            progress.rejected += len(res.rejected)

        async def flusher() -> None:  # the time bound of the cache: spooled records go up within flush_s
            while True:
                await asyncio.sleep(min(1.0, flush_s))
                if cache.flush_due():
                    await asyncio.to_thread(cache.flush)

        pending: set[asyncio.Task] = set()
        failure: asyncio.Future = asyncio.get_running_loop().create_future()

        def finished(t: asyncio.Task) -> None:
            pending.discard(t)
            gate.release()
            if not t.cancelled() and t.exception() is not None and not failure.done():
                failure.set_exception(t.exception())

        async def feed() -> None:  # tasks are made as the gate lets them in: memory stays flat however big the shard
            nonlocal n_units
            for r in rows:
                for rc in recipes:
                    for s in range(samples):
                        await gate.acquire()
                        n_units += 1
                        t = asyncio.create_task(unit(r, rc, s))
                        pending.add(t)
                        t.add_done_callback(finished)
            while pending:
                await asyncio.wait(set(pending))

        ticker = asyncio.create_task(flusher())
        feeder = asyncio.create_task(feed())
        try:
            await asyncio.wait({feeder, failure}, return_when=asyncio.FIRST_COMPLETED)
            if failure.done():
                failure.result()
            feeder.result()
        except BaseException:
            for t in (feeder, *pending):
                t.cancel()
            await asyncio.gather(feeder, *pending, return_exceptions=True)
            raise
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
            if failure.done() and not failure.cancelled():
                failure.exception()  # mark retrieved
            failure.cancel()
    finally:
        await asyncio.to_thread(cache.close)
    if deferred:
        return {"shard": k, "deferred": deferred}
    return await asyncio.to_thread(write_shard, k, rows, n_units, tally, docs, rejected, reasons, where, stage, t0)


def write_shard(k: int, rows: list[dict[str, Any]], n_units: int, tally: collections.Counter, docs: Spool,
                rejected: Spool, reasons: collections.Counter, where: dict[str, Any] | None, stage: StageDir,
                t0: float) -> dict[str, Any]:
    """The finished shard's outputs, its docs parquet last (the completion marker); returns its stats."""
    table, dup = unique_by_id(docs.table())
    stats = {k2: int(tally[k2]) for k2 in ACCOUNT_KEYS}
    stats["cost"] = round(tally["cost"], 6)
    stats.update(shard=k, seeds=len(rows), units=n_units, docs=table.num_rows, duplicates=dup,
                 rejected=rejected.n, wall_s=round(time.time() - t0, 3))
    stats["rejected_by_reason"] = dict(reasons)
    stats.update(where or {})
    name = shard_name(k)
    if stage.done(name):  # finished elsewhere meanwhile: that copy stands, this one is dropped
        return {**stats, "late": True}
    with ThreadPoolExecutor(2) as ex:  # on a store: two PUTs at once; the docs last, the shard's completion marker
        for f in [ex.submit(stage.write_table, f"rejected/{name}", rejected.table()),
                  ex.submit(stage.write_json, f"stats/shard-{k:05d}.json", stats)]:
            f.result()
    stage.write_table(doc_path(name), table)
    return stats
