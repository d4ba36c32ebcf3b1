"""`factory curate calibrate`: the filters against labels with a known answer. A planted set: the
defective documents are short (18-28 words), the clean ones long (35-60), and a random half of all
of them carries a planted phrase the leakage filter drops. So the length filter at 30 words drops
exactly the defective ones, the leakage filter drops at random, and a cross-validated choice from
today's 10 words has to find 30 (and turn the random filter off)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from factory.core.errors import FactoryError
from factory.curate import config as C
from factory.curate.calibrate import calibrate, read_labels
from tests.clihelp import cli, one_error

from .corpus import syn, write_stage

WORDS = ("the river runs past old stone bridges and green fields where farmers grow wheat barley and beans "
         "while children walk to school along the quiet road near the market town").split()
PLANT = "a purple zebra crossed the bridge"


def text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def planted(tmp_path: Path, clean: int = 20, bad: int = 20) -> tuple[str, Path, dict[str, bool]]:
    """(generated stage folder, labels.jsonl, id -> defective)."""
    rng = random.Random(7)
    rows, truth = [], {}
    for i in range(clean + bad):
        defective = i >= clean
        t = text(rng, rng.randint(12, 22) if defective else rng.randint(35, 60))
        if rng.random() < 0.5:
            t += " " + PLANT.capitalize() + "."  # 6 words more: a defective one stays under 30
        r = syn(t, i)
        rows.append(r)
        truth[r["id"]] = defective
    gen = write_stage(tmp_path / "generated", rows)
    labels = tmp_path / "labels.jsonl"
    with open(labels, "w") as f:
        for k, (doc, bad_) in enumerate(truth.items()):
            label = ["unfaithful", "meta", "truncated", "repetitive", "other"][k % 5] if bad_ else "clean"
            f.write(json.dumps({"id": doc, "label": label, "note": "", "reviewer": "a", "time": "t"}) + "\n")
    return gen, labels, truth


def config(tmp_path: Path, min_words: int) -> str:
    """Today's config: every filter off but length (min_words) and leakage (the planted phrase)."""
    data = C.load(None).model_dump(mode="json")
    for name, sec in data["filters"].items():
        if isinstance(sec, dict) and "enabled" in sec:
            sec["enabled"] = name in ("length", "leakage")
    data["filters"]["length"]["min_words"] = min_words
    data["filters"]["leakage"].update(instruction_phrases=[PLANT], recipe_phrases=False)
    path = tmp_path / f"today_{min_words}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture(scope="module")
