"""TensorBoard logs with the default `train.tensorboard: true`, and one clear line where the
tensorboard package is missing (the JSON log is written either way)."""

from __future__ import annotations

import json
import sys

from train.metrics import MetricsLog


def test_tensorboard_events_are_written(tmp_path):
    log = MetricsLog(tmp_path, write=True, tensorboard=True)
    log.log({"step": 1, "loss": 2.5})
    log.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "loss": 2.5}


def test_missing_tensorboard_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as on a host without the package
    log = MetricsLog(tmp_path, write=True, tensorboard=True)
    log.log({"step": 1, "loss": 2.5})
    log.close()
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "tensorboard package is not installed" in out[0] and "fix: pip install tensorboard" in out[0]
    assert not (tmp_path / "tb").exists()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "loss": 2.5}
