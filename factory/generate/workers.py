"""Generation on Ray: async actors, each with one TeacherClient, take shards from the driver.

The driver keeps `SHARDS_PER_WORKER` shards on each actor, so that while one shard's last items
finish another's first ones fill the window (one gate per actor bounds their items in flight
together); it polls all actors for live counters (docs/s, tok/s,
ETA in the progress bar) and collects per-shard stats, which name the node that ran each shard.
Actors are spread over the nodes; they restart and re-run their shard if their process dies
(Ray's max_restarts / max_task_retries). An actor lost for good (its node gone) is replaced and
its shard handed to another; a shard that fails twice is left unfinished, reported, and redone by
the next run (served from the request cache).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

from factory.core.errors import FactoryError
from factory.core.stage import StageDir
from factory.generate.config import GenerateConfig
from factory.teacher.config import TeacherConfig

SHARDS_PER_WORKER = 2  # shards an actor runs at once: the next one starts while one drains
STOP_GRACE_S = 10.0  # a stopped driver waits this long for its cancelled shards to close their caches
ENDPOINTS_PER_WORKER = 16  # endpoints one async worker drives by default: at ~1 ms of CPU a request (measured over a
# million requests) a worker sends ~1,000 requests/s, 60 a second to each of 16 continuous-batching replicas


def ray_address(cfg: GenerateConfig) -> str | None:
    """The cluster the stage would join: the config's, else RAY_ADDRESS; None for a local Ray."""
    import os

    address = cfg.ray_address or os.environ.get("RAY_ADDRESS") or None
    return None if address == "local" else address


def in_process(cfg: GenerateConfig, n_endpoints: int) -> bool:
    """`workers: -1` on this machine alone (no cluster given, no Ray started in this process) with
    a fleet one worker drives: the shards run in the driver's own event loop and Ray is not
    started, so that neither its start nor its processes' CPU (several % of a core) is paid."""
    import sys

    ray = sys.modules.get("ray")
    return (cfg.workers == -1 and ray_address(cfg) is None and not (ray is not None and ray.is_initialized())
            and n_endpoints <= ENDPOINTS_PER_WORKER)


