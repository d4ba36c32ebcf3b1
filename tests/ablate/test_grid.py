"""Grid expansion, interval math, the report, and reruns that skip finished runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from factory import ablate
from factory.ablate import report
from factory.core.errors import FactoryError

BASE = {"name": "base", "total_tokens": 4096, "seq_len": 64, "tokenizer": "tokenizer.json", "seed": 0,
        "sources": [{"name": "web", "path": "web", "kind": "web", "share": 0.5, "max_epochs": 4},
                    {"name": "synthetic", "path": "synthetic", "kind": "synthetic", "share": 0.5}]}
SHARES = {"sources.synthetic.share": [0.0, 0.5, 1.0], "sources.web.share": [1.0, 0.5, 0.0]}


def _grid(tmp_path: Path, **over) -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "data").mkdir(exist_ok=True)
    g = {"name": "g", "base_mix": "base.yaml", "data_root": str(tmp_path / "data"), "seeds": [0, 1, 2],
         "vary": [SHARES, {"sources.synthetic.max_epochs": [2, 8]}], "parallel": "serial",
         "benchmarks": {"builtin": [], "source_loss": False}, **over}
    p = tmp_path / "grid.yaml"
    p.write_text(yaml.safe_dump(g, sort_keys=False))
    return p


def test_groups_zip_inside_and_cross_between(tmp_path):
    cells = ablate.expand(_grid(tmp_path))
    assert len(cells) == 6
    assert [c["params"] for c in cells[:2]] == [
        {"synthetic_share": 0.0, "web_share": 1.0, "synthetic_max_epochs": 2},
        {"synthetic_share": 0.0, "web_share": 1.0, "synthetic_max_epochs": 8}]
    mid = next(c for c in cells if c["params"]["synthetic_share"] == 0.5 and c["params"]["synthetic_max_epochs"] == 8)
    src = {s["name"]: s for s in mid["mix"]["sources"]}
    assert src["synthetic"]["max_epochs"] == 8 and src["web"]["share"] == 0.5 and src["web"]["max_epochs"] == 4
    first = cells[0]["mix"]  # share 0 sources are left out of the cell's mix
    assert [s["name"] for s in first["sources"]] == ["web"]
    assert len({c["id"] for c in cells}) == 6 and len({c["mix"]["name"] for c in cells}) == 6


@pytest.mark.parametrize("mode,n", [("zip", 3), ("cartesian", 9)])
def test_one_mapping_zipped_or_cartesian(tmp_path, mode, n):
    vary = {"seq_len": [32, 64, 128], "total_tokens": [2048, 4096, 8192]}
    cells = ablate.expand(_grid(tmp_path, vary=vary, mode=mode, labels={"total_tokens": "tokens"}))
    assert len(cells) == n
    assert set(cells[0]["params"]) == {"seq_len", "tokens"}
    assert cells[-1]["mix"]["total_tokens"] == 8192 and cells[-1]["mix"]["seq_len"] == 128


def test_cells_that_break_the_mix_are_errors(tmp_path):
    # synthetic share 1 with web still 0.5: the shares no longer sum to 1
    p = _grid(tmp_path, vary=[{"sources.synthetic.share": [1.0]}])
    with pytest.raises(FactoryError) as e:
        ablate.expand(p)
    assert str(p) in str(e.value) and "sum" in str(e.value)


@pytest.mark.parametrize("field,why", [
    ("sources.synthetic.shares", "shares"),
    ("sources.code.share", "code"),
    ("mixture.share", "mixture"),
])
def test_bad_field_names_file_and_field(tmp_path, field, why):
    p = _grid(tmp_path, vary=[{field: [0.1, 0.2]}])
    with pytest.raises(FactoryError) as e:
        ablate.expand(p)
    assert e.value.where == str(p) and e.value.field == f"vary.{field}" and why in str(e.value)


def test_zipped_lists_of_other_lengths(tmp_path):
    p = _grid(tmp_path, vary=[{"sources.synthetic.share": [0.0, 1.0], "sources.web.share": [1.0, 0.5, 0.0]}])
    with pytest.raises(FactoryError) as e:
        ablate.expand(p)
    assert e.value.field == "vary[0]"


def test_grid_schema_errors_name_the_field(tmp_path):
    p = _grid(tmp_path, seeds=[])
    with pytest.raises(FactoryError) as e:
        ablate.load_grid(p)
    assert e.value.field == "seeds"


def test_unknown_builtin_benchmark_names_the_field_and_the_choices(tmp_path):
    p = _grid(tmp_path, benchmarks={"builtin": ["wiki_mc", "trivia"]})
    with pytest.raises(FactoryError) as e:
        ablate.load_grid(p)
    assert e.value.field == "benchmarks.builtin" and "trivia" in str(e.value) and "arith_mc" in str(e.value)


def test_t_interval_math():
    assert report.t975(1) == pytest.approx(12.706)
    assert report.t975(4) == pytest.approx(2.776)
    assert report.t975(60) == pytest.approx(2.000, abs=2e-3)
    assert report.t975(1000) == pytest.approx(1.962, abs=2e-3)
    s = report.interval([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["sd"] == pytest.approx(1.0)
    assert s["half"] == pytest.approx(4.303 / math.sqrt(3), rel=1e-4)
    assert math.isnan(report.interval([0.5])["half"])
    d, h = report.welch(report.interval([0.1, 0.2, 0.3]), report.interval([0.5, 0.6, 0.7]))
    assert d == pytest.approx(0.4) and h == pytest.approx(2.776 * math.sqrt(2 * 0.01 / 3), rel=1e-3)


def _res(cell, seed, params, **scores):
    return {"cell": cell, "seed": seed, "params": params,
            "scores": {b: {"score": v, "n": 100, "stderr": 0.04, "higher_is_better": b != "loss"} for b, v in scores.items()}}


def test_report_for_a_grid_and_for_two_mixes_one_seed(tmp_path):
    res = [_res(f"s{x}_e{e}", k, {"synthetic_share": x, "epochs": e}, acc=0.3 + 0.1 * x - 0.01 * k, loss=4 - x + 0.01 * k)
           for x in (0, 0.5, 1) for e in (1, 4) for k in range(3)]
    out = report.write(res, tmp_path / "grid", x="synthetic_share", group="epochs")
    md = Path(out["report_md"]).read_text()
    assert Path(out["png"]).stat().st_size > 5000
    assert "| epochs | synthetic_share |" in Path(out["table_md"]).read_text()
    assert "acc (epochs=1): synthetic_share 0 -> 1: +10.00 points" in md and ": better" in md
    summ = json.loads(Path(out["summary_json"]).read_text())
    assert summ["snr"]["acc"]["noise_kind"] == "seed sd" and summ["snr"]["acc"]["snr"] > 1

    two = [_res("web_only", 0, {"mix": "web_only"}, acc=0.31), _res("phi4", 0, {"mix": "phi4"}, acc=0.27)]
    out2 = report.write(two, tmp_path / "demo", x="mix")
    tbl = Path(out2["table_md"]).read_text()
    assert "31.0 ± 7.8" in tbl  # one seed: the interval comes from the item standard error
    assert Path(out2["png"]).exists()
    with pytest.raises(ValueError):
        report.write([], tmp_path / "none")


def _fake_plan(mix_path, data_root):
    mix = yaml.safe_load(Path(mix_path).read_text())
    return {"mix": mix["name"], "seq_len": 64, "seed": 0, "tokenizer": "t.json", "vocab_size": 32,
            "total_tokens": mix["total_tokens"], "phases": []}


class FakeTrainer:
    """A fast stand-in for the real trainer (dependency injection in this unit test only)."""

    def __init__(self, fail_on: str | None = None):
        self.calls, self.fail_on = [], fail_on

    def __call__(self, cfg: dict) -> str:
        if self.fail_on and self.fail_on in cfg["data"]["plan"]:
            raise RuntimeError("injected training failure")
        self.calls.append(cfg)
        Path(cfg["run_dir"]).mkdir(parents=True, exist_ok=True)
        return cfg["run_dir"]


def _fake_eval(run_dir, benches, max_items, batch_size):
    plan = json.loads((Path(run_dir).parent / "plan.json").read_text())
    return {"acc": {"score": 0.25 + plan["seed"] / 100, "n": 10, "stderr": 0.1, "higher_is_better": True}}


def test_rerun_skips_finished_runs_and_redoes_missing_ones(tmp_path):
    grid = _grid(tmp_path, seeds=[0, 1, 2], vary=[SHARES])
    out = tmp_path / "out"
    fake = FakeTrainer()
    r1 = ablate.run(grid, out, train_fn=fake, eval_fn=_fake_eval, plan_fn=_fake_plan, show=False)
    assert r1["ran"] == 9 and r1["skipped"] == 0 and len(fake.calls) == 9
    assert len((out / "results.jsonl").read_text().splitlines()) == 9
    c = fake.calls[0]
    assert c["train"]["steps"] == 0 and c["model"] == {"preset": "tiny"} and c["data"]["source"] == "plan"
    assert {json.loads(Path(x["data"]["plan"]).read_text())["seed"] for x in fake.calls} == {0, 1, 2}
    for name in ("mix.yaml", "plan.json"):
        assert (out / "cells" / r1["results"][0]["cell"] / name).exists()

    fake2 = FakeTrainer()
    r2 = ablate.run(grid, out, train_fn=fake2, eval_fn=_fake_eval, plan_fn=_fake_plan, show=False)
    assert r2["ran"] == 0 and r2["skipped"] == 9 and fake2.calls == []

    victim = next(out.glob("cells/*/seed1/eval.json"))
    victim.unlink()
    fake3 = FakeTrainer()
    r3 = ablate.run(grid, out, train_fn=fake3, eval_fn=_fake_eval, plan_fn=_fake_plan, show=False)
    assert r3["ran"] == 1 and len(fake3.calls) == 1 and fake3.calls[0]["seed"] == 1
    assert Path(r3["report"]["png"]).exists() and "synthetic_share" in Path(r3["report"]["table_md"]).read_text()


def test_a_failing_run_keeps_the_finished_ones(tmp_path):
    grid = _grid(tmp_path, seeds=[0], vary=[SHARES])
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="injected"):
        ablate.run(grid, out, train_fn=FakeTrainer(fail_on="synthetic_share=1.0"), eval_fn=_fake_eval,
                   plan_fn=_fake_plan, show=False)
    assert len(list(out.glob("cells/*/seed0/eval.json"))) == 2
    fake = FakeTrainer()
    r = ablate.run(grid, out, train_fn=fake, eval_fn=_fake_eval, plan_fn=_fake_plan, show=False)
    assert r["ran"] == 1 and r["skipped"] == 2


def test_missing_data_root(tmp_path):
    grid = _grid(tmp_path, data_root=str(tmp_path / "nope"))
    with pytest.raises(FactoryError) as e:
        ablate.run(grid, tmp_path / "o", train_fn=FakeTrainer(), eval_fn=_fake_eval, plan_fn=_fake_plan, show=False)
    assert e.value.field == "data_root"


def test_identical_cells_train_once_and_report_twice(tmp_path):
    grid = _grid(tmp_path, seeds=[0, 1])  # share 0 drops synthetic, so its max_epochs no longer matters
    fake = FakeTrainer()
    r = ablate.run(grid, tmp_path / "out", train_fn=fake, eval_fn=_fake_eval, plan_fn=_fake_plan, show=False)
    assert len(fake.calls) == 10 and len(r["results"]) == 12
    twins = [x for x in r["results"] if x["params"]["synthetic_share"] == 0.0]
    assert len(twins) == 4 and {x["params"]["synthetic_max_epochs"] for x in twins} == {2, 8}


def test_subset_keeps_the_first_documents(tmp_path):
    import numpy as np

    src = tmp_path / "data" / "syn"
    src.mkdir(parents=True)
    docs = [[5, 6, 0], [7, 0], [8, 9, 10, 0], [11, 0]]
    for k, part in enumerate((docs[:2], docs[2:])):
        toks = np.array([t for d in part for t in d], dtype=np.uint16)
        toks.tofile(src / f"syn_{k:05d}_unshuffled.ds")
        np.cumsum([len(d) for d in part]).astype("<u8").tofile(src / f"syn_{k:05d}_unshuffled.ds.index")
        (src / f"syn_{k:05d}_unshuffled.ds.metadata").write_text(f"tok.json|2\n{len(toks)}\n")
    (src / "source.json").write_text(json.dumps({"docs": 4, "tokens": 11, "token_size": 2, "tokenizer_sha256": "abc"}))
    dst = ablate.make_subset(tmp_path / "data", "syn_half", ablate.SubsetConfig(source="syn", fraction=0.75))
    ds = next(dst.glob("*.ds"))
    assert np.fromfile(ds, dtype=np.uint16).tolist() == [5, 6, 0, 7, 0, 8, 9, 10, 0]
    assert np.fromfile(f"{ds}.index", dtype="<u8").tolist() == [3, 5, 9]
    info = json.loads((dst / "source.json").read_text())
    assert info["docs"] == 3 and info["tokens"] == 9 and info["tokenizer_sha256"] == "abc"
    assert Path(f"{ds}.metadata").read_text().splitlines()[0] == "tok.json|2"


def test_plan_info_gives_teacher_share_and_epochs():
    plan = {"phases": [{"sources": [{"name": "web", "kind": "web", "tokens": 300, "epochs": 0.5},
                                    {"name": "synthetic", "kind": "synthetic", "tokens": 100, "epochs": 4.0}]}]}
    assert ablate.plan_info(plan) == {"synthetic_share": 0.25, "epochs_web": 0.5, "epochs_synthetic": 4.0}


def test_progress_lines_give_an_eta_from_the_first_finished_run(tmp_path, capsys, monkeypatch):
    """Not a terminal: plain progress lines; once a run has finished the ETA is a time (runs take
    minutes, so an estimate that waits for several runs inside 30 s would never show one)."""
    import re
    import time

    monkeypatch.setenv("FACTORY_PROGRESS_EVERY_S", "0.1")
    fake = FakeTrainer()

    def slow(cfg):
        time.sleep(0.6)
        return fake(cfg)

    ablate.run(_grid(tmp_path, seeds=[0], vary=[SHARES]), tmp_path / "out", train_fn=slow, eval_fn=_fake_eval,
               plan_fn=_fake_plan, show=True)
    lines = re.findall(r"^ablation runs (\d)/3 \(\d+%\) [\d.]+ runs/s elapsed \d:\d\d:\d\d eta (\S+)", capsys.readouterr().err, re.M)
    assert {"0", "1", "2", "3"} <= {d for d, _ in lines}, lines
    assert all(re.fullmatch(r"\d:\d\d:\d\d", eta) for d, eta in lines if d != "0"), lines
    assert lines[-1] == ("3", "0:00:00")
