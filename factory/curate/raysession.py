"""Connect to a Ray cluster (or start a local one) so that its workers can import this package."""

from __future__ import annotations

import os
from pathlib import Path


def init(address: str | None = None, num_cpus: int | None = None, **kw):
    import ray

    import factory

    root = str(Path(factory.__file__).resolve().parent.parent)
    env = {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p),
           "HF_HUB_OFFLINE": "1"}
    args = dict(runtime_env={"env_vars": env}, log_to_driver=False, include_dashboard=False, **kw)
    if address:
        return ray.init(address=address, **{k: v for k, v in args.items() if k != "include_dashboard"})
    return ray.init(num_cpus=num_cpus, **args)


def _default_sigterm() -> None:
    import signal

    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except ValueError:  # not the main thread: nothing to reset here
        pass


from datatrove.executor.ray import RayPipelineExecutor  # noqa: E402


class FactoryRayExecutor(RayPipelineExecutor):
    """datatrove's RayPipelineExecutor, made safe for the process pool each Ray actor forks.

    datatrove runs a task group's ranks in a `multiprocess` pool forked inside the actor. The
    children inherit Ray's SIGTERM handler, which does not exit, so a pool child that is idle
    when the pool shuts down ignores `terminate()` and the actor waits on it forever. Restoring
    the default SIGTERM action in the actor (when it receives the executor) and in each pool
    child lets the pool shut down.
    """

    def __setstate__(self, state):
        self.__dict__.update(state)
        _default_sigterm()

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        _default_sigterm()
        return super()._run_for_rank(rank, local_rank, node_rank)


def ray_executor_class():
    return FactoryRayExecutor
