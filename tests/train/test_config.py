"""Run config: YAML + overrides, errors naming the field, schedules."""

from __future__ import annotations

import math

import pytest

from train import config
from train.loop import lr_factor


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("run_dir: r\nmodel: {preset: tiny, dim: 64}\noptim: {lr: 1.0e-3}\n")
    c = config.load(p, ["optim.lr=5e-4", "train.steps=7", "model.tie_embeddings=false", "data.plan=x.json"])
    assert c.optim.lr == 5e-4 and c.train.steps == 7 and c.model.dim == 64
    assert c.model.tie_embeddings is False and c.data.plan == "x.json"
    assert config.load(c.to_dict()).to_dict() == c.to_dict()  # round trip


@pytest.mark.parametrize("data,overrides,field", [
    ({"optim": {"lrr": 1}}, None, "optim.lrr"),
    ({}, ["train.steps=many"], "train.steps"),
    ({"optim": {"schedule": "linear"}}, None, "optim.schedule"),
    ({"data": {"source": "plan"}}, None, "data.plan"),
    ({"train": {"micro_batch": 0}}, None, "train.micro_batch"),
    ({"train": {"compile": "maybe"}}, None, "train.compile"),
])
def test_bad_fields_are_named(data, overrides, field):
    with pytest.raises(config.ConfigError, match=field.replace(".", r"\.")):
        config.load(data, overrides)


def test_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(config.ConfigError, match="key=value"):
        config.load({}, ["optim.lr"])
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(tmp_path / "nope.yaml")


def test_grad_accum():
    c = config.load({"train": {"global_batch": 16, "micro_batch": 4}})
    assert config.grad_accum(c, 2) == 2 and config.grad_accum(c, 4) == 1
    with pytest.raises(config.ConfigError, match="global_batch"):
        config.grad_accum(c, 3)


def test_schedules():
    c = config.load({"optim": {"schedule": "cosine", "warmup_steps": 10, "min_lr_ratio": 0.1}})
    f = [lr_factor(c, s, 100) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # monotone decay after warmup
    assert lr_factor(c, 100, 100) == pytest.approx(0.1)
    w = config.load({"optim": {"schedule": "wsd", "warmup_steps": 10, "decay_frac": 0.2, "min_lr_ratio": 0.0}})
    g = [lr_factor(w, s, 100) for s in range(100)]
    assert g[10:80] == [1.0] * 70  # stable
    assert g[80] < 1.0 and g[99] == pytest.approx(0.0) and all(a > b for a, b in zip(g[80:], g[81:]))
    k = config.load({"optim": {"schedule": "constant", "warmup_steps": 0}})
    assert {lr_factor(k, s, 10) for s in range(10)} == {1.0}
    assert not math.isnan(lr_factor(c, 5, 5))
