"""A head and two worker nodes on one machine, each its own raylet: all alive to a driver, work pinned
to a node by its resource runs there, and a killed node is declared dead while work goes on."""

from __future__ import annotations

import os
import time

import pytest

pytestmark = pytest.mark.slow
MARK = "FACTORY_TEST_NODE_ENV"


@pytest.fixture(scope="module", autouse=True)
def exported():
    """A variable exported before the cluster starts (as AWS_* keys would be): autouse, so it comes
    before the module's cluster."""
    saved = os.environ.get(MARK)
    os.environ[MARK] = "reaches-every-node"
    yield
    if saved is None:
        os.environ.pop(MARK, None)
    else:
        os.environ[MARK] = saved


def node_ids(cluster, ray) -> dict[str, str]:
    """name -> node id of the alive nodes, found by their custom resource."""
    out = {}
    for n in ray.nodes():
        for name in ("head", *cluster.worker_names):
            if n["Alive"] and cluster.resource(name) in n["Resources"]:
                out[name] = n["NodeID"]
    return out


def test_three_alive_nodes_and_work_pinned_to_each(cluster_driver):
    import ray

    cluster = cluster_driver
    alive = [n for n in ray.nodes() if n["Alive"]]
    assert len(alive) == 3 and ray.cluster_resources()["CPU"] == 3
    ids = node_ids(cluster, ray)
    assert sorted(ids) == ["a", "b", "head"] and len(set(ids.values())) == 3
    assert ray.get_runtime_context().get_node_id() == ids["head"]  # the driver sits on the head

    @ray.remote(num_cpus=0.1)
    def where() -> tuple[str, str | None]:
        return ray.get_runtime_context().get_node_id(), os.environ.get(MARK)

    for name in ("b", "a", "head"):
        node, mark = ray.get(where.options(resources={cluster.resource(name): 0.01}).remote(), timeout=60)
        assert node == ids[name], name
        assert mark == "reaches-every-node"  # the caller's environment reaches each node's workers


def test_a_killed_node_is_declared_dead_and_work_goes_on(cluster_driver):
    import psutil
    import ray

    cluster = cluster_driver
    ids = node_ids(cluster, ray)

    @ray.remote(num_cpus=0.1)
    class Pinned:
        def pid(self) -> tuple[str, int]:
            return ray.get_runtime_context().get_node_id(), os.getpid()

    actor = Pinned.options(resources={"node_b": 0.01}, max_restarts=0).remote()
    node, pid = ray.get(actor.pid.remote(), timeout=60)
    assert node == ids["b"]

    t0 = time.monotonic()
    cluster.kill_node("b")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # workers too
    while True:
        b = next(n for n in ray.nodes() if n["NodeID"] == ids["b"])
        if not b["Alive"]:
            break
        assert time.monotonic() - t0 < 20, "node b still alive 20 s after its raylet was killed"
        time.sleep(0.1)
    detected_s = time.monotonic() - t0
    print(f"node b declared dead {detected_s:.1f} s after the kill")
    assert detected_s < 10  # health checks every 1 s, dead after 3 failures

    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.pid.remote(), timeout=60)

    @ray.remote(num_cpus=1)
    def where() -> str:
        return ray.get_runtime_context().get_node_id()

    survivors = {ids["head"], ids["a"]}
    assert set(ray.get([where.remote() for _ in range(4)], timeout=120)) <= survivors
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2 and ray.cluster_resources()["CPU"] == 2

    # a new node under the old name takes the lost one's place (and the module's cluster is whole again)
    cluster.add_node("b")
    new_b = node_ids(cluster, ray)["b"]
    assert new_b != ids["b"]
    assert ray.get(where.options(num_cpus=0.1, resources={"node_b": 0.01}).remote(), timeout=60) == new_b
