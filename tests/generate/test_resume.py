"""Crash and resume: SIGKILL the driver mid-run three times; the rerun loses, duplicates and
repays nothing. Plus the RPM limit as seen by the server, and the Batch API mode."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from fake_batch import FakeBatchAPI
from gen_helpers import recipe, request_keys

from factory.core.stage import read_docs
from factory.generate import GenerateConfig, run
from factory.teacher.config import BatchOptions, Endpoint, RetryPolicy, TeacherConfig
from tests.proxy import FaultProxy

CLI = [sys.executable, "-c", "from factory.cli import main; main()"]


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in parents.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def ids(out) -> list[str]:
    return read_docs(str(out)).column("id").to_pylist()


def write_cfg(path: Path, seeds: str, out: Path, url: str, model: str, **kw) -> Path:
    cfg = {"seeds": seeds, "out": str(out), "recipes": [recipe("tiny_word")], "shards": 6, "workers": 1,
           "concurrency": 1, "teacher": {"endpoints": [{"base_url": url, "model": model, "api_key_env": "FACTORY_TEACHER_KEY"}], "timeout_s": 30,
                                         "sampling": {"temperature": 0.0}},  # adaptive windows, capped by concurrency
           **kw}
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_sigkill_driver_three_times_then_rerun(teacher, ray_local, seeds_file, tmp_path):
    n = 48
    seeds = seeds_file(n)
    ref = GenerateConfig(**yaml.safe_load(write_cfg(tmp_path / "ref.yaml", seeds, tmp_path / "ref", teacher.endpoints[0],
                                                    teacher.model).read_text()))
    run(ref.model_copy(update={"workers": 2, "concurrency": 2}), show_progress=False)
    orphans: set[int] = set()
    # the killed drivers' Ray agents give up on their GCS after 15 s instead of Ray's 60
    orphaned_env = {**os.environ, "RAY_gcs_rpc_server_reconnect_timeout_s": "15"}
    with FaultProxy(teacher.endpoints[0]) as px:
        cfg = write_cfg(tmp_path / "gen.yaml", seeds, tmp_path / "out", px.base_url, teacher.model)
        for frac in (0.2, 0.45, 0.7):
            p = subprocess.Popen([*CLI, "generate", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env=orphaned_env)
            deadline = time.monotonic() + 240
            while px.teacher_calls < frac * n and p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert p.poll() is None, "the driver ended before it could be killed"
            below = descendants(p.pid)  # its local Ray: gcs, raylet, agents, workers
            assert below
            orphans |= below
            p.send_signal(signal.SIGKILL)
            p.wait()
        before_rerun = px.teacher_calls
        kept = {r["id"]: r["text"] for r in read_docs(str(tmp_path / "out")).select(["id", "text"]).to_pylist()}
        r = subprocess.run([*CLI, "generate", str(cfg)], capture_output=True, text=True, timeout=400)
        assert r.returncode == 0, r.stderr[-2000:]
    assert 0 < before_rerun < n
    # Ray's processes die with the driver; its two agents follow once their GCS reconnect
    # timeout (15 s here) runs out
    deadline = time.monotonic() + 90
    while any(alive(c) for c in orphans) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [c for c in orphans if alive(c)], "processes outlived the killed driver"
    got = read_docs(str(tmp_path / "out")).select(["id", "text"]).to_pylist()
    assert len({r["id"] for r in got}) == len(got) == n
    assert request_keys(tmp_path / "out") == request_keys(tmp_path / "ref")
    # shards finished before the kills survive the rerun unchanged
    assert kept and {r["id"]: r["text"] for r in got if r["id"] in kept} == kept
    # a killed driver repays at most what its one worker had in flight: concurrency 1, three kills
    assert px.teacher_calls >= n and px.repeated_calls <= 3, (px.teacher_calls, px.repeated_calls)
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["status"] == "done" and m["counts"]["docs"] == n


@pytest.mark.slow
def test_rpm_limit_seen_at_the_server(teacher, ray_local, seeds_file, tmp_path):
    seeds = seeds_file(21)
    with FaultProxy(teacher.endpoints[0]) as px:
        cfg = GenerateConfig(**yaml.safe_load(write_cfg(tmp_path / "g.yaml", seeds, tmp_path / "out", px.base_url,
                                                        teacher.model, concurrency=4).read_text()))
        cfg.teacher.rpm = 120
        run(cfg, show_progress=False)
    times = [t for t, _, _ in px.log]
    assert len(times) == 21
    rate = (len(times) - 1) / (times[-1] - times[0]) * 60
    assert abs(rate - 120) <= 6, rate  # within 5%


def test_batch_mode_merges_into_outputs_and_cache(teacher, ray_local, seeds_file, tmp_path):
    seeds = seeds_file(4)
    two = [recipe("tiny_two_step")]
    online = GenerateConfig(seeds=seeds, out=str(tmp_path / "online"), recipes=two, shards=2,
                            teacher=TeacherConfig(endpoints=[Endpoint(base_url=teacher.endpoints[0], model=teacher.model, api_key_env=teacher.api_key_env)],
                                                  sampling={"temperature": 0.0}))
    run(online, show_progress=False)
    with FakeBatchAPI(teacher.endpoints[0], fail_first=1, reject=1) as fake:
        tcfg = TeacherConfig(endpoints=[Endpoint(base_url=fake.base_url, model=teacher.model, api_key_env=teacher.api_key_env)], mode="batch",
                             sampling={"temperature": 0.0}, batch=BatchOptions(poll_s=0.2),
                             retry=RetryPolicy(max_attempts=2))
        cfg = online.model_copy(update={"out": str(tmp_path / "batch"), "teacher": tcfg})
        m = run(cfg, show_progress=False)
        assert len(fake.batches) >= 3  # two dependent steps, plus a round for the retried 500
        rejected_id = next(iter(fake.rejected))
        lines_before = fake.lines_run
        m2 = run(cfg, show_progress=False)  # finished: nothing is sent again
        assert fake.lines_run == lines_before
    got = ids(tmp_path / "batch")
    assert len(got) == len(set(got)) == 3 and set(request_keys(tmp_path / "batch")) <= set(request_keys(tmp_path / "online"))
    rej = pq.read_table(tmp_path / "batch" / "rejected" / "shard-00000.parquet").to_pylist() + \
        pq.read_table(tmp_path / "batch" / "rejected" / "shard-00001.parquet").to_pylist()
    assert [r["reason"] for r in rej] == ["teacher_http_400"] and rejected_id
    assert m["this_run"]["batches"] >= 3 and m["accounting"]["requests"] > 0 and m2["status"] == "done"
    caches = list((tmp_path / "batch" / "cache").glob("layout-*/*.jsonl"))
    assert caches
    assert sum(len(c.read_text().splitlines()) for c in caches) == fake.lines_run
