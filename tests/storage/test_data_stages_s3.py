"""The data stages on object storage, against a real S3-compatible server on loopback (moto_server).

Each stage writes to s3:// (some read from it too, one mixes a local input with an s3 output) and
must give what the same stage gives on a local disk: the manifest done with the same counts, the
same rows or bytes, a rerun that skips finished work, shards that `datasets` loads from the
store, and a missing bucket or missing credentials as one FactoryError line naming the URL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest

from factory.core.errors import FactoryError
from factory.core.stage import StageDir, read_docs
from tests.ecosystem import loads_everywhere

ROOT = Path(__file__).parents[2]
EXE = Path(sys.executable).parent / "factory"
MISSING = "s3://no-such-bucket-7f3a"


# helpers --------------------------------------------------------------------------------------
def s3():
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    return fs


def files(url: str, pattern: str = "**") -> dict[str, bytes]:
    """Relative name -> bytes of every file under `url` matching `pattern` (no manifest, card)."""
    fs, root = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return {f[len(root) + 1:]: fs.cat_file(f) for f in sorted(fs.glob(f"{root}/{pattern}"))
            if fs.isfile(f) and not f.endswith(("manifest.json", "README.md"))}


def rows(url: str, pattern: str) -> dict[str, list[dict]]:
    """Rows of each parquet file under `url` matching `pattern`, by relative name."""
    return {k: pq.read_table(pa_buf(v)).to_pylist() for k, v in files(url, pattern).items()}


def pa_buf(b: bytes):
    import pyarrow as pa

    return pa.BufferReader(b)


def undated(rs: list[dict]) -> list[dict]:
    """Rows without meta.created_at (stamped at creation by stages that make rows)."""
    return [{**r, "meta": {**r["meta"], "created_at": None}} for r in rs]


def manifest(url: str) -> dict:
    return StageDir.read_manifest(url)


def write_stage(url: str, docs: list[dict], stage: str = "test", shards: int = 1) -> str:
    st = StageDir(url, stage, {"rows": len(docs), "shards": shards})
    for k in range(shards):
        st.write_docs(f"part-{k:05d}.parquet", docs[k::shards])
    st.finish()
    return url


def load_parquet(pattern: str, endpoint: str, cache: Path):
    """`datasets.load_dataset('parquet', data_files='s3://...')`; datasets' offline mode refuses
    every remote URL, so it is lifted for this call (the store is on loopback, no hub is asked)."""
    import datasets

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_HUB_OFFLINE", False)
        return datasets.load_dataset("parquet", data_files=pattern, split="train", cache_dir=str(cache),
                                     storage_options={"client_kwargs": {"endpoint_url": endpoint}})


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "RAY_ADDRESS": "", **(env or {})})


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    return s3_server.bucket("data")


def small_docs(n: int = 60, seed: int = 0) -> list[dict]:
    from tests.mix.conftest import docs

    return docs("web", n, "wiki", seed)


# seeds ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_seeds_cli_reads_and_writes_s3_like_local(s3_server, bucket, tmp_path):
    from factory.seeds import sources as seeds

    lines = [json.dumps({"text": f"seed number {i} about rivers and stones"}) for i in range(30)]
    lines[4], lines[9] = "not json", json.dumps({"other": 1})
    src = tmp_path / "s.jsonl"
    src.write_text("\n".join(lines) + "\n")
    s3().put_file(str(src), f"{bucket}/in/s.jsonl")
    cfg = tmp_path / "seeds.yaml"
    cfg.write_text(f"source: jsonl\npath: {bucket}/in/s.jsonl\nname: mine\n")
    out = f"{bucket}/seeds"
    r = cli("seeds", str(cfg), "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    local = seeds.run(seeds.SeedsConfig(source="jsonl", path=str(src), name="mine", out=str(tmp_path / "local")))
    m = manifest(out)
    assert m["status"] == "done" and m["counts"] == local["counts"] == {"in": 30, "out": 28}
    assert m["dropped"] == local["dropped"] == {"bad_json": 1, "missing_text": 1}
    got, want = rows(out, "**/*.parquet"), rows(str(tmp_path / "local"), "**/*.parquet")
    assert set(got) == set(want) == {"data/train-seeds.parquet", "rejected/seeds.parquet"}
    assert undated(got["data/train-seeds.parquet"]) == undated(want["data/train-seeds.parquet"])
    assert got["rejected/seeds.parquet"] == want["rejected/seeds.parquet"]
    ds = load_parquet(f"{out}/data/*.parquet", s3_server.endpoint, tmp_path / "hf")
    assert len(ds) == 28 and ds[0]["kind"] == "web" and ds[0]["source"] == "mine"
    loads_everywhere(out, 28, "other", s3_server.endpoint)  # a JSONL source that declares no licence

    # a rerun keeps the finished shard: one planted marker row survives it
    fs = s3()
    marker = pq.read_table(pa_buf(fs.cat_file(f"{out}/data/train-seeds.parquet"))).slice(0, 1)
    StageDir(out, "seeds", seeds.SeedsConfig(source="jsonl", path=f"{bucket}/in/s.jsonl", name="mine")).write_table(
        "data/train-seeds.parquet", marker)
    again = seeds.run(seeds.SeedsConfig(source="jsonl", path=f"{bucket}/in/s.jsonl", name="mine", out=out))
    assert again["status"] == "done" and read_docs(out).num_rows == 1


def test_curate_seeds_local_input_s3_output(bucket, tmp_path):
    from factory.seeds import curate as seedcurate
    from factory.seeds.sources import wiki_rows

    src = write_stage(str(tmp_path / "seeds"), wiki_rows(40, seed=2))
    cfg = seedcurate.SeedCurateConfig(n=20)
    m = seedcurate.run(cfg.model_copy(update={"inputs": src, "out": f"{bucket}/seeds_curated"}))
    local = seedcurate.run(cfg.model_copy(update={"inputs": src, "out": str(tmp_path / "curated")}))
    assert m["status"] == "done" and m["counts"] == local["counts"] and m["counts"]["kept"] == 20
    assert undated(read_docs(f"{bucket}/seeds_curated").to_pylist()) == undated(read_docs(str(tmp_path / "curated")).to_pylist())
    assert seedcurate.run(cfg.model_copy(update={"inputs": src, "out": f"{bucket}/seeds_curated"}))["updated_at"] == m["updated_at"]  # done: skipped


# tokenize and mix -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def token_inputs(tmp_path_factory) -> dict[str, str]:
    from tests.mix.conftest import docs

    root = tmp_path_factory.mktemp("tok_in")
    return {"seeds": write_stage(str(root / "seeds"), docs("web", 240, "wiki")),
            "curated": write_stage(str(root / "curated"), docs("synthetic", 160, "gen") + docs("rewrite", 90, "gen"))}


def tok_cfg(inputs: dict[str, str], out: str):
    from factory.mix.tokenize import TokenizeConfig

    return TokenizeConfig(sources={"web": {"path": inputs["seeds"]},
                                   "synthetic": {"path": inputs["curated"], "kinds": ["synthetic"]},
                                   "rewrite": {"path": inputs["curated"], "kinds": ["rewrite"]}},
                          tokenizer={"train": {"vocab_size": 400, "min_frequency": 2}}, out=out, shard_docs=100)


@pytest.fixture(scope="module")
def local_tokens(token_inputs, tmp_path_factory) -> str:
    from factory.mix.tokenize import run

    out = str(tmp_path_factory.mktemp("tok") / "tokens")
    run(tok_cfg(token_inputs, out))
    return out


def test_tokenize_local_inputs_to_s3_like_local(s3_server, bucket, token_inputs, local_tokens):
    import boto3

    from factory.mix.tokenize import run

    out = f"{bucket}/tokens"
    m = run(tok_cfg(token_inputs, out))
    local = manifest(local_tokens)
    assert m["status"] == "done" and m["counts"] == local["counts"] and m["sources"] == local["sources"]
    assert m["tokenizer"] == local["tokenizer"]
    got, want = files(out), files(local_tokens)
    assert set(got) == set(want) and len([k for k in got if k.endswith(".ds")]) == 6
    for name in got:
        if name.endswith(".metadata"):  # names the tokenizer it was made with: the store's copy
            head, rest = got[name].decode().split("\n", 1)
            assert head == f"{out}/tokenizer.json|2" and rest == want[name].decode().split("\n", 1)[1]
        else:
            assert got[name] == want[name], name

    # a rerun skips finished sources: a planted shard survives it
    fs, shard = s3(), f"{out}/web/web_00000_unshuffled.ds"
    fs.pipe_file(shard, b"planted")
    run(tok_cfg(token_inputs, out))
    assert fs.cat_file(shard) == b"planted"

    # another process removes a source's completion marker while this one holds a listing of the
    # folder: the rerun must ask the store, find the source unfinished and write it again
    assert f"{out[5:]}/web/source.json" in fs.ls(f"{out}/web")
    boto3.client("s3", endpoint_url=s3_server.endpoint).delete_object(Bucket=out[5:].split("/")[0],
                                                                      Key="tokens/web/source.json")
    again = run(tok_cfg(token_inputs, out))
    assert again["sources"] == local["sources"] and files(out) .keys() == got.keys()
    assert s3().cat_file(shard) == want["web/web_00000_unshuffled.ds"]


@pytest.mark.slow
def test_mix_plan_cli_on_s3_and_training_from_a_local_copy(bucket, token_inputs, local_tokens, tmp_path):
    from factory.mix.plan import plan
    from factory.mix.tokenize import run
    from train.loader import MixLoader

    data = f"{bucket}/mixdata"
    run(tok_cfg(token_inputs, data))
    r = cli("mix", "plan", "mixes/phi4.yaml", "--data", data, "--fit", "warn", "--out", f"{data}/plans/phi4.json")
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(s3().cat_file(f"{data}/plans/phi4.json"))
    want = plan(ROOT / "mixes/phi4.yaml", local_tokens, fit="warn")
    assert got["tokenizer"] == f"{data}/tokenizer.json"
    for ph in got["phases"]:
        assert all(s["path"] == f"{data}/{s['name']}" for s in ph["sources"])

    def numbers(p):
        return {**p, "tokenizer": None, "phases": [{**ph, "sources": [{**s, "path": None} for s in ph["sources"]]}
                                                   for ph in p["phases"]]}

    assert numbers(got) == numbers(want)
    # the trainer memory-maps shards: it trains from a local copy of the folder
    copy = tmp_path / "copy"
    s3().get(f"{data}/", str(copy), recursive=True)
    p = plan(ROOT / "mixes/phi4.yaml", copy, out=tmp_path / "plan.json", fit="warn")
    assert numbers(p) == numbers(want)
    assert len(list(MixLoader(p, 0, 1, 1))) == p["total_tokens"] // p["seq_len"]


# curate -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from tests.curate.conftest import build

    return build(tmp_path_factory.mktemp("planted"))


def curate_cfg(inputs: str, reference: str, bench: str, out: str, **executor):
    from factory.curate import load

    cfg = load(None, inputs=[inputs], out=out)
    cfg.dedup.reference = [reference]
    cfg.decont.benchmarks = [bench]
    cfg.dedup.minhash.num_buckets, cfg.dedup.minhash.hashes_per_bucket = 16, 3
    for k, v in {"tasks": 2, **executor}.items():
        setattr(cfg.executor, k, v)
    return cfg


@pytest.fixture(scope="module")
def local_curated(planted, tmp_path_factory) -> tuple[dict, str]:
    from factory.curate import run

    out = str(tmp_path_factory.mktemp("curated") / "local")
    return run(curate_cfg(planted.inputs, planted.reference, planted.bench, out)), out


def curated(url: str) -> dict:
    return {"kept": rows(url, "data/*.parquet"), "rejected": rows(url, "rejected/*.parquet")}


@pytest.mark.slow
def test_curate_s3_inputs_to_s3_like_local(s3_server, bucket, planted, local_curated, tmp_path):
    from factory.curate import run

    fs = s3()
    for name, local in (("gen", planted.inputs), ("ref", planted.reference)):
        fs.put(local, f"{bucket}/cur_in/{name}", recursive=True)
    fs.put_file(planted.bench, f"{bucket}/cur_in/bench/kb/data.jsonl")
    out = f"{bucket}/curated"
    cfg = curate_cfg(f"{bucket}/cur_in/gen", f"{bucket}/cur_in/ref", f"{bucket}/cur_in/bench", out)
    m = run(cfg)
    want, local_out = local_curated
    assert m["status"] == "done" and m["counts"] == want["counts"] and m["dropped"] == want["dropped"]
    assert curated(out) == curated(local_out)
    assert not s3().exists(f"{out}/_work/filtered")  # intermediates cleaned on the store too
    loads_everywhere(out, m["counts"]["kept"], "cc-by-sa-3.0", s3_server.endpoint)  # the planted inputs' licence
    assert run(cfg)["updated_at"] == m["updated_at"]  # finished: a rerun skips all work


@pytest.mark.slow
def test_curate_to_s3_keeps_intermediates_off_the_store(bucket, planted, local_curated, ray_with_s3, tmp_path,
                                                         monkeypatch):
    """One machine onto a store: intermediates live in this machine's scratch (a failed run resumes
    from it, finished ranks are not redone), the store gets only the outputs; `executor.work_dir`
    puts them on a URL every node reaches, cleaned after success but for the logs."""
    from ray import cloudpickle

    from factory.curate import run
    from tests.curate import faults

    monkeypatch.setenv("FACTORY_SPOOL_DIR", str(tmp_path / "spool"))
    want, local_out = local_curated
    out = f"{bucket}/curated_scratch"
    fail = lambda rank: lambda jobs: next(j for j in jobs if j.name == "filter").steps.insert(1, faults.FailRank(rank))  # noqa: E731
    cloudpickle.register_pickle_by_value(faults)
    try:
        with pytest.raises(FactoryError, match="left 1 of 2 tasks unfinished"):
            run(curate_cfg(planted.inputs, planted.reference, planted.bench, out, ray=True), inject=fail(1))
        done = list((tmp_path / "spool" / "curate").glob("*/logs/filter/completions/00000"))
        assert len(done) == 1 and not s3().exists(f"{out}/_work")
        before = done[0].stat().st_mtime_ns
        again = curate_cfg(planted.inputs, planted.reference, planted.bench, out, ray=True)
        again.keep_work = True
        m = run(again, inject=fail(-1))
    finally:
        cloudpickle.unregister_pickle_by_value(faults)
    assert m["status"] == "done" and m["work"] == "this machine's scratch" and m["counts"] == want["counts"]
    assert done[0].stat().st_mtime_ns == before  # rank 0 was not run again
    assert curated(out) == curated(local_out) and not s3().exists(f"{out}/_work")
    run(curate_cfg(planted.inputs, planted.reference, planted.bench, f"{bucket}/curated_scratch2"))
    assert list((tmp_path / "spool" / "curate").iterdir()) == [done[0].parents[3]]  # removed after success

    shared = f"{bucket}/shared-work/run1"
    m = run(curate_cfg(planted.inputs, planted.reference, planted.bench, f"{bucket}/curated_shared", work_dir=shared))
    assert m["work"] == shared and curated(f"{bucket}/curated_shared") == curated(local_out)
    assert {f.split("/")[3] for f in s3().find(shared)} == {"logs"}


@pytest.fixture(scope="module")
def ray_with_s3(s3_server):
    """A local Ray started after the S3 server, so its workers inherit the endpoint and keys."""
    import ray

    from factory.curate.raysession import init

    if ray.is_initialized():
        ray.shutdown()  # started before the server: its workers would not reach it
    init(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_curate_on_ray_local_inputs_to_s3_like_local(bucket, planted, local_curated, ray_with_s3):
    from factory.curate import run

    out = f"{bucket}/curated_ray"
    m = run(curate_cfg(planted.inputs, planted.reference, planted.bench, out, ray=True))
    want, local_out = local_curated
    assert m["status"] == "done" and m["executor"] == "ray" and m["counts"] == want["counts"]
    assert curated(out) == curated(local_out)


# benchmarks -------------------------------------------------------------------------------------
def test_benchmarks_built_on_s3_like_local(bucket, tmp_path):
    from factory.evaluate import sets as evalsets
    from factory.seeds.sources import load_wiki_summaries

    recs = load_wiki_summaries()[:400]
    made = evalsets.build(f"{bucket}/bench", holdout_titles=[r["title"] for r in recs[:20]], n=20, records=recs)
    local = evalsets.build(str(tmp_path / "bench"), holdout_titles=[r["title"] for r in recs[:20]], n=20, records=recs)
    assert made["titles"] == local["titles"] and set(made["dirs"]) == set(local["dirs"]) >= {"wiki_mc", "wiki_val"}
    assert all(d == f"{bucket}/bench/{k}" for k, d in made["dirs"].items())
    assert files(f"{bucket}/bench") == files(str(tmp_path / "bench"))


# errors -----------------------------------------------------------------------------------------
def _seeds(out):
    from factory.seeds import sources as seeds

    seeds.run(seeds.SeedsConfig(n=3, out=out))


def _seedcurate(out, src):
    from factory.seeds import curate as seedcurate

    seedcurate.run(seedcurate.SeedCurateConfig(n=2, inputs=src, out=out))


def _tokenize(out, src):
    from factory.mix.tokenize import TokenizeConfig, run

    run(TokenizeConfig(sources={"web": {"path": src}}, tokenizer={"train": {"vocab_size": 300}}, out=out))


def _curate(out, src):
    from factory.curate import load, run

    run(load(None, inputs=[src], out=out))


def _mix(out, tokens):
    from factory.mix.plan import plan

    plan(ROOT / "mixes/phi4.yaml", tokens, out=out)


def _bench(out):
    from factory.evaluate import sets as evalsets

    evalsets.build(out, n=5, benches=["arith_mc"], records=[])


@pytest.mark.parametrize("stage", ["seeds", "seedcurate", "tokenize", "curate", "mix", "bench"])
def test_missing_output_bucket_is_one_error_naming_the_url(s3_server, stage, tmp_path, local_tokens):
    import boto3

    src = write_stage(str(tmp_path / "src"), small_docs(12))
    out = f"{MISSING}/{stage}/out"
    call = {"seeds": lambda: _seeds(out), "seedcurate": lambda: _seedcurate(out, src),
            "tokenize": lambda: _tokenize(out, src), "curate": lambda: _curate(out, src),
            "mix": lambda: _mix(f"{out}/plan.json", local_tokens), "bench": lambda: _bench(out)}[stage]
    with pytest.raises(FactoryError) as e:
        call()
    msg = str(e.value)
    assert out in msg and "does not exist" in msg and "fix:" in msg and "\n" not in msg
    with pytest.raises(Exception):  # never created as a side effect
        boto3.client("s3", endpoint_url=s3_server.endpoint).head_bucket(Bucket=MISSING[5:])


def test_missing_input_bucket_names_the_input(s3_server, bucket, tmp_path):
    src = f"{MISSING}/seeds"
    with pytest.raises(FactoryError) as e:
        _tokenize(f"{bucket}/tok_missing_in", src)
    assert src in str(e.value) and e.value.field == "sources.web.path"
    with pytest.raises(FactoryError) as e:
        _curate(f"{bucket}/cur_missing_in", src)
    assert src in str(e.value) and e.value.field == "inputs"


@pytest.mark.slow
def test_cli_storage_errors_are_one_line(bucket, local_tokens, tmp_path):
    out = f"{MISSING}/plan.json"
    r = cli("mix", "plan", "mixes/phi4.yaml", "--data", local_tokens, "--out", out)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert r.stderr.startswith("error: ") and out in r.stderr and "does not exist" in r.stderr
    nocreds = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no"),
               "AWS_CONFIG_FILE": str(tmp_path / "no"), "AWS_EC2_METADATA_DISABLED": "true"}
    out = f"{bucket}/nocreds"
    r = cli("seeds", "seeds/wiki.yaml", "--out", out, "--n", "3", env=nocreds)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert out in r.stderr and "credentials" in r.stderr
