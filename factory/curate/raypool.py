"""Long-lived Ray workers shared by every datatrove job of one curation run.

datatrove's RayPipelineExecutor starts a placement group and a fresh actor for every task group of
every job, and each actor forks a process pool: a worker pays Python, datatrove and spaCy imports
once per job (several seconds each, five jobs a run). Here one actor per worker slot lives for the
whole run and calls the executor's own `_run_for_rank`, so logging, stats and completion markers
stay datatrove's. A worker that dies (node lost, OOM, SIGKILL) is replaced and its ranks that left
no completion marker run again, at most `retries` times; a rank whose steps raise is not retried,
as in datatrove, and the job check after it reports the rank.
"""

from __future__ import annotations

import copy
from collections import Counter, deque
from typing import Any

from datatrove.utils.logging import logger

from factory.core.compat import datatrove_run_rank

GIB = 1024**3


class CurationWorker:
    """One worker process: runs ranks of any job handed to it, one after another."""

    def ready(self) -> bool:
        return True

    def run(self, executor, ranks: list[int]) -> list[int]:
        for rank in ranks:  # a fresh copy per rank, as datatrove's forked process: steps count one rank each
            datatrove_run_rank(copy.deepcopy(executor), rank)  # errors only on the console: the rest is in the task log
        return ranks


class WorkerPool:
    """`size` CurationWorker actors with `cpus` CPUs and `memory_gb` each; a context manager that
    kills them on exit. Work goes only to actors that have started: asking for more workers than
    the cluster holds leaves the rest waiting (or lets an autoscaler add nodes for them), never a
    rank stuck behind an actor that cannot be placed."""

    def __init__(self, size: int, cpus: int = 1, memory_gb: float = 0.5, retries: int = 3):
        import ray

        self.options = {"num_cpus": cpus, "memory": int(memory_gb * cpus * GIB), "max_restarts": 0}
        self.cls = ray.remote(CurationWorker)
        self.actors: list[Any] = []
        self.starting: dict[Any, int] = {}  # ready() futures of actors not known to be up yet
        self.up: set[int] = set()
        for _ in range(max(1, size)):
            self.actors.append(None)
            self._start(len(self.actors) - 1)
        self.retries = retries

    def _start(self, slot: int) -> None:
        self.actors[slot] = self.cls.options(**self.options).remote()
        self.up.discard(slot)
        self.starting[self.actors[slot].ready.remote()] = slot

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []

    def run(self, executor, groups: list[list[int]], workers: int) -> None:
        """Run the rank groups on at most `workers` started actors."""
        import ray
        from ray.exceptions import ActorDiedError, ObjectLostError, RayActorError, WorkerCrashedError

        lost = (RayActorError, ActorDiedError, WorkerCrashedError, ObjectLostError)
        ref = ray.put(executor)
        pending, tries = deque(groups), Counter()
        running: dict[Any, tuple[int, list[int]]] = {}
        while pending or running:
            busy = {slot for slot, _ in running.values()}
            # any started actor takes work, `workers` at most at once: which actors the cluster
            # could place is not known in advance (with too few CPUs, the first ones may never start)
            for slot in sorted(self.up - busy)[:max(0, workers - len(running))]:
                if not pending:
                    break
                group = pending.popleft()
                running[self.actors[slot].run.remote(ref, group)] = (slot, group)
            finished, _ = ray.wait(list(running) + list(self.starting), num_returns=1)
            for fut in finished:
                if fut in self.starting:
                    slot = self.starting.pop(fut)
                    try:
                        ray.get(fut)
                        self.up.add(slot)
                    except lost:
                        self._start(slot)
                    continue
                slot, group = running.pop(fut)
                try:
                    ray.get(fut)
                except lost as e:
                    self._start(slot)
                    left = executor.get_incomplete_ranks(group, skip_completed=True)
                    tries.update(left)
                    if left and max(tries[r] for r in left) <= self.retries:
                        logger.warning(f"worker lost ({type(e).__name__}); running ranks {left} again")
                        pending.append(left)
                    elif left:
                        logger.error(f"ranks {left} lost their worker {self.retries + 1} times; giving up")
                except ray.exceptions.RayTaskError as e:
                    logger.error(f"ranks {group} failed: {e}")
