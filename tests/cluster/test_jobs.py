"""`factory submit` and `factory jobs` against a real Ray head: stages run as jobs on the cluster,
secrets travel by name, and a stopped generation job resumes without losing or duplicating docs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.proxy import FaultProxy

from .conftest import BIN

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SECRET_NAME, SECRET = "FACTORY_TEST_TEACHER_KEY", "sk-test-" + "7f3a9c21e5b84d06" * 2


def factory(head, *args: str, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "factory"), *args], cwd=ROOT, env={**head.env, **env},
                          capture_output=True, text=True, timeout=timeout)


def submit(head, *cmd: str, wait: bool = True, env_vars: tuple[str, ...] = (SECRET_NAME,)) -> tuple[str, subprocess.CompletedProcess]:
    flags = [f"--env-var={n}" for n in env_vars] + (["--wait"] if wait else [])
    r = factory(head, "submit", "--address", head.dashboard, *flags, "--", *cmd, **{SECRET_NAME: SECRET})
    job_id = r.stdout.strip().splitlines()[0] if r.stdout.strip() else ""
    return job_id, r


def job_info(head, job_id: str) -> dict:
    r = factory(head, "jobs", "status", job_id, "--address", head.dashboard, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_stage_runs_as_a_job_on_the_cluster(ray_head, head_env):
    # `factory cluster info` inside the job: init_ray() finds the cluster through RAY_ADDRESS, no flags
    job_id, r = submit(ray_head, "factory", "cluster", "info")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert job_id.startswith("raysubmit_")
    assert "nodes" in r.stdout and "token" in r.stdout and "2 / 2" in r.stdout.replace("0 / 2", "")  # CPU row, 2 total

    logs = factory(ray_head, "jobs", "logs", job_id, RAY_ADDRESS=ray_head.gcs)  # the Job API found through the GCS
    assert logs.returncode == 0 and "Ray cluster" in logs.stdout, logs.stderr[-2000:]
    listed = factory(ray_head, "jobs", "list", "--address", ray_head.dashboard, RAY_ADDRESS="127.0.0.1:1")  # --address wins
    assert job_id in listed.stdout.replace("\n", "") or job_id[:14] in listed.stdout

    # what Ray stores: the names in metadata, the value only in the job's runtime_env
    from factory.cluster.jobs import job_client

    raw = job_client(ray_head.dashboard).get_job_info(job_id)
    assert raw.status.value == "SUCCEEDED"
    assert SECRET not in raw.entrypoint and SECRET not in json.dumps(raw.metadata)
    assert raw.metadata["env_var_names"] == SECRET_NAME
    assert raw.runtime_env["env_vars"][SECRET_NAME] == SECRET  # Ray keeps it here: the documented trade-off
    shown = job_info(ray_head, job_id)
    assert shown["status"] == "SUCCEEDED" and SECRET not in json.dumps(shown)
    assert shown["runtime_env"]["env_vars"] == {SECRET_NAME: "***"}
    assert SECRET not in logs.stdout


def test_secrets_travel_by_name_only(ray_head, head_env):
    from factory.cluster import jobs
    from factory.core.errors import FactoryError

    digest = hashlib.sha256(SECRET.encode()).hexdigest()
    code = (f"import hashlib,os; assert 'FACTORY_TEST_OTHER_KEY' not in os.environ; "
            f"print('sha', hashlib.sha256(os.environ['{SECRET_NAME}'].encode()).hexdigest())")
    r = factory(ray_head, "submit", "--address", ray_head.dashboard, f"--env-var={SECRET_NAME}", "--wait", "--",
                "python", "-c", code, **{SECRET_NAME: SECRET, "FACTORY_TEST_OTHER_KEY": "not-forwarded-123"})
    assert r.returncode == 0 and f"sha {digest}" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert SECRET not in r.stdout + r.stderr

    client = jobs.job_client(ray_head.dashboard)
    before = len(client.list_jobs())
    _, r = submit(ray_head, "factory", "generate", "gen.yaml", "--api-key", SECRET)
    assert r.returncode == 2 and f"contains the value of ${SECRET_NAME}" in r.stderr and SECRET not in r.stderr
    with pytest.raises(FactoryError, match="FACTORY_TEST_NOT_SET.*not set"):
        jobs.submit(["true"], address=ray_head.dashboard, env_vars=["FACTORY_TEST_NOT_SET"])
    with pytest.raises(FactoryError, match="names, not values") as e:
        jobs.submit(["true"], address=ray_head.dashboard, env_vars=["sk-abc=1"])
    assert "sk-abc" not in str(e.value)
    assert len(client.list_jobs()) == before, "a refused submission must not create a job"
    with pytest.raises(FactoryError, match="no job"):
        jobs.job_status("raysubmit_nosuchjob", ray_head.dashboard)


# generation + curation, stop and resume --------------------------------------------------------

def write_inputs(tmp: Path, teacher, base_url: str, n_seeds: int, shards: int) -> Path:
    from factory.seeds.sources import wiki_rows

    seeds = tmp / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(r, default=str) + "\n" for r in wiki_rows(n=n_seeds, seed=0)))
    (tmp / "teacher.yaml").write_text(yaml.safe_dump({
        "endpoints": [{"base_url": base_url, "model": teacher.model, "api_key_env": SECRET_NAME}],
        "max_in_flight": 1, "timeout_s": 60, "sampling": {"temperature": 0.0, "max_tokens": 24}}))
    cfg = tmp / "gen.yaml"
    cfg.write_text(yaml.safe_dump({
        "seeds": str(seeds), "recipes": ["distill"], "shards": shards, "teacher": str(tmp / "teacher.yaml"),
        "recipe_sampling": {"max_tokens": 24}, "out": str(tmp / "gen"), "workers": 1, "concurrency": 1}))
    return cfg


def units(gen: Path) -> list[tuple[str, str, int]]:
    """(seed_id, recipe, sample) of every kept and rejected unit of the generation output."""
    import pyarrow.parquet as pq

    out = []
    for f in sorted((gen / "data").glob("train-shard-*.parquet")):
        for r in pq.read_table(f).to_pylist():
            extra = json.loads(r["meta"]["extra"] or "{}")
            out.append((r["meta"]["seed_id"], r["meta"]["recipe"], int(extra.get("sample", 0))))
    for f in sorted((gen / "rejected").glob("shard-*.parquet")) if (gen / "rejected").exists() else []:
        for r in pq.read_table(f).to_pylist():
            out.append((r["seed_id"], r["recipe"], int(r["sample"])))
    return out


def test_generation_and_curation_jobs_stop_and_resume(ray_head, head_env, teacher, tmp_path):
    n_seeds, shards = 8, 4
    # a gateway that takes only the job's key: the generation reaches the teacher only if the secret arrived
    with FaultProxy(teacher.endpoints[0], delay_s=1.5, key=SECRET) as proxy:
        cfg = write_inputs(tmp_path, teacher, proxy.base_url, n_seeds, shards)
        gen = tmp_path / "gen"
        job1, r = submit(ray_head, "factory", "generate", str(cfg), wait=False)
        assert r.returncode == 0, r.stderr[-3000:]
        deadline = time.time() + 180
        while len(list((gen / "data").glob("train-shard-*.parquet"))) < 1:
            assert time.time() < deadline, factory(ray_head, "jobs", "logs", job1, "--address", ray_head.dashboard).stdout[-3000:]
            time.sleep(0.5)
        stop = factory(ray_head, "jobs", "stop", job1, "--address", ray_head.dashboard)
        assert stop.returncode == 0 and stop.stdout.strip() == "STOPPED", stop.stdout + stop.stderr
        done_at_stop = len(list((gen / "data").glob("train-shard-*.parquet")))
        assert done_at_stop < shards, "the job finished before it was stopped: nothing to resume"
        calls_at_stop = proxy.teacher_calls
        time.sleep(1.5)  # a request in flight when the job stopped may still land at the teacher

        job2, r = submit(ray_head, "factory", "generate", str(cfg))
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert job2 != job1 and job_info(ray_head, job1)["status"] == "STOPPED"

    got = units(gen)
    seeds = [json.loads(line) for line in (tmp_path / "seeds.jsonl").read_text().splitlines()]
    expected = {(s["meta"]["seed_id"], "distill", 0) for s in seeds}
    assert len(got) == len(set(got)), "a unit was written twice"
    assert set(got) == expected, "a unit was lost"
    manifest = json.loads((gen / "manifest.json").read_text())
    assert manifest["counts"]["shards_done"] == shards
    # the resumed job re-asked at most the units of the shards in flight at the stop
    assert proxy.repeated_calls <= shards - done_at_stop, (proxy.repeated_calls, calls_at_stop)

    cur = tmp_path / "cur"
    job3, r = submit(ray_head, "factory", "curate", "--in", str(gen), "--out", str(cur))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m = json.loads((cur / "manifest.json").read_text())
    kept_docs = len(read_ids(gen))
    assert m["counts"]["in"] == kept_docs
    assert m["counts"]["kept"] + sum(m["dropped"].values()) == kept_docs
    # inside a job, curation runs on the cluster without --ray or --address
    assert json.loads((cur / "report.json").read_text())["summary"]["executor"] == "ray"
    logs = factory(ray_head, "jobs", "logs", job3, "--address", ray_head.dashboard).stdout
    assert "curate" in logs and SECRET not in logs


def read_ids(folder: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [i for f in sorted((folder / "data").glob("train-shard-*.parquet")) for i in pq.read_table(f, columns=["id"])["id"].to_pylist()]
