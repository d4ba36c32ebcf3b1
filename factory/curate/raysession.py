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
