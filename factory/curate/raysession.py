"""Connect to a Ray cluster (or start a local one) so that its workers can import this package."""

from __future__ import annotations

import os
from pathlib import Path


def init(address: str | None = None, num_cpus: int | None = None, **kw) -> dict:
    """`factory.cluster.init_ray` (address or RAY_ADDRESS, the auth mode, one-line errors), with the
    package on the workers' path; returns the cluster's resources."""
    import factory
    from factory.cluster import init_ray

    root = str(Path(factory.__file__).resolve().parent.parent)
    env = {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p),
           "HF_HUB_OFFLINE": "1"}
    return init_ray(address, runtime_env={"env_vars": env}, log_to_driver=False, num_cpus=num_cpus, **kw)


def _default_sigterm() -> None:
    import signal

    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except ValueError:  # not the main thread: nothing to reset here
        pass


from datatrove.executor.ray import RayPipelineExecutor  # noqa: E402


class FactoryRayExecutor(RayPipelineExecutor):
    """datatrove's RayPipelineExecutor, with `run_on(pool)`: the ranks run on the run's shared
    WorkerPool (raypool.py) instead of a fresh actor per task group.

    `run()` stays datatrove's own, made safe for the `multiprocess` pool each of its actors forks:
    the children inherit Ray's SIGTERM handler, which does not exit, so an idle child ignores
    `terminate()` and the actor waits on it forever. Restoring the default SIGTERM action in the
    actor (when it receives the executor) and in each pool child lets the pool shut down.
    """

    def __setstate__(self, state):
        self.__dict__.update(state)
        _default_sigterm()

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        from factory.core.stage import forget_listings
        from factory.curate.workfolder import discard

        _default_sigterm()
        discard()  # what an earlier failed task of this process staged never goes up (workfolder.py)
        forget_listings()  # a pooled worker outlives jobs: files listed earlier may have changed since
        return super()._run_for_rank(rank, local_rank, node_rank)

    def run_on(self, pool) -> None:
        """Run the incomplete ranks on `pool`, then merge the ranks' stats as datatrove does."""
        import json

        from datatrove.utils.logging import logger
        from datatrove.utils.stats import PipelineStats

        self._launched = True
        ranks = self.get_incomplete_ranks(range(self.world_size))
        if not ranks:
            logger.info(f"All {self.world_size} tasks appear to be completed already. Nothing to run.")
            return
        logger.info(f"Will run pipeline on {len(ranks)} incomplete ranks out of {self.world_size} total.")
        self.save_executor_as_json()
        pool.run(self, [ranks[i: i + self.tasks_per_job] for i in range(0, len(ranks), self.tasks_per_job)],
                 self.workers)
        self.logging_dir.invalidate_cache()
        if self.get_incomplete_ranks(skip_completed=True):
            return
        total = PipelineStats()
        for rank in range(self.world_size):
            with self.logging_dir.open(f"stats/{rank:05d}.json", "r") as f:
                total += PipelineStats.from_json(json.load(f))
        with self.logging_dir.open("stats.json", "wt") as f:
            total.save_to_disk(f)
        logger.success(total.get_repr(f"All {self.world_size} tasks."))


def ray_executor_class():
    return FactoryRayExecutor
