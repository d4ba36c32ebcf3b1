"""Training on object storage, against a real S3-compatible server on loopback (moto_server).

A run with run_dir=s3://... writes its DCP checkpoints, HF export, config, run.json and metrics
there; killed mid-run and started again with every local folder deleted, it resumes from the store
alone and reproduces the uninterrupted run bitwise. Bad stores are one clear line, not a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import yaml
from typer.testing import CliRunner

from tests.train.conftest import hold_after_checkpoint, tiny_config, tiny_plan  # noqa: F401 - tiny_plan is a fixture
from train import checkpoint, launch, storage
from train.metrics import read


def losses(run_dir) -> dict[int, tuple[float, float]]:
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in read(run_dir) if "loss" in r}


def plan_config(run_dir, plan, **over) -> dict:
    """12 steps of the tiny plan (real .ds shards and tokenizer), checkpoints every 4, keep 2."""
    return tiny_config(run_dir, data={"source": "plan", "plan": str(plan)},
                       **{"train.steps": 12, "model.vocab_size": None, "eval.batches": 1}, **over)


def bench(tmp_path):
    p = tmp_path / "mc.jsonl"
    p.write_text("".join(json.dumps({"question": q, "choices": ["cat", "tree", "river"], "answer": a}) + "\n"
                         for q, a in (("the small", 0), ("a big red", 1), ("the old", 2), ("then a quick", 0))))
    return p


@pytest.mark.slow
def test_killed_run_resumes_from_the_store_alone_bitwise(s3_bucket, tiny_plan, tmp_path):  # noqa: F811
    ref = launch.run(plan_config(tmp_path / "ref", tiny_plan), nproc=2, echo=None)  # uninterrupted, local disk

    url, scratch = f"{s3_bucket}/runs/a", tmp_path / "scratch"
    launch.prepare(plan_config(url, tiny_plan, scratch_dir=str(scratch)))
    proc = subprocess.Popen(launch.torchrun_cmd(scratch / "config.yaml", 2), cwd=launch.REPO_ROOT,
                            env=hold_after_checkpoint(tmp_path / "hold", 4), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while checkpoint.latest(f"{url}/checkpoints") is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # what the store holds after the crash: a checkpoint to resume from and the progress up to it
    last = checkpoint.latest(f"{url}/checkpoints")
    assert last and last.endswith("step_0000004"), last
    assert json.loads(storage.read_text(f"{url}/run.json"))["status"] == "running", "finished before the kill"
    at = int(last[-7:])
    assert set(range(1, at + 1)) <= set(losses(url))

    shutil.rmtree(scratch)  # a fresh machine: nothing of the run on local disk
    out = launch.run(plan_config(url, tiny_plan, scratch_dir=str(tmp_path / "fresh")), nproc=2, echo=None)
    assert out == url
    s = json.loads(storage.read_text(f"{url}/run.json"))
    assert s["status"] == "done" and s["resumed_from"] == last
    assert losses(url) == losses(ref)  # bitwise: loss and grad norm of every step
    assert s["val_loss"] == json.loads((ref / "run.json").read_text())["val_loss"]
    assert storage.read_bytes(f"{url}/hf/model.safetensors") == (ref / "hf" / "model.safetensors").read_bytes()
    steps = [u.rsplit("/", 1)[-1] for u in storage.glob(f"{url}/checkpoints/step_*")]
    assert steps == ["step_0000008", "step_0000012"]  # keep=2, nothing half-written left behind
    assert storage.exists(f"{url}/checkpoints/step_0000012/meta.json")
    for name in ("config.yaml", "hf/config.json", "hf/tokenizer.json", "train.log"):
        assert storage.exists(f"{url}/{name}"), name
    assert f"resumed from {last}" in storage.read_text(f"{url}/train.log")
    # a checkpoint folder without meta.json is never picked
    storage.write_bytes(f"{url}/checkpoints/step_0000099/__0_0.distcp", b"partial")
    assert checkpoint.latest(f"{url}/checkpoints") == f"{url}/checkpoints/step_0000012"

    # `factory eval` reads the export straight from the store and writes eval.json next to it
    from factory.cli import app
    from train.eval import evaluate
    from train.model import load_for_eval

    folder = tmp_path / "mc_folder"  # a benchmark folder on the store as well
    folder.mkdir()
    (folder / "benchmark.yaml").write_text(yaml.safe_dump({"name": "mc_store", "type": "mc_loglik", "prompt": "{question}"}))
    shutil.copy(bench(tmp_path), folder / "data.jsonl")
    storage.put_dir(folder, f"{s3_bucket}/benchmarks/mc_store")
    res = CliRunner().invoke(app, ["eval", url, "--bench", str(bench(tmp_path)), "--bench", f"{s3_bucket}/benchmarks/mc_store"])
    assert res.exit_code == 0, res.output
    got = json.loads(storage.read_text(f"{url}/eval.json"))
    model, tok = load_for_eval(ref)
    want = evaluate(model, tok, [str(bench(tmp_path)), str(folder)])
    for name in ("mc", "mc_store"):
        assert got[name]["score"] == want[name]["score"] and got[name]["n"] == 4


@pytest.mark.slow
def test_cli_trains_onto_the_store(s3_bucket, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tmp_path / "unused", **{"checkpoint.every": 0, "train.steps": 3})))
    url = f"{s3_bucket}/cli/"
    from factory.cli import app

    res = CliRunner().invoke(app, ["train", str(cfg), "--nproc", "1", "--set", f"run_dir={url}"])
    assert res.exit_code == 0, res.output
    assert "training run" in res.output and url.rstrip("/") in res.output
    assert sorted(losses(url.rstrip("/"))) == [1, 2, 3]
    assert checkpoint.latest(f"{url}checkpoints").endswith("step_0000003")
    assert not (tmp_path / "unused").exists()  # nothing of the run went to the config's local run_dir
    scratch = storage.scratch(url.rstrip("/"))  # the default local folder: the log and config, no model
    assert sorted(p.name for p in scratch.iterdir()) == ["config.yaml", "metrics.jsonl", "train.log"]
    shutil.rmtree(scratch)


def test_missing_bucket_is_one_clear_line(s3_server, tmp_path):
    from factory.cli import app
    from factory.core.errors import FactoryError

    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tmp_path / "run")))
    url = "s3://no-such-bucket-here/run"
    res = CliRunner().invoke(app, ["train", str(cfg), "--set", f"run_dir={url}"])
    e = res.exception
    assert isinstance(e, FactoryError), res.output  # printed as one line by `factory`, exit 2
    assert url in str(e) and "does not exist" in str(e) and "aws s3 mb s3://no-such-bucket-here" in str(e)
    assert "\n" not in str(e)
    assert not storage.exists("s3://no-such-bucket-here")  # no bucket was made on the way
    res = CliRunner().invoke(app, ["eval", url, "--bench", str(bench(tmp_path))])
    assert isinstance(res.exception, FactoryError) and "no-such-bucket-here" in str(res.exception)


def test_missing_credentials_are_one_clear_line(s3_bucket, tmp_path, monkeypatch):
    from s3fs import S3FileSystem

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    S3FileSystem.clear_instance_cache()
    try:
        with pytest.raises(storage.StorageError) as e:
            launch.prepare(tiny_config(f"{s3_bucket}/run"))
    finally:
        S3FileSystem.clear_instance_cache()  # the next test's clients read the keys again
    assert e.value.url == f"{s3_bucket}/run/config.yaml" and "no credentials" in str(e.value)
    assert "AWS_ACCESS_KEY_ID" in e.value.fix


@pytest.mark.slow
def test_training_data_on_the_store_trains_like_local_disk(s3_bucket, tiny_plan, tmp_path):  # noqa: F811
    """plan.json, the .ds shards and the tokenizer on S3: each node copies them once to its scratch
    and the run is bitwise the one on local disk; a second run fetches nothing again."""
    import fsspec

    fs = fsspec.filesystem("s3")
    plan = json.loads(tiny_plan.read_text())
    data = f"{s3_bucket}/tokens"
    for s in plan["phases"][0]["sources"]:
        fs.put(s["path"], f"{data}/{s['name']}", recursive=True)
        s["path"] = f"{data}/{s['name']}"
    fs.put_file(plan["tokenizer"], f"{data}/tokenizer.json")
    plan["tokenizer"] = "tokenizer.json"  # relative to the plan on the store
    fs.pipe_file(f"{data}/plan.json", json.dumps(plan).encode())

    ref = launch.run(plan_config(tmp_path / "ref", tiny_plan), nproc=2, echo=None)
    cfg = plan_config(tmp_path / "run", f"{data}/plan.json", scratch_dir=str(tmp_path / "scratch"))
    run = launch.run(cfg, nproc=2, echo=None)
    assert losses(run) == losses(ref)
    copies = sorted((tmp_path / "scratch" / "data").rglob("*.ds"))
    assert len(copies) == len(list(tiny_plan.parent.rglob("*.ds")))
    before = {p: p.stat().st_mtime_ns for p in copies}
    launch.run(plan_config(tmp_path / "run2", f"{data}/plan.json", scratch_dir=str(tmp_path / "scratch")),
               nproc=2, echo=None)
    assert {p: p.stat().st_mtime_ns for p in copies} == before  # nothing fetched again
    from train.config import ConfigError

    with pytest.raises(ConfigError, match=r"field data\.plan: s3://.*/nothing\.json not found"):
        launch.prepare(plan_config(tmp_path / "run3", f"{data}/nothing.json"))


def test_a_store_without_its_filesystem_is_one_clear_line(tmp_path):
    with pytest.raises(storage.StorageError, match=r"foo://b/run/config\.yaml: no filesystem for foo:// is installed"):
        launch.prepare(tiny_config("foo://b/run"))
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(storage.StorageError, match=r"gs://b/run.*\(fix: pip install gcsfs"):
            launch.prepare(tiny_config("gs://b/run"))


@pytest.mark.slow
def test_transient_store_errors_are_retried(flaky_s3, s3_bucket, tmp_path):
    """Every 3rd PUT answered 503 SlowDown by a fault-injecting proxy: the run still completes."""
    flaky_s3.set(fail_every=3, methods={"PUT"})
    url = f"{s3_bucket}/flaky"
    launch.run(tiny_config(url, **{"train.steps": 4, "checkpoint.every": 2}), nproc=1, echo=None)
    assert flaky_s3.counts["failed"] > 0
    flaky_s3.clear()
    assert json.loads(storage.read_text(f"{url}/run.json"))["status"] == "done"
    assert sorted(losses(url)) == [1, 2, 3, 4] and storage.exists(f"{url}/hf/config.json")
    assert checkpoint.latest(f"{url}/checkpoints") == f"{url}/checkpoints/step_0000004"
