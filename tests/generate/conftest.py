"""Fixtures for generation tests: one local Ray for the module set, seed files, test recipes."""

from __future__ import annotations

import json

import pytest
from gen_helpers import seed_rows


@pytest.fixture(scope="session")
def _ray_local_session(s3_server, tmp_path_factory):
    import os

    from factory.cluster import shutdown_ray
    from factory.teacher.cache import SPOOL_ENV

    os.environ[SPOOL_ENV] = str(tmp_path_factory.mktemp("spool"))
    yield
    shutdown_ray()


@pytest.fixture
def ray_local(_ray_local_session):
    """A local Ray whose workers see the S3 test server and a spool folder of the session's own: started
    once, and again after a test elsewhere in the session stopped it."""
    import ray

    from factory.cluster import init_ray

    if not ray.is_initialized():
        init_ray(None, num_cpus=2, object_store_memory=200 * 1024**2)


@pytest.fixture
def seeds_file(tmp_path):
    def make(n: int, bad: list[dict] | None = None) -> str:
        p = tmp_path / f"seeds-{n}.jsonl"
        lines = [json.dumps(r) for r in seed_rows(n)] + [json.dumps(b) for b in bad or []]
        p.write_text("\n".join(lines) + "\n")
        return str(p)
    return make