def planted_set(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("calibrate")
    return (tmp, *planted(tmp))


def test_exact_filter_gets_precision_and_recall_one_and_a_random_one_is_chance(planted_set):
    tmp, gen, labels, truth = planted_set
    rep = calibrate(str(labels), gen, out=str(tmp / "exact"), config=config(tmp, 30), folds=0, plot=False).report
    base = sum(truth.values()) / len(truth)
    length, leak = rep["filters"]["length"], rep["filters"]["leakage"]
    assert (length["precision"], length["recall"], length["verdict"]) == (1.0, 1.0, "better than chance")
    assert length["drops"] == sum(truth.values()) and length["clean_dropped"] == 0
    assert 10 <= leak["drops"] <= 30 and abs(leak["precision"] - base) < 0.2, leak
    assert leak["verdict"] == "no better than chance" and leak["p_value"] > 0.05
    assert rep["labels"]["clean"] == 20 and rep["labels"]["defective"] == 20 and rep["chosen"] is None
    # the sweep of min_words: its Pareto front holds 30 (every defective one gone, every clean one kept,
    # with the leakage filter still on at today's settings)
    (sw,) = [s for s in rep["sweeps"] if s["knob"] == "length.min_words"]
    at30 = next(p for p in sw["points"] if p["value"] == 30)
    assert at30["defect_share"] == 0.0 and at30["pareto"] and at30["filter_precision"] == 1.0


def test_cross_validated_choice_finds_the_planted_threshold_and_writes_a_usable_config(planted_set):
    tmp, gen, labels, truth = planted_set
    res = calibrate(str(labels), gen, out=str(tmp / "cv"), config=config(tmp, 10), folds=4)
    rep = res.report
    cv = rep["cross_validation"]
    assert all("filters.length.min_words=30" in f["set"] for f in cv["per_fold"]), cv["per_fold"]
    assert cv["held_out"]["defect_share"] == 0.0 and cv["held_out"]["clean_recall"] == 1.0 and cv["meets_target"]
    assert cv["today"]["defect_share"] > 0.4  # today's 10 words keep every defective one the random filter lets through
    assert "filters.length.min_words=30" in rep["chosen"]["set"]
    assert "filters.leakage.enabled=false" in rep["chosen"]["set"]
    cfg = C.load(res.files["config"])  # `factory curate FILE` reads it
    assert cfg.filters.length.min_words == 30 and not cfg.filters.leakage.enabled
    assert Path(res.files["config"]).parent == tmp / "cv" and Path(res.files["plot"]).stat().st_size > 5000
    assert json.loads(Path(res.files["report"]).read_text())["chosen"]["set"] == rep["chosen"]["set"]


def test_labels_several_reviewers_and_bad_lines(tmp_path):
    p = tmp_path / "labels.jsonl"
    rows = [{"id": "d1", "label": "clean", "reviewer": "a"}, {"id": "d1", "label": "meta", "reviewer": "b"},
            {"id": "d2", "label": "clean", "reviewer": "a"}, {"id": "d2", "label": "clean", "reviewer": "b"},
            {"id": "d3", "label": "meta", "reviewer": "a"}, {"id": "d3", "label": "clean", "reviewer": "a"}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n{torn\n")
    got = read_labels(str(p))
    assert got["d1"]["defective"] and not got["d2"]["defective"] and not got["d3"]["defective"]  # last per reviewer
    assert not read_labels(str(p), reviewer="a")["d1"]["defective"]
    with pytest.raises(FactoryError, match="no labels by reviewer 'c'"):
        read_labels(str(p), reviewer="c")
    p.write_text("{torn\n")
    with pytest.raises(FactoryError, match=r"no labels in this file \(1 unreadable line"):
        read_labels(str(p))


def test_no_labeled_document_in_generated_is_one_error(planted_set, tmp_path):
    _, gen, _, _ = planted_set
    p = tmp_path / "labels.jsonl"
    p.write_text(json.dumps({"id": "nope", "label": "clean", "reviewer": "a"}) + "\n")
    with pytest.raises(FactoryError, match="none of the 1 labeled documents is in") as e:
        calibrate(str(p), gen, folds=0)
    assert "--in" in str(e.value)


def test_bad_inputs_are_one_line_with_exit_code_2(planted_set, tmp_path):
    _, gen, labels, truth = planted_set
    one_error(cli("curate", "calibrate", str(tmp_path / "missing.jsonl"), "--in", gen),
              "missing.jsonl", "labels file not found", "factory review")
    few = tmp_path / "few.jsonl"  # 3 clean, 20 defective
    keep = [ln for ln in labels.read_text().splitlines() if '"clean"' not in ln or ln.split('"id": "')[1][:20] in
            [d for d, b in truth.items() if not b][:3]]
    few.write_text("\n".join(keep) + "\n")
    line = one_error(cli("curate", "calibrate", str(few), "--in", gen), "few.jsonl",
                     "5-fold cross-validation needs at least 5 clean and 5 defective", "3 clean, 20 defective")
    assert "label 2 more clean document(s), or pass --folds 3" in line
    assert not (tmp_path / "calibration.json").exists()  # refused before writing anything


def test_a_process_that_read_parquet_exits_with_its_own_code(planted_set):
    """pyarrow 26's read_table over a file object leaves threads that abort the interpreter at exit now and
    then ("terminate called without an active exception"): the stages read through ParquetFile instead."""
    import subprocess
    import sys

    _, gen, labels, _ = planted_set
    code = ("import sys; from factory.curate.calibrate import read_labels, read_rows; "
            f"from factory.core.stage import read_docs; read_rows({gen!r}, set(read_labels({str(labels)!r}, None))); "
            f"read_docs({gen!r}); sys.exit(2)")
    for _ in range(3):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "terminate called" not in r.stderr, r.stderr[-2000:]


START, END = "<!-- calibrate-commands -->", "<!-- /calibrate-commands -->"


@pytest.mark.slow  # the command in a fresh process, on the default filters (about 15 s)
def test_readme_calibrate_command_runs_as_written(tmp_path):
    """The calibrate command of the guide's review page (docs/guide/review.md), as written, on a run in
    the demo's layout that a reviewer labeled in `factory review` (runs/demo/labels.jsonl); its curate
    stage ran today's defaults."""
    import os
    import shlex
    import subprocess

    from tests.readme_blocks import BIN, readme_blocks
    from tests.review.runfolder import make_run

    (block,) = readme_blocks(START, END)
    cmds = [shlex.split(ln.split("#", 1)[0]) for ln in block.splitlines() if ln.split("#", 1)[0].strip()]
    assert cmds and all(c[:3] == ["factory", "curate", "calibrate"] for c in cmds)
    run = tmp_path / "runs" / "demo"
    truth = make_run(run, seeds=10)
    m = json.loads((run / "curated" / "manifest.json").read_text())
    m["config"] = {**C.load(None).model_dump(mode="json"), "dedup": {"reference": [str(run / "seeds")]}}
    (run / "curated" / "manifest.json").write_text(json.dumps(m))
    names = {"kept": "clean", "unfaithful": "unfaithful", "meta_commentary": "meta", "truncated": "truncated",
             "gopher_quality": "other"}
    with open(run / "labels.jsonl", "w") as f:
        for t in truth["requests"]:
            label = names.get(t["reason"] or t["status"])
            if t["id"] and label:
                f.write(json.dumps({"id": t["id"], "label": label, "note": "", "reviewer": "r", "time": "t"}) + "\n")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "COLUMNS": "200"}
    for argv in cmds:
        p = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stdout + p.stderr
        labels_dir = (tmp_path / argv[3]).parent
        rep = json.loads((labels_dir / "calibration.json").read_text())
        assert rep["labels"]["found"] == rep["labels"]["labeled"] and rep["cross_validation"]["folds"] == 5
        assert C.load(labels_dir / "curate_calibrated.yaml") and (labels_dir / "calibration.png").exists()
        assert "kept set" in p.stdout + p.stderr and "calibrated, held out (5-fold)" in p.stdout + p.stderr


def test_llm_judge_is_calibrated_like_any_filter(tmp_path, teacher):
    """The judge step against a real OpenAI-compatible endpoint (the local teacher as the judge):
    its drop decision and its score threshold are reported against the labels, its verdicts cached."""
    from factory.seeds.sources import wiki_rows

    from .corpus import lesson, records

    recs = [r for r in records(40) if len(r["extract"].split()) < 80][:6]
    seeds = write_stage(tmp_path / "seeds", wiki_rows(records=recs), "seeds", shards=1)
    rows = [syn(lesson(r) if i % 2 else "Here is the rewritten text: " + text(random.Random(i), 30), i,
                recipe="distill", seed=f"wiki:{r['title']}", kind="rewrite") for i, r in enumerate(recs)]
    gen = write_stage(tmp_path / "generated", rows, shards=1)
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"id": r["id"], "label": "clean" if i % 2 else "unfaithful",
                                          "reviewer": "a"}) + "\n" for i, r in enumerate(rows)))
    data = C.load(None).model_dump(mode="json")
    for name, sec in data["filters"].items():
        if isinstance(sec, dict) and "enabled" in sec:
            sec["enabled"] = False
    data["filters"]["faithfulness"]["seeds"] = [seeds]
    data["filters"]["judge"].update(enabled=True, min_score=4, batch=3, teacher={
        "endpoints": [{"base_url": teacher.endpoints[0], "model": teacher.model, "api_key_env": teacher.api_key_env}],
        "sampling": {"temperature": 0.0, "max_tokens": 40}})
    cfg = tmp_path / "judge.yaml"
    cfg.write_text(yaml.safe_dump(data))
    rep = calibrate(str(labels), gen, out=str(tmp_path / "out"), config=str(cfg), folds=2, plot=False).report
    judge = rep["filters"]["judge"]
    assert judge["enabled"] and judge["drops"] + (6 - judge["drops"]) == 6
    assert set(judge) >= {"precision", "recall", "verdict", "p_value"}
    (sw,) = [s for s in rep["sweeps"] if s["knob"] == "judge.min_score"]
    assert [p["value"] for p in sw["points"]] == [1, 2, 3, 4, 5] and sw["points"][0]["kept"] == 6  # 1: keeps all
    assert any((tmp_path / "out" / "judge_cache").rglob("*")), "verdicts are cached beside the report"
    assert rep["cross_validation"]["held_out"]["clean"] == 3
