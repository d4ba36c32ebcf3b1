"""Generation on a real 3-node Ray cluster (a head and two worker raylets on loopback) with every
output and the request cache on a real S3-compatible server, and one node lost for good mid-run.

Each node has a spool folder of its own (a node's local disk), so a killed node takes its
unflushed cache records with it, as on a real cluster. The teacher is the real llama.cpp server
behind a latency injector, which also counts how often each distinct request reached the teacher.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import yaml
from gen_helpers import recipe, request_keys, seed_rows

from factory.core.stage import StageDir, read_docs
from factory.teacher.cache import SPOOL_ENV
from tests.cluster.nodes import Cluster
from tests.proxy import FaultProxy

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-c", "from factory.cli import main; main()"]
FLUSH_EVERY, CONCURRENCY = 3, 2


@pytest.fixture(scope="module")
def cluster(s3_server, tmp_path_factory):
    spools = {n: {SPOOL_ENV: str(tmp_path_factory.mktemp(f"spool-{n}"))} for n in ("head", "a", "b")}
    with Cluster(("a", "b"), node_env=spools) as c:
        c.start(num_cpus=1)
        yield c


def gen_config(tmp_path, bucket: str, name: str, url: str, model: str, n_seeds: int = 24) -> str:
    seeds = tmp_path / "seeds.jsonl"
    if not seeds.exists():
        seeds.write_text("".join(json.dumps(r) + "\n" for r in seed_rows(n_seeds)))
    cfg = {"seeds": str(seeds), "out": f"{bucket}/{name}", "recipes": [recipe("tiny_word")], "shards": 6, "workers": 3,
           "concurrency": CONCURRENCY, "worker_cpus": 0.25, "cache_flush_every": FLUSH_EVERY, "cache_flush_s": 60,
           "teacher": {"endpoints": [{"base_url": url, "model": model, "api_key_env": "FACTORY_TEACHER_KEY"}], "timeout_s": 60,
                       "sampling": {"temperature": 0.0}}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def generate(cluster: Cluster, config: str) -> subprocess.Popen:
    """`factory generate CONFIG --address HEAD` from a client outside the cluster, as a user runs it."""
    return subprocess.Popen([*CLI, "generate", config, "--address", cluster.address], env={**os.environ, **cluster.env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def node_ids(cluster: Cluster) -> dict[str, str]:
    """Node name -> Ray node id, by the custom resource each node carries."""
    out = {}
    for n in cluster.gcs_nodes():
        for name in ("head", "a", "b"):
            if cluster.resource(name) in (n.get("resources") or {}) and n.get("state") == "ALIVE":
                out[name] = n["node_id"]
    return out


def test_generate_across_nodes_to_s3_and_survive_a_lost_node(cluster, teacher, s3_bucket, tmp_path):
    ids = node_ids(cluster)
    with FaultProxy(teacher.endpoints[0], delay_s=0.25) as px:
        base = px.base_url
        # undisturbed: the shards spread over the nodes, each named in the manifest
        p = generate(cluster, gen_config(tmp_path, s3_bucket, "calm", base, teacher.model))
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]
        calm = StageDir.read_manifest(f"{s3_bucket}/calm")
        assert calm["status"] == "done" and calm["counts"]["docs"] == 24
        ran_on = {nid: v["shards"] for nid, v in calm["nodes"].items()}
        assert sorted(s for v in ran_on.values() for s in v) == list(range(6))
        assert len(ran_on) >= 2 and set(ran_on) <= set(ids.values())
        calm_calls = sum(px.forwarded.values())
        assert calm_calls == 24

        # the same work again, and node b lost for good while it holds a shard
        px.forwarded.clear()
        t0 = time.time()
        p = generate(cluster, gen_config(tmp_path, s3_bucket, "storm", base, teacher.model))
        deadline = time.time() + 300
        while sum(px.forwarded.values()) < 8 and time.time() < deadline and p.poll() is None:
            time.sleep(0.05)
        on_b = [q for q in cluster.nodes["b"].processes() if "GenWorker" in " ".join(q.cmdline())]
        assert p.poll() is None and on_b, "node b held no generation worker when it was to be lost"
        cluster.kill_node("b")
        out, _ = p.communicate(timeout=600)
        storm_wall = time.time() - t0
        assert p.returncode == 0, out[-3000:]
    storm = StageDir.read_manifest(f"{s3_bucket}/storm")
    assert storm["status"] == "done"
    # zero lost, zero duplicated: the same requests made documents as in the undisturbed run
    keys = request_keys(f"{s3_bucket}/storm")
    assert keys == request_keys(f"{s3_bucket}/calm") and len(set(keys)) == 24
    assert len(set(read_docs(f"{s3_bucket}/storm").column("id").to_pylist())) == 24
    # repaid: requests the teacher answered twice, at most two cache windows plus the requests in flight
    repaid = sum(n - 1 for n in px.forwarded.values())
    assert repaid <= 2 * FLUSH_EVERY - 1 + CONCURRENCY, px.forwarded
    assert ids["b"] not in {nid for nid, v in storm["nodes"].items() if set(v["shards"]) - set(ran_on.get(ids["b"], []))}
    print(f"node loss: repaid {repaid} of {sum(px.forwarded.values())} calls; wall {storm_wall:.1f} s")
    cluster.add_node("b")  # the next test finds three nodes again


def snapshot_url(url: str) -> dict:
    """What a curation run decides, read from any URL: kept rows per shard, rejected rows per file."""
    import fsspec
    import pyarrow.parquet as pq

    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()

    def rows(pattern: str) -> dict:
        return {f.rsplit("/", 1)[1]: pq.read_table(fs.open(f, "rb")).to_pylist() for f in sorted(fs.glob(f"{root}/{pattern}"))}
    return {"kept": rows("data/*.parquet"), "rejected": rows("rejected/*.parquet")}


def test_curate_across_nodes_to_s3_and_survive_a_lost_node(cluster, s3_bucket, tmp_path):
    """Curation on the Ray pool over the three nodes, reading and writing S3; node b is lost for
    good while one of its workers runs ranks: kept and rejected equal an undisturbed local run's."""
    import threading

    import fsspec
    import ray
    from ray import cloudpickle

    from factory.cluster import init_ray
    from factory.curate import load, run
    from tests.cluster.conftest import client_env
    from tests.curate import faults
    from tests.curate.conftest import build

    planted = build(tmp_path / "corpus")
    fs = fsspec.filesystem("s3")
    for name, src in (("gen", planted.inputs), ("ref", planted.reference)):
        fs.put(src, f"{s3_bucket}/in/{name}", recursive=True)

    def cfg(inputs, ref, out, **executor):
        c = load(None, inputs=[inputs], out=out)
        c.dedup.reference = [ref]
        c.decont.benchmarks = [planted.bench]
        c.dedup.minhash.num_buckets, c.dedup.minhash.hashes_per_bucket = 16, 3
        for k, v in {"tasks": 3, **executor}.items():
            setattr(c.executor, k, v)
        return c

    run(cfg(planted.inputs, planted.reference, str(tmp_path / "local"), workers=2))
    expect = snapshot_url(str(tmp_path / "local"))
    lost = threading.Event()

    def kill_b_once_it_works() -> None:
        deadline = time.time() + 240
        while time.time() < deadline and "b" in cluster.nodes:
            if any("CurationWorker" in " ".join(q.cmdline()) for q in cluster.nodes["b"].processes()):
                time.sleep(1.0)
                cluster.kill_node("b")
                lost.set()
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_b_once_it_works, daemon=True)

    def inject(jobs):
        next(j for j in jobs if j.name == "filter").steps.insert(1, faults.Slow(0.03))
        killer.start()

    if ray.is_initialized():
        ray.shutdown()
    cloudpickle.register_pickle_by_value(faults)
    try:
        with client_env(cluster.env):
            init_ray(cluster.address)
            out = f"{s3_bucket}/curated"
            m = run(cfg(f"{s3_bucket}/in/gen", f"{s3_bucket}/in/ref", out, ray=True, workers=3), inject=inject)
    finally:
        cloudpickle.unregister_pickle_by_value(faults)
        ray.shutdown()
        killer.join(5)
    assert lost.is_set(), "node b never ran a curation worker"
    assert m["status"] == "done" and StageDir.read_manifest(out)["status"] == "done"
    assert snapshot_url(out) == expect
    cluster.add_node("b")
