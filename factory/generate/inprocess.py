"""Generation in the driver's own event loop, without Ray: `workers: -1` on one machine with a fleet
that one worker drives (see workers.in_process).

The same worker as on Ray (one TeacherClient, one gate over `SHARDS_PER_WORKER` shards at once, the
same shard code, cache and outputs), run as a plain object: no Ray start, no Ray processes beside
the teacher. A shard that raises is run once more, then reported; a killed run resumes like any
other (finished shards kept, paid requests answered from the cache).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from factory.core.errors import FactoryError
from factory.core.stage import StageDir
from factory.generate.config import GenerateConfig
from factory.generate.workers import SHARDS_PER_WORKER, GenWorker, _first_line, accounting, show
from factory.teacher.config import TeacherConfig


def run_in_process(cfg: GenerateConfig, tcfg: TeacherConfig, shards: dict[int, list[dict[str, Any]]], recipes: list[Any],
                   stage: StageDir, cache_dir: str, show_progress: bool = True) -> dict[str, Any]:
    """Process `shards` ({index: rows}); returns this run's accounting, failed shards and timeline,
    as run_on_ray does. wall_s runs from the first shard's start to the last one's end."""
    return asyncio.run(_run(cfg, tcfg, shards, recipes, stage, cache_dir, show_progress))


async def _run(cfg: GenerateConfig, tcfg: TeacherConfig, shards: dict[int, list[dict[str, Any]]], recipes: list[Any],
               stage: StageDir, cache_dir: str, show_progress: bool) -> dict[str, Any]:
    from factory.core.ui import progress as make_progress

    created_at = time.time()
    worker = GenWorker(stage.url, stage.config, cfg.recipes, cfg.recipe_sampling, cfg.samples_per_seed, cache_dir,
                       cfg.concurrency, cfg.cache_flush_every, cfg.cache_flush_s, cfg.cache_flush_bytes)
    queue = sorted(shards)
    results: dict[int, dict[str, Any]] = {}
    failed: list[dict[str, Any]] = []

    async def lane() -> None:  # one shard place of the worker: shards one after another
        while queue:
            k = queue.pop(0)
            for attempt in (1, 2):
                try:
                    results[k] = await worker.process(k, shards[k], tcfg)
                    break
                except FactoryError:  # the endpoint refuses everything, the error budget is spent: the run stops
                    raise
                except Exception as e:  # noqa: BLE001 - run once more, then report
                    if attempt == 2:
                        failed.append({"shard": k, "error": _first_line(e)})

    total_units = sum(len(r) for r in shards.values()) * len(recipes) * cfg.samples_per_seed
    bar = make_progress(disable=not show_progress)
    t0 = time.time()
    try:
        with bar:
            task = bar.add_task("generate", total=total_units, unit="units", info="starting")
            lanes = [asyncio.create_task(lane()) for _ in range(min(SHARDS_PER_WORKER, len(queue)))]
            pending = set(lanes)
            try:
                while pending:
                    done, pending = await asyncio.wait(pending, timeout=0.5)
                    if show_progress or not pending:
                        show(bar, task, [await worker.poll()], t0, total_units)
                    for t in done:
                        t.result()  # a stop (or a bug outside the shards' own errors) ends the run at once
            except BaseException:
                for t in lanes:
                    t.cancel()
                await asyncio.gather(*lanes, return_exceptions=True)
                raise
        done_at = time.time()
        polls = [await worker.poll()]
    finally:
        if worker.client is not None:
            await worker.client.close()
    return accounting(results, failed, polls, t0, done_at, created_at, executor="in_process", workers=1,
                      workers_replaced=0)
