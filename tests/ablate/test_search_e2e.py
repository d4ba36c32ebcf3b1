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
    from factory.mix.plan import plan

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


def _suite_records(tasks_file: Path, cwd: Path) -> Path:
    """`python -m train.suite TASKS` in `cwd` (torch only), and its runs' eval.json records as one JSONL."""
    r = subprocess.run([sys.executable, "-m", "train.suite", str(tasks_file), "--lanes", "2"], capture_output=True, text=True,
                       timeout=900, cwd=cwd)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    recs = sorted(tasks_file.parent.glob("cells/*/seed*/eval.json"))
    out = cwd / "results.jsonl"
    out.write_text("".join(json.dumps(json.loads(p.read_text())) + "\n" for p in recs))
    return out


def test_search_in_two_trainer_calls_planned_here(tmp_path, tokens, monkeypatch):
    """--plan-only writes the proxies' task list; it trains in a copy of the folder elsewhere (as on a
    GPU host with torch only) and comes back as a JSONL through --results; the fit and the validation
    task list follow, which trains in place; the report then needs no training here."""
    import shutil

    here = tmp_path / "here"
    here.mkdir()
    shutil.copytree(tokens, here / "tokens")
    base_mix(here)
    (here / "web_only.yaml").write_text(yaml.safe_dump({
        "name": "web_only", "total_tokens": 4096, "seq_len": 64, "tokenizer": "tokenizer.json",
        "sources": [{"name": "web", "path": "web", "kind": "web", "share": 1.0}]}))
    spec = here / "search.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "two_step", "base_mix": "base.yaml", "data_root": "tokens", "out": "out", "proxies": 4,
        "vary": {"web": {"min": 0.1, "max": 0.9}, "synthetic": {"min": 0.1, "max": 0.9}},
        "target": {"loss_web": 1.0}, "maximize": False,
        "proxy": {"model": TINY_MODEL, "tokens": 4096, "seeds": [0], "nproc": 1},
        "run_config": {"train": {"global_batch": 8, "micro_batch": 4, "tensorboard": False, "export": False},
                       "optim": {"lr": 3e-3, "warmup_steps": 2}, "checkpoint": {"final": False}},
        "benchmarks": {"builtin": ["wiki_mc"], "n": 8, "source_windows": 4},
        "validate": {"model": TINY_MODEL, "tokens": 4096, "seeds": [0, 1, 2], "nproc": 1, "baselines": ["web_only.yaml"]}}))
    exe = str(Path(sys.executable).parent / "factory")

    def factory(*args: str) -> str:
        r = subprocess.run([exe, "mix", "search", "search.yaml", *args], capture_output=True, text=True, timeout=600, cwd=here)
        assert r.returncode == 0, r.stderr[-3000:]
        return " ".join((r.stdout + r.stderr).split())

    r = factory("--plan-only", "--validate")
    tasks = here / "out/proxies/runs/tasks.json"
    assert "proxies: 4 runs to train" in r and len(json.loads(tasks.read_text())["tasks"]) == 4
    assert not (here / "out/scores.jsonl").exists() and not list(here.glob("out/proxies/runs/cells/*/seed0/eval.json"))
    there = tmp_path / "there"  # another machine: the same tree under another root
    shutil.copytree(here, there)
    got = _suite_records(there / "out/proxies/runs/tasks.json", there)
    assert len(got.read_text().splitlines()) == 4
    from factory.ablate.search import search

    monkeypatch.chdir(here)  # the search file's data_root and out are relative to the working directory
    rep = search(spec, here / "out", validate=True, plan_only=True, results=[got], show=False)
    assert rep["imported"] == 4 and rep["step"] == "validate" and rep["to_run"] == 6
    assert len((here / "out/scores.jsonl").read_text().splitlines()) == 4 and (here / "two_step.yaml").exists()
    # the validation runs' records, made by hand here (the real trainer's are the proxies' above and
    # test_tiny_search_on_the_real_runner's): the report reads them without training anything
    val = json.loads((here / "out/validate/runs/tasks.json").read_text())["tasks"]
    made = here / "validate.jsonl"
    made.write_text("".join(json.dumps({"cell": t["cell"], "seed": t["seed"], "params": t["params"],
                                        "scores": {"loss_web": {"score": 5.0 - 0.1 * t["seed"] - (t["params"]["mix"] == "0"),
                                                                "stderr": 0.01}}})
                            + "\n" for t in val))
    rep = search(spec, here / "out", validate=True, results=[made, got], show=False)  # the proxies' again: nothing new
    assert rep["imported"] == 6
    v = rep["validation"]
    assert set(v["mixes"]) == {"proposal", "web_only"} and all(m["n"] == 3 for m in v["mixes"].values())
    assert v["versus"]["web_only"]["wins"] and v["versus"]["web_only"]["difference"] == -1.0
    # every seed lowers both mixes alike: paired by seed, the difference has no spread at all
    assert v["versus"]["web_only"]["paired"] == {"difference": -1.0, "half": 0.0, "seeds": 3, "significant": True}
    assert "proposal vs web_only" in (here / "out/report.md").read_text()
