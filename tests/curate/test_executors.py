"""Local and Ray executors give the same output; a Ray worker killed mid-run changes nothing; a
rank that raises stops the run with its job named and the rerun finishes only what is left; the CLI runs the local multi-process executor (forkserver) from a console script."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from factory.curate import load, run

from . import faults
from .test_curate import snapshot

pytestmark = pytest.mark.slow


def _cfg(planted, out: Path, **executor):
    cfg = load(None, inputs=[planted.inputs], out=str(out))
    cfg.dedup.reference = [planted.reference]
    cfg.decont.benchmarks = [planted.bench]
    cfg.dedup.minhash.num_buckets, cfg.dedup.minhash.hashes_per_bucket = 16, 3  # fewer bucket tasks: faster on Ray
    for k, v in {"tasks": 2, **executor}.items():
        setattr(cfg.executor, k, v)
    return cfg


@pytest.fixture(scope="module")
def local_out(planted, tmp_path_factory) -> Path:
    """The reference run: LocalPipelineExecutor with 2 worker processes (forkserver)."""
    out = tmp_path_factory.mktemp("exec") / "local"
    m = run(_cfg(planted, out, workers=2))
    assert m["executor"] == "local"
    return out


@pytest.fixture(scope="module")
def local_run(local_out):
    return snapshot(str(local_out))


def job_stats(out: Path) -> dict:
    """Each job's merged datatrove stats, counters only (no timings): what every step saw."""
    import json

    got = {}
    for f in sorted((out / "_work" / "logs").glob("*/stats.json")):
        got[f.parent.name] = [(s["name"], {k: v["total"] if isinstance(v, dict) else v for k, v in s["stats"].items()})
                              for s in json.loads(f.read_text())]
    return got


def test_ray_equals_local(planted, local_out, local_run, ray_session, tmp_path):
    """Same rows, and the same datatrove stats per job: a worker running several ranks in a row
    (16 bucket tasks on 2 workers) counts each rank once."""
    m = run(_cfg(planted, tmp_path / "ray", ray=True))
    assert m["executor"] == "ray"
    assert snapshot(str(tmp_path / "ray")) == local_run
    assert job_stats(tmp_path / "ray") == job_stats(local_out)


def test_more_ray_workers_than_cpus_still_finish(planted, local_run, ray_session, tmp_path):
    """4 workers asked on a 2-CPU Ray: two actors never start, and no rank waits on them."""
    run(_cfg(planted, tmp_path / "over", ray=True, tasks=4, workers=4))
    got = snapshot(str(tmp_path / "over"))
    ids = lambda snap, part: sorted(r["id"] for rows in snap[part].values() for r in rows)  # noqa: E731
    assert ids(got, "kept") == ids(local_run, "kept") and ids(got, "rejected") == ids(local_run, "rejected")


def test_killed_ray_worker_changes_nothing(planted, local_run, ray_session, tmp_path):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(faults)  # workers get the injector by value
    killer = faults.WorkerKiller(after=1.5)

    def inject(jobs):
        filt = next(j for j in jobs if j.name == "filter")
        filt.steps.insert(1, faults.Slow(0.03))
        killer.start()

    try:
        run(_cfg(planted, tmp_path / "killed", ray=True), inject=inject)
    finally:
        killer.stop.set()
        cloudpickle.unregister_pickle_by_value(faults)
    assert killer.killed, "no Ray worker was killed"
    assert snapshot(str(tmp_path / "killed")) == local_run


def test_failing_rank_on_ray_stops_with_its_job_and_the_rerun_completes(planted, local_run, ray_session, tmp_path):
    from ray import cloudpickle

    from factory.core.errors import FactoryError

    cloudpickle.register_pickle_by_value(faults)

    def failing(rank):
        return lambda jobs: next(j for j in jobs if j.name == "filter").steps.insert(1, faults.FailRank(rank))

    try:
        with pytest.raises(FactoryError) as e:
            run(_cfg(planted, tmp_path / "out", ray=True), inject=failing(1))
        assert "curation job 'filter' left 1 of 2 tasks unfinished (ranks [1])" in str(e.value)
        assert "logs/filter" in str(e.value) and "rerun" in str(e.value)
        done = tmp_path / "out" / "_work" / "logs" / "filter" / "completions" / "00000"
        before = done.stat().st_mtime_ns
        run(_cfg(planted, tmp_path / "out", ray=True), inject=failing(-1))  # fault gone: rank 1 runs, rank 0 is kept
        assert done.stat().st_mtime_ns == before
    finally:
        cloudpickle.unregister_pickle_by_value(faults)
    assert snapshot(str(tmp_path / "out")) == local_run


def test_cli_local_multiprocess(planted, local_run, tmp_path):
    cfg = tmp_path / "curate.yaml"
    cfg.write_text("executor: {tasks: 2, workers: 2}\ndedup:\n  minhash: {num_buckets: 16, hashes_per_bucket: 3}\n")
    exe = Path(sys.executable).parent / "factory"
    out = tmp_path / "cli"
    r = subprocess.run([str(exe), "curate", str(cfg), "--in", planted.inputs, "--out", str(out), "--reference",
                        planted.reference, "--bench", planted.bench], capture_output=True, text=True, timeout=600,
                       env={**__import__("os").environ, "RAY_ADDRESS": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    shown = (r.stderr + r.stdout).splitlines()
    assert "kept" in r.stderr + r.stdout
    # the terminal gets a progress line and the summary; datatrove's logs go to a file in the stage folder
    assert len(shown) < 40 and not any("| INFO" in line or "PIPELINE" in line for line in shown), "\n".join(shown)
    assert re.search(r"^curate \d+/\d+ \(100%\) [\d.]+ tasks/s elapsed \d:\d\d:\d\d eta 0:00:00", r.stderr, re.M), r.stderr
    log = (out / "datatrove.log").read_text()
    assert "All 2 tasks" in log  # the executor's own summary, printed in this process
    assert "Launching pipeline for rank=1" in (out / "_work" / "logs" / "filter" / "logs" / "task_00001.log").read_text()
    assert snapshot(str(out)) == local_run
    bad = subprocess.run([str(exe), "curate", "--in", str(tmp_path / "missing"), "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "error:" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
