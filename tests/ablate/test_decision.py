"""Decision accuracy between two scales and the per-scale effect of x: arithmetic on hand-made
results, and a tiny two-scale grid trained in lanes on the CPU."""

from __future__ import annotations

import json

import pytest
import yaml

from factory import ablate
from factory.ablate import report
from factory.ablate.decision import decision_accuracy, effects
from tests.ablate.conftest import TINY_MODEL, base_mix


def _rec(scale, mix, seed, score, share, **extra):
    return {"cell": f"scale={scale}__{mix}", "seed": seed, "params": {"scale": scale, "share": share},
            "scores": {"acc": {"score": score, "n": 100, "stderr": 0.01}, "loss": {"score": 1 - score, "stderr": 0.01, "higher_is_better": False}},
            **extra}


LARGE = {"a": [0.60, 0.62, 0.61], "b": [0.50, 0.52, 0.51], "c": [0.40, 0.41, 0.42]}
SMALL = {"a": [0.30, 0.20], "b": [0.25, 0.25], "c": [0.10, 0.30]}  # seed 0: a>b>c; seed 1: b>a, tie a=c... see below
SHARE = {"a": 0.0, "b": 0.5, "c": 1.0}


def _results():
    rs = [_rec("large", m, s, v, SHARE[m]) for m, vs in LARGE.items() for s, v in enumerate(vs)]
    rs += [_rec("small", m, s, v, SHARE[m]) for m, vs in SMALL.items() for s, v in enumerate(vs)]
    return rs


def test_pairwise_decision_accuracy_over_small_seeds():
    acc = decision_accuracy(_results(), "small", "large")
    a = acc["acc"]
    # seed 0 orders all 3 pairs as the large scale does; seed 1: b>a wrong, a<c wrong, b<c wrong -> 0/3
    assert a["mixes"] == 3 and a["pairs"] == 3
    assert a["accuracy"]["n"] == 2 and a["accuracy"]["mean"] == pytest.approx(0.5)
    assert a["ceiling"]["mean"] == pytest.approx(1.0)  # the large seeds agree with each other
    # a loss (lower is better) decides the same way: its order is flipped with its sign
    assert acc["loss"]["accuracy"]["mean"] == pytest.approx(0.5)


def test_ties_count_half_and_twins_count_once():
    rs = _results()
    rs = [r for r in rs if not (r["params"]["scale"] == "small" and r["seed"] == 1)]
    rs.append(_rec("small", "a", 1, 0.2, 0.0))
    rs.append(_rec("small", "b", 1, 0.2, 0.5))  # a tie with a: half a hit
    rs.append(_rec("small", "c", 1, 0.1, 1.0))
    rs.append(_rec("small", "twin", 0, 0.9, 0.0, same_as="scale=small__a"))  # reported again, trained once
    acc = decision_accuracy(rs, "small", "large")["acc"]
    assert acc["mixes"] == 3
    assert acc["accuracy"]["mean"] == pytest.approx((1.0 + 2.5 / 3) / 2)


def test_effect_of_x_per_scale_says_whether_its_interval_excludes_zero():
    summ = report.summarise(_results())
    rows = {(e["bench"], e["scale"]): e for e in effects(summ, ["small", "large"], "share", None)}
    big = rows[("acc", "large")]
    assert big["effect"] == pytest.approx(0.41 - 0.61) and big["excludes_zero"]
    assert not rows[("acc", "small")]["excludes_zero"]  # 0.25 -> 0.20 with seeds 0.10 / 0.30: noise


@pytest.mark.slow
def test_a_two_scale_grid_reports_decision_accuracy(tmp_path, tokens):
    base_mix(tmp_path, total_tokens=2048)
    grid = tmp_path / "grid.yaml"
    small = {**TINY_MODEL, "dim": 32, "ffn_dim": 64}
    grid.write_text(yaml.safe_dump({
        "name": "two", "base_mix": "base.yaml", "data_root": str(tokens), "seeds": [0, 1], "nproc": 1, "lanes": 2,
        "scales": {"small": {"model": small, "tokens": 2048}, "large": {"model": TINY_MODEL, "tokens": 4096}},
        "run_config": {"train": {"global_batch": 8, "micro_batch": 8, "tensorboard": False, "export": False},
                       "optim": {"lr": 3e-3, "warmup_steps": 2}, "checkpoint": {"final": False}},
        "vary": [{"sources.synthetic.share": [0.0, 0.5, 1.0], "sources.web.share": [1.0, 0.5, 0.0]}],
        "benchmarks": {"builtin": ["wiki_mc"], "n": 16, "source_windows": 4}, "parallel": "serial",
        "report": {"x": "synthetic_share"}}))
    r = ablate.run(grid, tmp_path / "out", show=False)
    assert r["ran"] == 12 and len(r["results"]) == 12
    steps = {x["params"]["scale"]: x["steps"] for x in r["results"]}
    assert steps["large"] > steps["small"]  # each scale trains on its own token budget
    md = open(r["report"]["report_md"]).read()
    assert "## Decision accuracy" in md and "## Effect of synthetic_share at each scale" in md
    rows = [ln for ln in md.splitlines() if ln.startswith("| loss_web |") and "%" in ln]
    assert rows  # loss on the web source: a benchmark every pair of mixes is ordered on
    summ = json.loads(open(r["report"]["summary_json"]).read())
    assert {c["params"]["scale"] for c in summ["cells"]} == {"small", "large"}


def test_a_scale_without_tokens_is_one_clear_error(tmp_path):
    from factory.core.errors import FactoryError

    base_mix(tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "bad", "base_mix": "base.yaml", "data_root": str(tmp_path), "seeds": [0],
                                    "scales": {"small": {"model": {"preset": "tiny"}}},
                                    "vary": [{"sources.synthetic.share": [0.0, 1.0]}]}))
    with pytest.raises(FactoryError) as e:
        ablate.load_grid(grid)
    assert "scales" in str(e.value) and "tokens" in str(e.value)
