"""Runs packed into lanes (train.suite): the same scores as one run at a time, locally and through
real Ray; a failing run keeps the lane's finished ones; a task list planned in one folder trains
after it has moved (plan here, train on another machine)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from factory import ablate
from factory.ablate.run import _default_train
from factory.core.errors import FactoryError
from tests.ablate.conftest import TINY_MODEL, base_mix

pytestmark = pytest.mark.slow


def _grid(tmp: Path, data: Path, export: bool = False, **over) -> Path:
    base_mix(tmp)
    g = {"name": "pack", "base_mix": "base.yaml", "data_root": str(data), "seeds": [0], "nproc": 1, "model": TINY_MODEL,
         "run_config": {"train": {"global_batch": 8, "micro_batch": 8, "tensorboard": False, "export": export},
                        "optim": {"lr": 3e-3, "warmup_steps": 2}, "checkpoint": {"final": False}},
         "vary": [{"sources.synthetic.share": [0.0, 1.0], "sources.web.share": [1.0, 0.0]}],
         "benchmarks": {"builtin": ["wiki_mc"], "n": 16, "source_windows": 4}, "parallel": "serial", **over}
    p = tmp / "grid.yaml"
    p.write_text(yaml.safe_dump(g))
    return p


def _scores(r: dict) -> dict:
    return {(x["cell"], x["seed"]): {b: s["score"] for b, s in x["scores"].items()} for x in r["results"]}


def test_lanes_on_ray_give_the_scores_of_one_run_at_a_time(tmp_path, tokens):
    # two lanes, each a real Ray task training two runs (the second's initial weights drawn while the
    # first trains); one at a time scores the export
    grid = _grid(tmp_path, tokens, export=True, lanes=2, parallel="ray", seeds=[0, 1])
    one = ablate.run(grid, tmp_path / "one", show=False, train_fn=_default_train(1), eval_fn=ablate.default_eval)
    packed = ablate.run(grid, tmp_path / "packed", show=False)
    assert packed["ran"] == 4 and len(list((tmp_path / "packed/tasks/lanes").glob("lane*.json"))) == 2
    a, b = _scores(one), _scores(packed)
    assert a.keys() == b.keys() and {"wiki_mc", "wiki_mc_bpb", "loss_web", "loss_synthetic"} <= set(next(iter(b.values())))
    for k in a:
        assert b[k] == pytest.approx(a[k], abs=1e-5)
    assert ablate.run(grid, tmp_path / "packed", show=False)["skipped"] == 4  # done runs are not redone


def test_a_task_list_trains_after_its_folder_moved_and_a_failed_run_is_redone(tmp_path, tokens, monkeypatch):
    from train import suite

    src = tmp_path / "here"
    src.mkdir()
    shutil.copytree(tokens, src / "tokens")
    monkeypatch.chdir(src)
    grid = _grid(src, Path("tokens"), out="abl")
    planned = ablate.run(grid, show=False, plan_only=True)
    bad = json.loads(Path(planned["tasks_file"]).read_text())["tasks"][0]
    dst = tmp_path / "there"
    shutil.move(str(src), str(dst))  # the planning folder is gone: every path must be moved
    monkeypatch.chdir(dst)
    blocker = Path(bad["config"]["run_dir"].replace(str(src), str(dst)))
    blocker.write_text("a file where the run folder goes")  # that run cannot start; the lane goes on
    res = suite.run_tasks("abl/tasks.json", lanes=1, echo=lambda _: None)
    done = list(Path("abl").glob("cells/*/seed0/eval.json"))
    assert len(res["failed"]) == 1 and "FAILED" in Path(res["failed"][0]).read_text()
    assert len(done) == 1 and bad["cell"] not in str(done[0])
    with pytest.raises(FactoryError, match="lane"):  # factory ablate says so in one line, naming the log
        ablate.run(dst / "grid.yaml", show=False)
    blocker.unlink()
    assert suite.run_tasks("abl/tasks.json", lanes=1, echo=lambda _: None)["failed"] == []
    r = ablate.run(dst / "grid.yaml", show=False)  # reports what the suite trained
    assert r["ran"] == 0 and r["skipped"] == 2 and Path(r["report"]["report_md"]).exists()


def test_pack_balances_lanes_by_cost():
    from train.suite import pack, per_gpu_auto

    tasks = [{"id": i, "cost": c} for i, c in enumerate([8, 1, 1, 4, 4, 1, 1])]
    lanes = pack(tasks, 2)
    assert sorted(sum(t["cost"] for t in lane) for lane in lanes) == [10, 10]
    assert all([t["id"] for t in lane] == sorted(t["id"] for t in lane) for lane in lanes)
    assert len(pack(tasks[:1], 4)) == 1
    assert per_gpu_auto(32 * 512, 90_000_000) == 2 and per_gpu_auto(128 * 512, 90_000_000) == 1 and per_gpu_auto(64 * 512, 90_000_000) == 1
    assert per_gpu_auto(32 * 512, 23_000_000) == 8  # small steps: more lanes
    assert per_gpu_auto(32 * 512, 90_000_000, free_bytes=4e9) == 1  # memory bounds the count


def test_suite_driver_counts_gpus_without_torch(tmp_path):
    """The driver only starts lanes: where nvidia-smi lists the GPUs it does not import torch (its
    import would delay every lane's start); a MIG listing or CUDA_VISIBLE_DEVICES goes to torch."""
    import os
    import subprocess
    import sys

    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-a)'\necho 'GPU 1: NVIDIA H200 (UUID: GPU-b)'\n")
    smi.chmod(0o755)
    code = "import sys, train.suite as s; print(s.gpus(), 'torch' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = f"{tmp_path}:{env['PATH']}"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["2", "False"]
    out = subprocess.run([sys.executable, "-c", code], env={**env, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[1] == "True"  # counted by torch (here: no usable CUDA device)