def worker_count(cfg: GenerateConfig, n_endpoints: int, n_shards: int) -> int:
    """Ray actors: the config's number, or for -1 one per alive node and one per 16 endpoints;
    never more than the shards to run."""
    if cfg.workers > 0:
        n = cfg.workers
    else:
        import ray

        nodes = sum(1 for nd in ray.nodes() if nd.get("Alive"))
        n = max(nodes, -(-n_endpoints // ENDPOINTS_PER_WORKER))
    return max(1, min(n, n_shards))


class GenWorker:
    """A Ray actor (async): one TeacherClient kept across shards, so endpoint health persists. The
    actor starts before the teacher is known (its start overlaps the teacher's start and probe):
    the first shard brings the teacher config, the client is made then."""

    def __init__(self, stage_url: str, identity: dict[str, Any], recipes: list[str], recipe_sampling: dict[str, Any],
                 samples: int, cache_dir: str, concurrency: int | None, flush_every: int = 64, flush_s: float = 30.0,
                 flush_bytes: int = 4 * 1024 * 1024):
        import factory.teacher.client  # noqa: F401 - imported now, while the driver still probes
        from factory.generate.shard import Progress
        from factory.recipes import load_recipe

        self.samples, self.cache_dir, self.concurrency = samples, cache_dir, concurrency
        self.flush = {"flush_every": flush_every, "flush_s": flush_s, "flush_bytes": flush_bytes}
        self.stage = StageDir(stage_url, "generate", identity)
        self.recipes = [load_recipe(r, **recipe_sampling) for r in recipes]
        self.client: Any = None
        self.gate: Any = None  # the actor's items in flight, over the shards it runs at once
        self.progress = Progress()
        self.born = time.time()

    async def ready(self) -> float:
        return self.born

    async def process(self, k: int, rows: list[dict[str, Any]], tcfg: TeacherConfig,
                      keys: dict[str, str] | None = None) -> dict[str, Any]:
        from factory.generate.shard import make_gate, process_shard
        from factory.teacher.client import TeacherClient

        began, cpu0 = time.time(), time.process_time()
        if self.client is None:
            self.client = TeacherClient(tcfg, keys=keys)
            self.gate = make_gate(self.client, self.concurrency)
        else:  # the share this shard brings (the driver may have given this worker a tail's larger one)
            await self.client.reshare(tcfg)
        await self.client.start(probe=False)
        st = await process_shard(k, rows, self.recipes, self.samples, self.client, self.stage, self.cache_dir,
                                 self.concurrency, self.progress, where=placement(), gate=self.gate, **self.flush)
        # for the run's timeline: when, and the worker process's CPU clock at both ends (all its threads, Ray's too)
        return {**st, "born": self.born, "began": began, "ended": time.time(), "cpu": [cpu0, time.process_time()]}

    async def reshare(self, tcfg: TeacherConfig) -> None:
        """Take another share of the teacher's limits (the driver's call when fewer workers are busy)."""
        if self.client is not None:
            await self.client.reshare(tcfg)

    async def poll(self) -> dict[str, Any]:
        if self.client is None:
            return {**self.progress.snapshot(), "requests": 0, "retries": 0, "cost": 0.0, "endpoints": []}
        return {**self.progress.snapshot(), "requests": self.client.stats["requests"],
                "retries": self.client.stats["retries"], "cost": self.client.cost, "endpoints": self.client.windows()}


class Workers:
    """Ray and the generation actors, started as soon as the driver knows there is work, so that
    their start (Ray worker processes, imports, recipes) overlaps the teacher's start and probe.
    `close()` kills them and stops a Ray it started: the tear-down, timed apart from the run."""

    def __init__(self, cfg: GenerateConfig, stage: StageDir, cache_dir: str, n_shards: int, n_endpoints: int):
        import ray

        from factory.cluster import init_ray

        self.started = not ray.is_initialized()
        init_ray(cfg.ray_address)
        self.n = worker_count(cfg, n_endpoints, n_shards)
        self.actor = ray.remote(GenWorker).options(num_cpus=cfg.worker_cpus, max_concurrency=4, max_restarts=2,
                                                   max_task_retries=2, scheduling_strategy="SPREAD")
        self.args = (stage.url, stage.config, cfg.recipes, cfg.recipe_sampling, cfg.samples_per_seed, str(cache_dir),
                     cfg.concurrency, cfg.cache_flush_every, cfg.cache_flush_s, cfg.cache_flush_bytes)
        self.created_at = time.time()
        self.actors = [self.new() for _ in range(self.n)]
        self.teardown_s: float | None = None

    def new(self) -> Any:
        return self.actor.remote(*self.args)

    def close(self) -> None:
        import ray

        t = time.time()
        for w in self.actors:
            ray.kill(w)
        if self.started:
            ray.shutdown()
        self.teardown_s = round(time.time() - t, 3)

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def merge_windows(polls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per endpoint over all workers: windows and in-flight summed, breaker counts added up."""
    out: dict[str, dict[str, Any]] = {}
    for snap in polls:
        for ep in snap.get("endpoints") or []:
            m = out.setdefault(ep["base_url"], {"base_url": ep["base_url"], "adaptive": ep["adaptive"]})
            for k, v in ep.items():
                if k not in ("base_url", "adaptive"):
                    m[k] = m.get(k, 0) + int(v)
    return list(out.values())


def window_info(eps: list[dict[str, Any]]) -> str:
    """The progress line's part on concurrency: the window over all endpoints, open breakers."""
    if not eps:
        return ""
    kind = "adaptive" if any(e["adaptive"] for e in eps) else "fixed"
    opened = sum(e["open_now"] for e in eps)
    return f"  window {sum(e['window'] for e in eps)} ({kind})" + (f"  breaker open {opened}/{len(eps)}" if opened else "")


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"


def placement() -> dict[str, Any]:
    """Where this process runs: Ray node id and address (on Ray), host, pid (kept in each shard's stats)."""
    import os
    import socket
    import sys

    ray = sys.modules.get("ray")
    node = ({"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address()}
            if ray is not None and ray.is_initialized() else {})
    return {**node, "host": socket.gethostname(), "pid": os.getpid()}


def timeline(t0: float, results: dict[int, dict[str, Any]], done_at: float) -> dict[str, Any]:
    """Where the run's time went outside the shards, per worker process: from the start to its first
    shard, between its shards (hand-offs), and idle at the end while others still worked."""
    runs: dict[Any, list[tuple[float, float]]] = {}
    for r in results.values():
        if "began" in r:
            runs.setdefault(r.get("pid"), []).append((r["began"], r["ended"]))
    out: dict[str, list[float]] = {"to_first_shard_s": [], "between_shards_s": [], "idle_at_end_s": []}
    clocks: dict[Any, list[list[float]]] = {}
    for r in results.values():
        if "cpu" in r:
            clocks.setdefault(r.get("pid"), []).append(r["cpu"])
    if clocks:  # the workers' CPU per request while they had shards (shards that overlap counted once)
        cpu = sum(max(b for _, b in c) - min(a for a, _ in c) for c in clocks.values())
        n = sum(r.get("requests", 0) for r in results.values() if "cpu" in r)
        out["worker_cpu_ms_per_request"] = round(1000 * cpu / max(1, n), 2)
    for spans in runs.values():
        spans.sort()
        out["to_first_shard_s"].append(round(spans[0][0] - t0, 3))
        gaps, reach = 0.0, spans[0][1]  # time with no shard at all on this worker (shards overlap)
        for b, e in spans[1:]:
            gaps, reach = gaps + max(0.0, b - reach), max(reach, e)
        out["between_shards_s"].append(round(gaps, 3))
        out["idle_at_end_s"].append(round(max(0.0, done_at - max(e for _, e in spans)), 3))
    return out


def run_on_ray(cfg: GenerateConfig, tcfg: TeacherConfig, shards: dict[int, list[dict[str, Any]]], recipes: list[Any],
               pool: Workers, show_progress: bool = True) -> dict[str, Any]:
    """Process `shards` ({index: rows}) on the pool's actors; returns this run's accounting, failed
    shards and its timeline. wall_s runs from the first shard handed out to the last one back."""
    import ray

    from factory.core.ui import progress as make_progress

    n_workers = pool.n
    share = tcfg.scaled(n_workers)
    # the endpoints' keys as the driver reads them, handed to the actors with their shards (task arguments, in
    # memory: never in a runtime_env, the job's metadata or a log), so a node whose environment lacks them still sends them
    keys = tcfg.keys()
    workers = pool.actors
    replaced = 0
    queue = sorted(shards)
    total_units = sum(len(r) for r in shards.values()) * len(recipes) * cfg.samples_per_seed
    running: dict[Any, tuple[int, Any]] = {}
    attempts: dict[int, int] = {}
    results: dict[int, dict[str, Any]] = {}
    failed: list[dict[str, Any]] = []
    sharing = n_workers  # the workers the teacher's limits are split over now
    idle = [w for _ in range(SHARDS_PER_WORKER) for w in workers]  # one entry per free shard place, workers interleaved
    polled: dict[Any, dict[str, Any]] = {}
    poll_every = 0.5 if show_progress else 5.0  # hidden progress: the counters are only read for the summary
    t0 = last_poll = time.time()
    bar = make_progress(disable=not show_progress)
    with bar, stopping_shards(running):
        task = bar.add_task("generate", total=total_units, unit="units", info="starting")
        while queue or running:
            if queue and idle and sharing != len(workers):  # work again after a tail's reshare: the even split
                sharing = reshare(running, share, len(workers))
            while queue and idle:
                k, w = queue.pop(0), idle.pop()
                attempts[k] = attempts.get(k, 0) + 1
                running[w.process.remote(k, shards[k], share, keys)] = (k, w)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            for ref in ready:
                k, w = running.pop(ref)
                try:
                    results[k] = ray.get(ref)
                    idle.append(w)
                except ray.exceptions.RayActorError as e:  # the actor is gone for good (e.g. its node)
                    if w in workers:  # its first lost shard: replace it (its other shards fail here too)
                        workers.remove(w)
                        polled.pop(w, None)
                        idle = [x for x in idle if x is not w]
                        nw = pool.new()
                        workers.append(nw)
                        idle += [nw] * SHARDS_PER_WORKER
                        replaced += 1
                    if replaced <= 2 * n_workers:  # not the shard's fault: no attempt counted
                        attempts[k] -= 1
                    if attempts[k] < 2:
                        queue.insert(0, k)
                    else:
                        failed.append({"shard": k, "error": _first_line(e)})
                except Exception as e:  # noqa: BLE001 - retry once, then report
                    cause = getattr(e, "cause", e)
                    if isinstance(cause, FactoryError):  # the endpoint refuses everything, or the error budget is
                        raise cause from None  # spent: the run stops (the other shards are cancelled on the way out)
                    idle.append(w)
                    if attempts[k] < 2:
                        queue.append(k)
                    else:
                        failed.append({"shard": k, "error": _first_line(e)})
            busy = len({id(w) for _, w in running.values()})
            if not queue and 0 < busy < sharing:  # the tail: the workers still busy take the idle ones' share
                sharing = reshare(running, tcfg.scaled(busy), busy)
            if time.time() - last_poll >= poll_every or not (queue or running):
                last_poll = time.time()
                poll(workers, polled)
            show(bar, task, list(polled.values()), t0, total_units)
    done_at = time.time()  # the work is done: the pool's tear-down follows, not counted in wall_s
    return accounting(results, failed, list(polled.values()), t0, done_at, pool.created_at, executor="ray",
                      workers=n_workers, workers_replaced=replaced)


@contextlib.contextmanager
def stopping_shards(running: dict[Any, tuple[int, Any]]) -> Iterator[None]:
    """When the driver stops (SIGTERM, Ctrl-C, an error of its own), the shards still running are
    cancelled before the actors are killed: each closes its request cache, so the completions it
    spooled reach the store (waited for up to STOP_GRACE_S)."""
    try:
        yield
    except BaseException:
        import ray

        refs = list(running)
        for ref in refs:
            ray.cancel(ref)
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=STOP_GRACE_S)
        raise


def show(bar: Any, task: Any, polls: list[dict[str, Any]], t0: float, total_units: int) -> None:
    """The progress line from the workers' live counters."""
    units = sum(s["units"] for s in polls)
    docs = sum(s["docs"] for s in polls)
    toks = sum(s["completion_tokens"] for s in polls)
    dt = max(1e-6, time.time() - t0)
    cost = sum(s["cost"] for s in polls)
    bar.update(task, completed=min(units, total_units),
               info=f"{docs / dt:.2f} docs/s  {toks / dt:.0f} tok/s  ${cost:.4f}  retries {sum(s['retries'] for s in polls)}"
                    + window_info(merge_windows(polls)))


def accounting(results: dict[int, dict[str, Any]], failed: list[dict[str, Any]], polls: list[dict[str, Any]], t0: float,
               done_at: float, created_at: float, **extra: Any) -> dict[str, Any]:
    """This run's accounting from its shards' stats: totals, failed and late shards, rates, timeline."""
    acc: dict[str, Any] = {k: sum(r.get(k, 0) for r in results.values())
                           for k in ("requests", "retries", "cache_hits", "prompt_tokens", "completion_tokens", "docs", "units")}
    acc["cost"] = round(sum(r.get("cost", 0) for r in results.values()), 6)
    wall = max(1e-6, done_at - t0)
    acc.update(shards_run=sorted(results), failed_shards=failed, wall_s=round(wall, 3),
               completion_tok_per_s=round(acc["completion_tokens"] / wall, 2), **extra,
               late_shards=sorted(k for k, r in results.items() if r.get("late")), endpoints=merge_windows(polls),
               timeline={"workers_started_before_s": round(t0 - created_at, 3), **timeline(t0, results, done_at)})
    return acc


def reshare(running: dict[Any, tuple[int, Any]], share: TeacherConfig, n: int) -> int:
    """Give the workers running shards `share` of the teacher's limits (split over `n`); returns n."""
    seen: set[int] = set()
    for _, w in running.values():
        if id(w) not in seen:
            seen.add(id(w))
            w.reshare.remote(share)
    return n


def poll(workers: list[Any], polled: dict[Any, dict[str, Any]]) -> None:
    """Every worker's live counters into `polled`; a restarting actor keeps its last numbers."""
    import ray

    try:
        for w, snap in zip(workers, ray.get([w.poll.remote() for w in workers], timeout=5)):
            polled[w] = snap
    except Exception:  # noqa: BLE001
        pass
