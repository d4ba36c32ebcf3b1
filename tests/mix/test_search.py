"""Mix search on a synthetic objective (a known function of the shares, no training): it finds the
optimum, refuses bounds no mix satisfies, and resumes without re-scoring finished proxies."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from factory.ablate.search import search
from factory.core.errors import FactoryError

OPT = {"web": 0.5, "synthetic": 0.3, "rewrite": 0.2}  # the maximum of sum_i OPT_i log(w_i) on the simplex


def truth(shares: dict[str, float], noise: bool = False) -> float:
    """The known objective; with `noise`, plus run-to-run noise that is a fixed function of the mix."""
    v = sum(OPT[k] * math.log(max(shares[k], 1e-6)) for k in OPT)
    seed = zlib.crc32(json.dumps(shares, sort_keys=True).encode())
    return v + (float(np.random.default_rng(seed).normal(0, 0.005)) if noise else 0.0)


def objective(calls: list, fail_after: int | None = None):
    def run(mixes, folder):
        for j, m in enumerate(mixes):
            if fail_after is not None and len(calls) >= fail_after:
                raise KeyboardInterrupt("interrupted")
            calls.append(m)
            yield j, truth(m, noise=True)

    return run


def write(tmp: Path, data: Path, **over) -> Path:
    mixes = tmp / "mixes"
    mixes.mkdir(exist_ok=True)
    (mixes / "base.yaml").write_text(yaml.safe_dump({
        "name": "base", "total_tokens": 2000, "seq_len": 16, "tokenizer": "tokenizer.json", "seed": 0,
        "sources": [{"name": "web", "path": "web", "kind": "web", "share": 0.4, "max_epochs": 50},
                    {"name": "synthetic", "path": "synthetic", "kind": "synthetic", "share": 0.4, "max_epochs": 50},
                    {"name": "rewrite", "path": "rewrite", "kind": "rewrite", "share": 0.2, "max_epochs": 50}]}))
    spec = {"name": "s1", "base_mix": "base.yaml", "data_root": str(data), "proxies": 20, "seed": 0,
            "vary": {"web": {"min": 0.2, "max": 0.9}, "synthetic": {"min": 0.05, "max": 0.7},
                     "rewrite": {"min": 0.0, "max": 0.5}},
            "target": {"wiki_mc": 1.0}, "proxy": {"tokens": 2000}, **over}
    p = mixes / "search.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_search_finds_the_optimum_of_a_known_objective(data, tmp_path):
    calls: list = []
    rep = search(write(tmp_path, data), tmp_path / "out", objective=objective(calls), show=False)
    assert len(calls) == 20
    got = rep["proposal"]
    assert max(abs(got[k] - OPT[k]) for k in OPT) < 0.05, got
    assert abs(sum(got.values()) - 1.0) < 1e-3
    assert rep["fit"][rep["chosen"]]["spearman"] > 0.8  # held-out rank correlation of the fit
    assert rep["predicted"]["low"] <= truth(got) + 0.02 and truth(got) - 0.02 <= rep["predicted"]["high"]
    assert truth(got) >= max(truth(r["shares"]) for r in rep["observed"]) - 0.01  # at least as good as any proxy
    mix = yaml.safe_load((tmp_path / "mixes" / "s1.yaml").read_text())  # a ready mix file beside the base mix
    assert {s["name"]: s["share"] for s in mix["sources"]} == pytest.approx(got, abs=2e-3)
    from factory.mix.plan import plan

    assert plan(tmp_path / "mixes" / "s1.yaml", data)["phases"][0]["sources"]  # the planner accepts it
    assert (tmp_path / "out" / "fit.png").stat().st_size > 0 and "Spearman" in (tmp_path / "out" / "report.md").read_text()


def test_every_proxy_is_inside_the_bounds_and_the_epoch_limits(data, tmp_path):
    calls: list = []
    spec = write(tmp_path, data, design="dirichlet", proxy={"tokens": 6000},
                 vary={"web": {"min": 0.1, "max": 0.9}, "synthetic": {"min": 0.0, "max": 0.8, "max_epochs": 1.5},
                       "rewrite": {"min": 0.0, "max": 0.6}})
    rep = search(spec, tmp_path / "out", objective=objective(calls), show=False)
    from factory.mix.plan import make_plan
    from factory.mix.spec import mix_from_dict

    base = yaml.safe_load((tmp_path / "mixes" / "base.yaml").read_text())
    for m in calls + [rep["proposal"]]:
        assert 0.1 - 1e-9 <= m["web"] <= 0.9 + 1e-9 and m["rewrite"] <= 0.6 + 1e-9
        mix = {**base, "total_tokens": 6000, "sources": [{**s, "share": m[s["name"]], **(
            {"max_epochs": 1.5} if s["name"] == "synthetic" else {})} for s in base["sources"]]}
        make_plan(mix_from_dict(mix, "proxy"), data)  # strict: raises over max_epochs


@pytest.mark.parametrize("vary, proxy, says", [
    ({"web": {"min": 0.6}, "synthetic": {"min": 0.5}, "rewrite": {}}, {"tokens": 2000}, "minimum shares"),
    ({"web": {"max": 0.3}, "synthetic": {"max": 0.3}, "rewrite": {"max": 0.3}}, {"tokens": 2000}, "largest shares"),
    ({"web": {"max_epochs": 0.5}, "synthetic": {"max_epochs": 0.5}, "rewrite": {"max_epochs": 0.5}},
     {"tokens": 200000}, "max_epochs"),
])
def test_infeasible_bounds_are_refused_naming_the_field(data, tmp_path, vary, proxy, says):
    with pytest.raises(FactoryError) as e:
        search(write(tmp_path, data, vary=vary, proxy=proxy), tmp_path / "out", objective=objective([]), show=False)
    assert says in str(e.value) and "vary" in str(e.value) and "search.yaml" in str(e.value)


def test_an_interrupted_search_resumes_without_rescoring(data, tmp_path):
    calls: list = []
    spec = write(tmp_path, data)
    with pytest.raises(KeyboardInterrupt):
        search(spec, tmp_path / "out", objective=objective(calls, fail_after=7), show=False)
    assert len((tmp_path / "out" / "scores.jsonl").read_text().splitlines()) == 7
    more: list = []
    rep = search(spec, tmp_path / "out", objective=objective(more), show=False)
    assert len(more) == 13 and not [m for m in more if m in calls]
    assert len(rep["observed"]) == 20
    (tmp_path / "again").mkdir()
    whole = search(write(tmp_path / "again", data), tmp_path / "out2", objective=objective([]), show=False)
    assert whole["proposal"] == rep["proposal"]  # the same design and scores give the same proposal
    changed = write(tmp_path, data, proxies=21)
    with pytest.raises(FactoryError, match="another config"):
        search(changed, tmp_path / "out", objective=objective([]), show=False)


def test_bad_search_files_are_one_clear_line(data, tmp_path):
    exe = Path(sys.executable).parent / "factory"
    cases = {"unknown field": ({"proxiez": 3}, "proxiez"), "unknown source": (
        {"vary": {"web": {}, "code": {}}}, "code"), "bad bound": ({"vary": {"web": {"min": 0.8, "max": 0.2},
                                                                          "synthetic": {}}}, "vary.web")}
    for name, (over, says) in cases.items():
        p = write(tmp_path, data, **over)
        r = subprocess.run([str(exe), "mix", "search", str(p), "--out", str(tmp_path / name)], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 2, (name, r.stderr)
        assert "Traceback" not in r.stderr and says in r.stderr and "search.yaml" in r.stderr, (name, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not any((tmp_path / n).exists() and any((tmp_path / n).iterdir()) for n in cases)  # nothing written


def test_the_shipped_search_file_is_valid():
    from factory.ablate.search import load

    root = Path(__file__).parents[2]
    for name in ("search_phi4.yaml", "search_gpu.yaml"):
        cfg = load(root / "mixes/ablations" / name)
        assert cfg.proxies >= 24 and set(cfg.vary) == {"web", "synthetic", "rewrite"} and len(cfg.validate_.seeds) >= 3
        assert (root / "mixes/ablations" / cfg.base_mix).exists()
        assert all((root / "mixes/ablations" / b).exists() for b in cfg.validate_.baselines)
        assert (root / "mixes/ablations" / cfg.base_mix).parent / f"{cfg.name}.yaml" != root / "mixes/ablations" / name


def test_runs_trained_elsewhere_are_put_where_the_search_looks(tmp_path):
    """Records matched to planned runs by cell and seed land in their eval.json once; records no
    planned run matches, bad JSON and records without scores are refused naming file and line."""
    from factory.ablate.search.transfer import import_results

    o = tmp_path / "out"
    runs = o / "proxies" / "runs"
    runs.mkdir(parents=True)
    dest = runs / "cells" / "mix=0" / "seed1" / "eval.json"
    (runs / "tasks.json").write_text(json.dumps({"tasks": [{"cell": "mix=0", "seed": 1, "eval_json": str(dest)}]}))
    rec = {"cell": "mix=0", "seed": 1, "params": {"mix": "0"}, "scores": {"wiki_mc": {"score": 0.4}}}
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(rec) + "\n\n")
    assert import_results(o, [good]) == 1 and json.loads(dest.read_text())["scores"] == rec["scores"]
    assert import_results(o, [good]) == 0  # already there: kept as it is
    folder = tmp_path / "back" / "cells" / "mix=0" / "seed1"
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps(rec))
    assert import_results(o, [tmp_path / "back"]) == 0  # a folder of eval.json files reads the same
    for lines, says in (([rec, {**rec, "cell": "mix=9"}], "good2.jsonl:2"), (["{oops"], "not JSON"),
                        ([{"cell": "mix=0", "seed": 1}], "scores")):
        bad = tmp_path / "good2.jsonl"
        bad.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
        with pytest.raises(FactoryError) as e:
            import_results(o, [bad])
        assert says in str(e.value) and "good2.jsonl" in str(e.value)
    with pytest.raises(FactoryError, match="not found"):
        import_results(o, [tmp_path / "missing.jsonl"])


def test_results_of_another_search_are_one_clear_line(data, tmp_path):
    exe = Path(sys.executable).parent / "factory"
    stray = tmp_path / "stray.jsonl"
    stray.write_text(json.dumps({"cell": "mix=3", "seed": 0, "scores": {"wiki_mc": {"score": 0.5}}}) + "\n")
    r = subprocess.run([str(exe), "mix", "search", str(write(tmp_path, data)), "--out", str(tmp_path / "o"), "--results",
                        str(stray)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "stray.jsonl:1" in r.stderr and "not a run this search planned" in r.stderr


def test_a_search_named_like_its_file_is_refused(data, tmp_path):
    p = write(tmp_path, data, name="search")  # the proposal search.yaml would land on the search file
    with pytest.raises(FactoryError, match="over this search file"):
        search(p, tmp_path / "out", objective=objective([]), show=False)


def test_a_scale_s_trainer_settings_go_over_the_search_s_section_by_section():
    from factory.core.merge import deep_merge as _merge

    got = _merge({"optim": {"lr": 1e-3, "warmup_steps": 20}, "train": {"compile": True}}, {"optim": {"lr": 2e-3}})
    assert got == {"optim": {"lr": 2e-3, "warmup_steps": 20}, "train": {"compile": True}}
