"""Generation on Ray: async actors, each with one TeacherClient, take shards from the driver.

The driver hands a shard to an idle actor, polls all actors for live counters (docs/s, tok/s,
ETA in the progress bar) and collects per-shard stats, which name the node that ran each shard.
Actors are spread over the nodes; they restart and re-run their shard if their process dies
(Ray's max_restarts / max_task_retries). An actor lost for good (its node gone) is replaced and
its shard handed to another; a shard that fails twice is left unfinished, reported, and redone by
the next run (served from the request cache).
"""

from __future__ import annotations

import time
from typing import Any

from factory.generate.config import GenerateConfig
from factory.stage import StageDir
from factory.teacher.config import TeacherConfig


class GenWorker:
    """A Ray actor (async): one TeacherClient kept across shards, so endpoint health persists."""

    def __init__(self, tcfg: TeacherConfig, stage_url: str, identity: dict[str, Any], recipes: list[str],
                 recipe_sampling: dict[str, Any], samples: int, cache_dir: str, concurrency: int | None,
                 flush_every: int = 64, flush_s: float = 30.0):
        from factory.recipes import load_recipe
        from factory.teacher.client import TeacherClient
        from factory.generate.shard import Progress

        self.tcfg, self.samples, self.cache_dir, self.concurrency = tcfg, samples, cache_dir, concurrency
        self.flush = {"flush_every": flush_every, "flush_s": flush_s}
        self.stage = StageDir(stage_url, "generate", identity)
        self.recipes = [load_recipe(r, **recipe_sampling) for r in recipes]
        self.client = TeacherClient(tcfg)
        self.progress = Progress()

    async def process(self, k: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
        from factory.generate.shard import process_shard

        await self.client.start(probe=False)
        return await process_shard(k, rows, self.recipes, self.samples, self.client, self.stage, self.cache_dir,
                                   self.concurrency, self.progress, where=placement(), **self.flush)

    async def poll(self) -> dict[str, Any]:
        return {**self.progress.snapshot(), "requests": self.client.stats["requests"],
                "retries": self.client.stats["retries"], "cost": self.client.cost, "endpoints": self.client.windows()}


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
    """Where this process runs: Ray node id and address, host, pid (kept in each shard's stats)."""
    import os
    import socket

    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "host": socket.gethostname(), "pid": os.getpid()}


def run_on_ray(cfg: GenerateConfig, tcfg: TeacherConfig, shards: dict[int, list[dict[str, Any]]], recipes: list[Any],
               stage: StageDir, cache_dir: str, show_progress: bool = True) -> dict[str, Any]:
    """Process `shards` ({index: rows}) on Ray; returns this run's accounting and failed shards."""
    import ray

    from factory.cluster import init_ray
    from factory.ui import progress as make_progress

    started = not ray.is_initialized()
    init_ray(cfg.ray_address)
    n_workers = max(1, min(cfg.workers, len(shards)))
    actor = ray.remote(GenWorker).options(num_cpus=cfg.worker_cpus, max_concurrency=4, max_restarts=2,
                                          max_task_retries=2, scheduling_strategy="SPREAD")
    share = tcfg.scaled(n_workers)

    def new_worker() -> Any:
        return actor.remote(share, stage.url, stage.config, cfg.recipes, cfg.recipe_sampling, cfg.samples_per_seed,
                            str(cache_dir), cfg.concurrency, cfg.cache_flush_every, cfg.cache_flush_s)

    workers = [new_worker() for _ in range(n_workers)]
    replaced = 0
    queue = sorted(shards)
    total_units = sum(len(r) for r in shards.values()) * len(recipes) * cfg.samples_per_seed
    running: dict[Any, tuple[int, Any]] = {}
    attempts: dict[int, int] = {}
    results: dict[int, dict[str, Any]] = {}
    failed: list[dict[str, Any]] = []
    idle = list(workers)
    polled: dict[Any, dict[str, Any]] = {}
    t0 = time.time()
    bar = make_progress(disable=not show_progress)
    try:
        with bar:
            task = bar.add_task("generate", total=total_units, unit="units", info="starting")
            while queue or running:
                while queue and idle:
                    k, w = queue.pop(0), idle.pop()
                    attempts[k] = attempts.get(k, 0) + 1
                    running[w.process.remote(k, shards[k])] = (k, w)
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
                for ref in ready:
                    k, w = running.pop(ref)
                    try:
                        results[k] = ray.get(ref)
                        idle.append(w)
                    except ray.exceptions.RayActorError as e:  # the actor is gone for good (e.g. its node)
                        workers.remove(w)
                        polled.pop(w, None)
                        w = new_worker()
                        workers.append(w)
                        idle.append(w)
                        replaced += 1
                        if replaced <= 2 * n_workers:  # not the shard's fault: no attempt counted
                            attempts[k] -= 1
                        if attempts[k] < 2:
                            queue.insert(0, k)
                        else:
                            failed.append({"shard": k, "error": _first_line(e)})
                    except Exception as e:  # noqa: BLE001 - retry once, then report
                        idle.append(w)
                        if attempts[k] < 2:
                            queue.append(k)
                        else:
                            failed.append({"shard": k, "error": _first_line(e)})
                try:
                    for w, snap in zip(workers, ray.get([w.poll.remote() for w in workers], timeout=5)):
                        polled[w] = snap
                except Exception:  # noqa: BLE001 - a restarting actor: keep the last numbers
                    pass
                units = sum(s["units"] for s in polled.values())
                docs = sum(s["docs"] for s in polled.values())
                toks = sum(s["completion_tokens"] for s in polled.values())
                dt = max(1e-6, time.time() - t0)
                cost = sum(s["cost"] for s in polled.values())
                bar.update(task, completed=min(units, total_units),
                           info=f"{docs / dt:.2f} docs/s  {toks / dt:.0f} tok/s  ${cost:.4f}  retries {sum(s['retries'] for s in polled.values())}"
                                + window_info(merge_windows(list(polled.values()))))
    finally:
        for w in workers:
            ray.kill(w)
        if started:
            ray.shutdown()
    acc = {k: sum(r.get(k, 0) for r in results.values()) for k in ("requests", "retries", "cache_hits", "prompt_tokens",
                                                                   "completion_tokens", "docs", "units")}
    acc["cost"] = round(sum(r.get("cost", 0) for r in results.values()), 6)
    acc.update(shards_run=sorted(results), failed_shards=failed, wall_s=round(time.time() - t0, 3),
               completion_tok_per_s=round(acc["completion_tokens"] / max(1e-6, time.time() - t0), 2), workers=n_workers,
               workers_replaced=replaced, late_shards=sorted(k for k, r in results.items() if r.get("late")),
               endpoints=merge_windows(list(polled.values())))
    return acc
