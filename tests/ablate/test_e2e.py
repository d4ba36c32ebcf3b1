"""End to end on real parts: tokenize, plan, train (torchrun, 2 gloo ranks), evaluate, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from factory import ablate
from tests.ablate.conftest import TINY_MODEL, base_mix

pytestmark = pytest.mark.slow


def test_two_cell_grid_on_the_real_trainer(tmp_path, tokens):
    data = tokens
    base_mix(tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "e2e", "base_mix": "base.yaml", "data_root": str(data), "seeds": [0], "nproc": 2,
        "model": TINY_MODEL,
        "run_config": {"train": {"global_batch": 8, "micro_batch": 4, "tensorboard": False}, "optim": {"lr": 3e-3, "warmup_steps": 2}},
        "vary": [{"sources.synthetic.share": [0.0, 1.0], "sources.web.share": [1.0, 0.0]}],
        "benchmarks": {"builtin": ["wiki_mc", "arith_em"], "n": 16, "source_windows": 4},
        "parallel": "serial"}))
    out = tmp_path / "out"
    r = ablate.run(grid, out, show=False)
    assert r["ran"] == 2
    names = {"wiki_mc", "wiki_mc_bpb", "arith_em", "loss_web", "loss_synthetic"}
    for rec in r["results"]:
        assert set(rec["scores"]) == names
        assert 0 <= rec["scores"]["wiki_mc"]["score"] <= 1 and rec["scores"]["wiki_mc"]["n"] == 16
        assert (Path(rec["run_dir"]) / "hf" / "config.json").exists()
    by = {rec["params"]["synthetic_share"]: rec["scores"] for rec in r["results"]}
    # each model fits the source it was trained on better than the one it never saw
    assert by[0.0]["loss_web"]["score"] < by[1.0]["loss_web"]["score"]
    assert by[1.0]["loss_synthetic"]["score"] < by[0.0]["loss_synthetic"]["score"]
    plan = json.loads(next(out.glob("cells/synthetic_share=1.0*/plan.json")).read_text())
    assert [s["name"] for s in plan["phases"][0]["sources"]] == ["synthetic"]
    assert Path(r["report"]["png"]).exists() and "loss_web" in Path(r["report"]["report_md"]).read_text()
    again = ablate.run(grid, out, show=False)
    assert again["ran"] == 0 and again["skipped"] == 2
