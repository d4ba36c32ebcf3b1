"""Built-in benchmarks: deterministic, same-topic distractors, verified arithmetic, held-out titles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from factory.core.errors import FactoryError
from factory.evaluate import sets as evalsets
from train.eval import load_benchmark

TOPICS = ["Arts", "Geography", "Mathematics"]


def _records(n_per_topic: int = 12) -> list[dict]:
    recs = []
    for t in TOPICS:
        for i in range(n_per_topic):
            title = f"{t} thing {i}"
            recs.append({"title": title, "topic": t, "description": f"{t.lower()} description number {i}",
                         "extract": f"{title} is a well known example of the {t.lower()} field studied by many scholars "
                                    f"in the region called {t}land{chr(97 + i % 26)}{chr(97 + i // 26)}. It has more sentences."})
    return recs


def _items(d: str | Path) -> list[dict]:
    return [json.loads(ln) for ln in (Path(d) / "data.jsonl").read_text().splitlines()]


def test_same_arguments_same_files(tmp_path):
    a = evalsets.build(tmp_path / "a", seed=3, n=20, records=_records())
    b = evalsets.build(tmp_path / "b", seed=3, n=20, records=_records())
    c = evalsets.build(tmp_path / "c", seed=4, n=20, records=_records())
    for name in a["dirs"]:
        fa, fb, fc = (Path(x["dirs"][name]) / "data.jsonl" for x in (a, b, c))
        assert fa.read_bytes() == fb.read_bytes()
        assert fa.read_bytes() != fc.read_bytes()


def test_files_carry_question_choices_answer_and_load(tmp_path):
    made = evalsets.build(tmp_path, n=15, records=_records())
    assert set(made["dirs"]) == {"wiki_mc", "wiki_cloze", "wiki_cloze_mc", "arith_mc", "arith_em"}
    for name, d in made["dirs"].items():
        rows = _items(d)
        assert rows and all({"question", "choices", "answer", "answer_text"} <= set(r) for r in rows)
        spec, items = load_benchmark(d)
        assert spec["name"] == name and len(items) == len(rows)
        assert yaml.safe_load((Path(d) / "benchmark.yaml").read_text())["n"] == len(rows)


def test_mc_distractors_come_from_the_same_topic(tmp_path):
    recs = _records()
    topic_of_desc = {r["description"]: r["topic"] for r in recs}
    d = evalsets.build(tmp_path, n=30, records=recs, benches=["wiki_mc", "wiki_cloze_mc"])["dirs"]
    for r in _items(d["wiki_mc"]):
        assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4
        assert r["choices"][r["answer"]] == r["answer_text"]
        assert {topic_of_desc[c] for c in r["choices"]} == {r["topic"]}
    words = {}
    for rec in recs:
        words[rec["extract"].split(".")[0].split()[-1]] = rec["topic"]
    for r in _items(d["wiki_cloze_mc"]):
        assert {words[c] for c in r["choices"]} == {r["topic"]}
        assert r["question"].split()[-1] == "called"  # the prompt stops before the answer word


def test_answer_positions_are_balanced(tmp_path):
    d = evalsets.build(tmp_path, n=200, records=_records(40), benches=["wiki_mc"])["dirs"]["wiki_mc"]
    pos = [r["answer"] for r in _items(d)]
    assert all(pos.count(k) > len(pos) / 8 for k in range(4))


def test_arithmetic_answers_are_verified(tmp_path):
    d = evalsets.build(tmp_path, n=100, records=_records(), benches=["arith_mc", "arith_em"])["dirs"]
    for r in _items(d["arith_mc"]):
        assert int(r["choices"][r["answer"]]) == evalsets.safe_eval(r["expr"])
        assert len(set(r["choices"])) == 4
    em = _items(d["arith_em"])
    assert len({r["question"] for r in em}) == 100
    assert all(int(r["answer"]) == evalsets.safe_eval(r["expr"]) for r in em)
    with pytest.raises(ValueError):
        evalsets.safe_eval("__import__('os')")


def test_holdout_titles_make_val_and_never_items(tmp_path):
    recs = _records()
    hold = [r["title"] for r in recs[::5]]
    made = evalsets.build(tmp_path, holdout_titles=hold, n=50, records=recs)
    assert "wiki_val" in made["dirs"]
    assert not set(hold) & set(made["titles"])
    assert {r["subject"] for r in _items(made["dirs"]["wiki_val"])} <= set(hold)
    only = evalsets.build(tmp_path / "t", titles=[r["title"] for r in recs[:24]], n=50, records=recs, benches=["wiki_mc"])
    assert set(only["titles"]) <= {r["title"] for r in recs[:24]}


def test_unknown_benchmark_and_empty_build(tmp_path):
    with pytest.raises(FactoryError, match="benches"):
        evalsets.build(tmp_path, benches=["trivia"], records=_records())
    with pytest.raises(FactoryError, match="wiki_mc"):
        evalsets.build(tmp_path, benches=["wiki_mc"], records=_records()[:3])


def test_real_corpus_items(tmp_path):
    from factory.seeds.sources import load_wiki_summaries

    try:
        recs = load_wiki_summaries()
    except FactoryError:
        pytest.skip("the offline Wikipedia corpus package is not installed")
    topic = {r["description"]: r["topic"] for r in recs if r["description"]}
    made = evalsets.build(tmp_path, n=100, benches=["wiki_mc", "wiki_cloze"])
    mc = _items(made["dirs"]["wiki_mc"])
    assert len(mc) == 100
    # descriptions can repeat across topics ("Species of bird"); each must exist in the item's topic
    by_topic = {}
    for r in recs:
        by_topic.setdefault(r["topic"], set()).add(r["description"])
    assert all(set(r["choices"]) <= by_topic[r["topic"]] for r in mc)
    assert len(_items(made["dirs"]["wiki_cloze"])) == 100
    assert topic
