"""Real Ray on loopback for the cluster tests: a single head (`ray_head`, dashboard and Job API on)
and a head plus two worker nodes (`ray_cluster`), token auth on; the nodes themselves live in
`nodes.py`.

Every port is a free one and every temp dir private, so these never collide with another Ray on the
machine, and `ray.init()` elsewhere never finds them. The token lives in a temp file named by
RAY_AUTH_TOKEN_PATH (the user's ~/.ray is left alone). At the end the processes, found by PID, by the
private temp dirs and the GCS port and followed down to their children, get SIGTERM, then SIGKILL:
`ray stop` would also stop every other Ray of this user on the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil

import pytest

from .nodes import BIN, Cluster, RayHead, free_ports, start_head  # noqa: F401  (tests import these from here)

_CLIENT_KEYS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "PATH")
_CLEARED = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")


@contextlib.contextmanager
def client_env(env: dict):
    """This process talks to a cluster the way a user's shell would: its auth mode and token, and no
    other cluster's address; os.environ is restored afterwards."""
    from factory.cluster.connect import _refresh_ray_auth

    saved = {k: os.environ.get(k) for k in _CLIENT_KEYS + _CLEARED}
    os.environ.update({k: env[k] for k in _CLIENT_KEYS})
    for k in _CLEARED:
        os.environ.pop(k, None)
    _refresh_ray_auth()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _refresh_ray_auth()


@pytest.fixture(scope="session")
def ray_head(request):
    """A running head; the finalizer always stops it and removes its temp dir."""
    head = start_head()

    def fin():
        head.stop()
        shutil.rmtree(head.temp_dir, ignore_errors=True)

    request.addfinalizer(fin)
    return head


@pytest.fixture
def head_env(ray_head):
    """This process talks to the head the way a user's shell would: the same auth mode and token."""
    with client_env(ray_head.env):
        yield ray_head


@pytest.fixture(scope="module")
def ray_cluster():
    """A head + nodes "a" and "b" (1 CPU, 128 MiB object store each; resources `node_head`, `node_a`,
    `node_b`) for the tests of one module; a killed node is declared dead within a few seconds.
    Always stopped. A test that kills a node puts a new one of the same name back
    (`add_node("b")`) or comes last in its module."""
    with Cluster(("a", "b")) as cluster:
        cluster.start(num_cpus=1)
        yield cluster


@pytest.fixture(scope="module")
def cluster_driver(ray_cluster):
    """This process is a driver of `ray_cluster` (through `factory.cluster.init_ray`), disconnected after."""
    import ray

    from factory.cluster import init_ray

    if ray.is_initialized():  # a driver of some other Ray: init_ray would keep it
        ray.shutdown()
    with client_env(ray_cluster.env):
        init_ray(ray_cluster.address)
        try:
            yield ray_cluster
        finally:
            ray.shutdown()
