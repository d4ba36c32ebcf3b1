"""Generate and curate through a flaky store: the S3 test server behind a proxy that answers some
requests with 503 SlowDown. Both stages finish as they would on a healthy store, nothing lost and
nothing written twice. Each stage runs as a user runs it (the CLI), so its Ray workers and datatrove
processes reach the store through the proxy too."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import fsspec
import pytest
import yaml
from gen_helpers import recipe, request_keys, seed_rows

from factory.core.stage import StageDir, read_docs

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-c", "from factory.cli import main; main()"]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600, env=env)


def test_generate_through_a_flaky_store(teacher, flaky_s3, s3_bucket, tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(r) + "\n" for r in seed_rows(8)))
    out = f"{s3_bucket}/gen"
    cfg = tmp_path / "gen.yaml"
    cfg.write_text(yaml.safe_dump({
        "seeds": str(seeds), "out": out, "recipes": [recipe("tiny_word")], "shards": 4, "workers": 2, "concurrency": 2,
        "cache_flush_every": 2, "teacher": {"endpoints": [{"base_url": teacher.endpoints[0], "model": teacher.model,
                                                                          "api_key_env": teacher.api_key_env}],
                                            "timeout_s": 60, "sampling": {"temperature": 0.0}}}))
    flaky_s3.set(fail_every=3, status=503)
    r = cli("generate", str(cfg))
    assert r.returncode == 0, r.stderr[-3000:]
    assert flaky_s3.injected > 0
    flaky_s3.clear()
    assert StageDir.read_manifest(out)["status"] == "done"
    keys = request_keys(out)
    assert keys == sorted((row["meta"]["seed_id"], "tiny_word", 0) for row in seed_rows(8))
    ids = read_docs(out).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 8
    # every completion is in the cache on the store once per key: a rerun pays for nothing
    fs, root = fsspec.core.url_to_fs(out)
    fs.invalidate_cache()
    for shard in fs.glob(f"{root}/data/train-shard-*.parquet"):
        fs.rm(shard)
    again = cli("generate", str(cfg))
    assert again.returncode == 0, again.stderr[-3000:]
    assert re.search(r"requests \(this run\)\s*│\s*0\s", again.stdout + again.stderr)
    m = StageDir.read_manifest(out)
    assert m["this_run"]["requests"] == 0 and m["this_run"]["cache_hits"] == 8 and request_keys(out) == keys


def test_curate_through_a_flaky_store(flaky_s3, s3_bucket, tmp_path):
    import pyarrow.parquet as pq

    from tests.curate.conftest import build

    planted = build(tmp_path / "corpus")
    fs = fsspec.filesystem("s3")
    fs.put(planted.inputs, f"{s3_bucket}/in/gen", recursive=True)
    cfg = tmp_path / "curate.yaml"
    cfg.write_text("executor: {tasks: 2, workers: 1}\ndedup:\n  minhash: {num_buckets: 8, hashes_per_bucket: 3}\n")

    def curate(inputs: str, out: str) -> None:
        r = cli("curate", str(cfg), "--in", inputs, "--out", out, "--reference", planted.reference,
                "--bench", planted.bench)
        assert r.returncode == 0, r.stderr[-3000:]

    curate(planted.inputs, str(tmp_path / "local"))
    flaky_s3.set(fail_every=15, status=503)
    curate(f"{s3_bucket}/in/gen", f"{s3_bucket}/curated")
    assert flaky_s3.injected > 0
    flaky_s3.clear()

    def rows(url: str) -> dict:
        f, root = fsspec.core.url_to_fs(url)
        f.invalidate_cache()
        return {p.rsplit("/", 1)[1]: pq.read_table(f.open(p, "rb")).to_pylist()
                for p in sorted(f.glob(f"{root}/data/*.parquet") + f.glob(f"{root}/rejected/*.parquet"))}

    assert StageDir.read_manifest(f"{s3_bucket}/curated")["status"] == "done"
    assert rows(f"{s3_bucket}/curated") == rows(str(tmp_path / "local"))


def test_more_attempts_from_the_environment_outlast_a_run_of_500s(flaky_s3, s3_bucket, monkeypatch):
    """The guide's advice for flaky stores (docs/guide/cluster.md): botocore gives up on 5 InternalErrors
    in a row (s3fs does not retry them), and AWS_MAX_ATTEMPTS / AWS_RETRY_MODE from the environment
    outlast them."""
    import botocore.retries.standard
    import botocore.retryhandler
    from s3fs import S3FileSystem

    # what is under test is how many attempts each mode makes, not botocore's jittered waits between them
    # (up to 15 s, then 31 s, of sleeping): both modes wait 10 ms here (checked on botocore 1.43)
    monkeypatch.setattr(botocore.retryhandler, "delay_exponential", lambda *a, **kw: 0.01)
    monkeypatch.setattr(botocore.retries.standard.ExponentialBackoff, "delay_amount", lambda self, ctx: 0.01)
    fsspec.filesystem("s3").pipe(f"{s3_bucket}/k", b"x")
    flaky_s3.set(fail_count=5, status=500, methods={"GET"})
    S3FileSystem.clear_instance_cache()
    with pytest.raises(OSError):
        fsspec.filesystem("s3").cat_file(f"{s3_bucket}/k")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "8")
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    flaky_s3.set(fail_count=5, status=500, methods={"GET"})
    S3FileSystem.clear_instance_cache()
    assert fsspec.filesystem("s3").cat_file(f"{s3_bucket}/k") == b"x"
    S3FileSystem.clear_instance_cache()


def test_an_unreachable_store_is_one_line(tmp_path):
    env = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:1"}
    r = subprocess.run([*CLI, "seeds", "seeds/wiki.yaml", "--out", "s3://no-store-here/seeds"], capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 2 and r.stderr.startswith("error: s3://no-store-here/seeds") and "cannot reach" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
