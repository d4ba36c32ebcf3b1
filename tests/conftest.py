"""Shared fixtures: one real local teacher (llama.cpp, SmolLM2-135M) for the whole test session."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# test helpers shared across folders (fault-injecting proxy, fake Batch API) import by module name
sys.path.insert(0, str(Path(__file__).parent / "teacher"))
sys.path.insert(0, str(Path(__file__).parent / "generate"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# The local teacher checks an API key, as real endpoints do. It is exported before any test runs, so every
# Ray worker, torchrun or subprocess started during the session holds it too (configs name it in api_key_env).
os.environ.setdefault("FACTORY_TEACHER_KEY", "test-" + os.urandom(12).hex())
TEACHER_KEY_ENV = "FACTORY_TEACHER_KEY"

import pytest  # noqa: E402

from tests.s3server import S3Server  # noqa: E402

# The S3 test server's endpoint, dummy keys and a spool folder are exported before any test runs, so
# every Ray, torchrun or subprocess started during the session reaches the store, whichever test
# started it first; the server process itself starts with the first test that asks for it.
_S3 = S3Server()
_S3.export(_S3.endpoint)
os.environ.setdefault("FACTORY_SPOOL_DIR", tempfile.mkdtemp(prefix="factory-spool-"))


# Tests that use these fixtures run on real parts (the llama.cpp teacher, a Ray cluster): end to end, so
# `slow` (`make test` runs them; `make test-fast`, the edit loop, leaves them out).
REAL_PARTS = {"teacher", "teacher_config", "ray_local", "ray_session", "ray_with_s3", "ray_head", "ray_cluster"}


def pytest_collection_modifyitems(items):
    for item in items:
        if REAL_PARTS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto) on loopback; its endpoint and dummy keys are exported."""
    srv = _S3.start()
    yield srv
    srv.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket: `s3://<name>`."""
    return s3_server.bucket()


@pytest.fixture(scope="session")
def teacher():
    """A started LocalTeacher with one replica; `.endpoints` (base URLs with /v1) and `.model`."""
    from factory.teacher.server import LocalTeacher

    with LocalTeacher(replicas=1) as t:
        yield t


@pytest.fixture(scope="session")
def teacher_config(teacher):
    """A TeacherConfig for the session teacher with short outputs (tests stay fast)."""
    return teacher.config(timeout_s=60,
                        sampling={"temperature": 0.0, "max_tokens": 32})
