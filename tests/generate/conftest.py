"""Fixtures for generation tests: one local Ray for the module set, seed files, test recipes."""

from __future__ import annotations

import json

import pytest

from gen_helpers import seed_rows


@pytest.fixture(scope="session")
def ray_local(s3_server, tmp_path_factory):
    """A local Ray whose workers see the S3 test server and a spool folder of the session's own."""
    import os

    from factory.cluster import init_ray, shutdown_ray
    from factory.teacher.cache import SPOOL_ENV

    os.environ[SPOOL_ENV] = str(tmp_path_factory.mktemp("spool"))
    init_ray(None, num_cpus=2, object_store_memory=200 * 1024**2)
    yield
    shutdown_ray()


@pytest.fixture
def seeds_file(tmp_path):
    def make(n: int, bad: list[dict] | None = None) -> str:
        p = tmp_path / f"seeds-{n}.jsonl"
        lines = [json.dumps(r) for r in seed_rows(n)] + [json.dumps(b) for b in bad or []]
        p.write_text("\n".join(lines) + "\n")
        return str(p)
    return make


