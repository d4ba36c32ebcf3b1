"""`factory train`: a run from YAML with --set overrides, and a bad field reported in one line."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from tests.train.conftest import tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture()
def app():
    from factory.cli import app
    return app


def test_cli_trains_with_overrides(app, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tmp_path / "run", **{"checkpoint.every": 0})))
    res = CliRunner().invoke(app, ["train", str(cfg), "--nproc", "1", "--set", "train.steps=3",
                                   "--set", "train.global_batch=4"])
    assert res.exit_code == 0, res.output
    assert "training run" in res.output and "final loss" in res.output
    s = json.loads((tmp_path / "run" / "run.json").read_text())
    assert s["steps"] == 3 and s["config"]["train"]["global_batch"] == 4


def test_cli_bad_field_is_one_line(app, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tmp_path / "run")))
    from factory.core.errors import FactoryError

    res = CliRunner().invoke(app, ["train", str(cfg), "--set", "optim.lrate=1"])
    assert isinstance(res.exception, FactoryError)  # `factory` prints it as one line and exits 2
    assert "optim.lrate" in str(res.exception) and "\n" not in str(res.exception)
    assert not (tmp_path / "run").exists()  # nothing started
