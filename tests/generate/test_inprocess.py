"""The default `workers: -1` on one machine: generation in the driver's event loop, without Ray;
on a cluster or with a large fleet, Ray actors, one per node and per 16 endpoints."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import yaml
from gen_helpers import recipe, request_keys
from test_resume import descendants

from factory.core.config import validate
from factory.core.errors import FactoryError
from factory.core.stage import read_docs
from factory.generate import GenerateConfig
from factory.generate.workers import in_process, worker_count
from tests.proxy import FaultProxy

CLI = [sys.executable, "-c", "from factory.cli import main; main()"]


def cfg_file(path, seeds: str, out, url: str, model: str) -> str:
    path.write_text(yaml.safe_dump({  # workers left out: the default
        "seeds": seeds, "out": str(out), "recipes": [recipe("tiny_word")], "shards": 6, "concurrency": 2,
        "teacher": {"endpoints": [{"base_url": url, "model": model, "api_key_env": "FACTORY_TEACHER_KEY"}], "timeout_s": 30, "sampling": {"temperature": 0.0},
                    "retry": {"base_s": 0.05, "max_s": 0.5, "max_attempts": 12}}}))
    return str(path)


@pytest.mark.slow
def test_default_runs_without_ray_survives_sigkill_and_faults(teacher, seeds_file, tmp_path):
    n = 48
    seeds = seeds_file(n)
    with FaultProxy(teacher.endpoints[0], p429=0.1, p500=0.1, seed=3) as px:
        cfg = cfg_file(tmp_path / "gen.yaml", seeds, tmp_path / "out", px.base_url, teacher.model)
        p = subprocess.Popen([*CLI, "generate", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 240
        while px.teacher_calls < 0.4 * n and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.poll() is None, p.stderr.read()[-2000:]
        assert not descendants(p.pid), "a process was started beside the driver (a local Ray?)"
        p.send_signal(signal.SIGKILL)
        p.wait()
        killed_at = px.teacher_calls
        r = subprocess.run([*CLI, "generate", cfg], capture_output=True, text=True, timeout=400)
        assert r.returncode == 0, r.stderr[-2000:]
    assert 0 < killed_at < n
    assert px.outcomes()["429"] + px.outcomes()["500"] > 0  # the faults were met and retried
    got = read_docs(str(tmp_path / "out")).column("id").to_pylist()
    assert len(got) == len(set(got)) == n
    assert len(request_keys(tmp_path / "out")) == n
    assert px.repeated_calls <= 2, px.repeated_calls  # a kill repays at most what was in flight (concurrency 2)
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    tr = m["this_run"]
    assert m["status"] == "done" and m["counts"]["docs"] == n
    assert tr["executor"] == "in_process" and tr["workers"] == 1 and tr["failed_shards"] == []
    assert tr["cache_hits"] > 0 and tr["requests"] < n  # what the killed run paid for was not asked again
    assert "teardown_s" not in tr["timeline"] and not m["nodes"]  # no Ray: no tear-down, no node ids


def test_in_process_only_on_one_machine_with_a_small_fleet(monkeypatch):
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    base = {"seeds": "s.jsonl", "recipes": ["textbook"], "teacher": "t.yaml", "out": "o"}
    auto = GenerateConfig(**base)
    assert auto.workers == -1
    assert in_process(auto, 1) and in_process(auto, 16)
    assert not in_process(auto, 17)  # more endpoints than one worker drives: Ray actors
    assert not in_process(GenerateConfig(**base, workers=1), 1)  # a number asks for Ray actors
    assert not in_process(GenerateConfig(**base, ray_address="10.0.0.1:6379"), 1)
    assert in_process(GenerateConfig(**base, ray_address="local"), 1)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # inside a Ray job
    assert not in_process(auto, 1)
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # a Ray this process already joined
    assert not in_process(auto, 1)


def test_auto_workers_on_ray_one_per_node_and_per_16_endpoints(ray_local):
    import ray

    nodes = sum(1 for nd in ray.nodes() if nd["Alive"])
    auto = GenerateConfig(seeds="s.jsonl", recipes=["textbook"], teacher="t.yaml", out="o")
    assert worker_count(auto, 1, 100) == nodes
    assert worker_count(auto, 40, 100) == max(nodes, 3)
    assert worker_count(auto, 40, 2) == 2  # never more than the shards to run
    assert worker_count(auto.model_copy(update={"workers": 5}), 1, 100) == 5


def test_zero_workers_is_one_clear_error():
    with pytest.raises(FactoryError) as e:
        validate(GenerateConfig, {"seeds": "s.jsonl", "recipes": ["textbook"], "teacher": "t.yaml", "out": "o",
                                  "workers": 0}, "gen.yaml")
    msg = str(e.value)
    assert "gen.yaml" in msg and "workers" in msg and "-1" in msg, msg
