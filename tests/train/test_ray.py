"""Ray Train's TorchTrainer runs the same loop (2 gloo workers on a local Ray)."""

from __future__ import annotations

import json

import pytest

from tests.train.conftest import tiny_config
from train import launch

pytestmark = pytest.mark.slow


def test_ray_train_runs_the_same_loop(tmp_path):
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.train.torch")
    cfg = tiny_config(tmp_path / "run", **{"train.steps": 4, "checkpoint.every": 2})
    try:
        run_dir = launch.run_ray(cfg, address=None, num_workers=2)
    finally:
        ray.shutdown()
    s = json.loads((run_dir / "run.json").read_text())
    assert s["world_size"] == 2 and s["steps"] == 4 and s["status"] == "done"
    assert s["ranks"][0]["params_sha"] == s["ranks"][1]["params_sha"]
    assert (run_dir / "hf" / "model.safetensors").exists()
    # the same losses as torchrun gives for the same config
    ref = launch.run(tiny_config(tmp_path / "ref", **{"train.steps": 4, "checkpoint.every": 2}), nproc=2, echo=None)
    a = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(ln) for ln in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("loss") for r in a] == [r.get("loss") for r in b]
