"""A tiny mix search end to end on CPU: proxy mixes trained and scored by the real ablation runner,
a fit, a proposal the planner accepts, and a rerun that trains nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.ablate.conftest import TINY_MODEL, base_mix

pytestmark = pytest.mark.slow


def test_tiny_search_on_the_real_runner(tmp_path, tokens):
    base_mix(tmp_path)
    spec = tmp_path / "search.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "tiny_search", "base_mix": "base.yaml", "data_root": str(tokens), "proxies": 4, "seed": 0,
        "vary": {"web": {"min": 0.1, "max": 0.9}, "synthetic": {"min": 0.1, "max": 0.9}},
        "target": {"loss_web": 1.0}, "maximize": False,
        "proxy": {"model": TINY_MODEL, "tokens": 4096, "seeds": [0], "nproc": 1},
        "run_config": {"train": {"global_batch": 8, "micro_batch": 4, "tensorboard": False},
                       "optim": {"lr": 3e-3, "warmup_steps": 2}},
        "benchmarks": {"builtin": ["wiki_mc"], "n": 8, "source_windows": 4},
        "validate": {"model": TINY_MODEL, "tokens": 4096, "seeds": [0, 1, 2], "nproc": 1, "baselines": ["web_only.yaml"]}}))
    (tmp_path / "web_only.yaml").write_text(yaml.safe_dump({
        "name": "web_only", "total_tokens": 4096, "seq_len": 64, "tokenizer": "tokenizer.json",
        "sources": [{"name": "web", "path": "web", "kind": "web", "share": 1.0}]}))
    exe = Path(sys.executable).parent / "factory"
    r = subprocess.run([str(exe), "mix", "search", str(spec), "--out", str(tmp_path / "out")], capture_output=True,
                       text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(rep["observed"]) == 4 and len(list((tmp_path / "out").glob("proxies/runs/cells/*/seed0/eval.json"))) == 4
    # the loss on web text falls as the web share grows: the fit must rank that, the proposal lean web
    obs = sorted(rep["observed"], key=lambda o: o["shares"]["web"])
    assert obs[-1]["score"] < obs[0]["score"]
    assert rep["proposal"]["web"] > 0.5
    mix = tmp_path / "tiny_search.yaml"
    from factory.mix import plan

    assert plan(mix, tokens)["phases"][0]["sources"]
    again = subprocess.run([str(exe), "mix", "search", str(spec), "--out", str(tmp_path / "out")], capture_output=True,
                           text=True, timeout=300, cwd=tmp_path)
    assert again.returncode == 0 and "proposal" in again.stdout + again.stderr
    assert json.loads((tmp_path / "out" / "report.json").read_text())["proposal"] == rep["proposal"]
    val = subprocess.run([str(exe), "mix", "search", str(spec), "--out", str(tmp_path / "out"), "--validate"],
                         capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert val.returncode == 0, val.stderr[-3000:]
    v = json.loads((tmp_path / "out" / "report.json").read_text())["validation"]
    assert set(v["mixes"]) == {"proposal", "web_only"} and all(m["n"] == 3 for m in v["mixes"].values())
    d = v["versus"]["web_only"]
    assert d["wins"] == (v["mixes"]["proposal"]["mean"] < v["mixes"]["web_only"]["mean"])  # a loss: lower wins
    assert "proposal vs web_only" in (tmp_path / "out" / "report.md").read_text()
