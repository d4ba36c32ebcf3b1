"""Seed curation: passages, scores, the self-trained classifier, topic balance, Q&A and code seeds."""

import json
from collections import Counter

import numpy as np
import pytest

from factory.core.errors import FactoryError
from factory.core.schema import extra, make_doc, to_table
from factory.recipes.sandbox import run_python
from factory.seeds.curate import (
    HashedLogReg,
    SeedCurateConfig,
    cluster_topics,
    code_rows,
    curate,
    heuristic_scores,
    qa_rows,
    split_passages,
)

EDU = ("Photosynthesis is the process by which green plants convert light energy into chemical energy. "
       "It takes place in the chloroplasts, which contain chlorophyll. Because light drives the reaction, "
       "the rate of photosynthesis increases with light intensity until another factor limits it. "
       "As a result, plants grown in shade produce less glucose than plants in full sun.")
SPAM = "omg click here!!! subscribe to my blog lol you will love it, buy now and follow us at http://x.y for more"


def test_split_passages_bounds():
    para = " ".join(f"Sentence number {i} is about a topic." for i in range(120))  # ~840 words, one paragraph
    ps = split_passages(para + "\n\nTiny.\n\n" + EDU, min_words=30, max_words=200)
    assert len(ps) >= 5
    assert all(30 <= len(p.split()) <= 200 for p in ps)
    assert split_passages("too short") == []


def test_heuristics_rank_sensibly():
    edu, spam = heuristic_scores(EDU), heuristic_scores(SPAM)
    assert edu["edu"] > spam["edu"] + 0.2
    assert edu["reasoning"] > heuristic_scores("The cat sat. The dog ran. The sun shone.")["reasoning"]


def test_hashed_logreg_learns_and_roundtrips(tmp_path):
    rng = np.random.default_rng(0)
    good = ["theorem proof lemma equation derivation " + " ".join(rng.choice(["a", "b", "c"], 5)) for _ in range(40)]
    bad = ["celebrity gossip party shoes glitter " + " ".join(rng.choice(["a", "b", "c"], 5)) for _ in range(40)]
    m = HashedLogReg(dim=1 << 14).fit(good[:30] + bad[:30], [1] * 30 + [0] * 30, epochs=100)
    p = m.predict_proba(good[30:] + bad[30:])
    assert (p[:10] > 0.5).all() and (p[10:] < 0.5).all()
    m.save(tmp_path / "m.npz")
    assert np.allclose(HashedLogReg.load(tmp_path / "m.npz").predict_proba(good[30:]), p[:10])
    with pytest.raises(ValueError):
        HashedLogReg().fit(good, [1] * len(good))


@pytest.fixture(scope="module")
def wiki():
    from factory.seeds.sources import wiki_rows

    return wiki_rows(300, seed=0)


def test_curate_balances_topics(wiki):
    kept, rep = curate(wiki, SeedCurateConfig(n=60, min_words=20))
    assert len(kept) == 60 and rep["classifier"]["labels"] == "weak"
    counts = Counter(extra(r)["topic"] for r in kept)
    avail = Counter(extra(p)["topic"] for p in wiki)
    full = [t for t in counts if avail[t] >= max(counts.values())]
    assert max(counts.values()) - min(counts[t] for t in full) <= 1  # round robin
    for r in kept:
        ex = extra(r)
        assert r["meta"]["seed_id"].startswith(ex["parent"]) and 0 <= ex["scores"]["score"] <= 1
    to_table(kept)  # still valid document rows


def test_curate_min_score_and_cluster_fallback(wiki):
    rows = [make_doc(r["text"], "web", "site", seed_id=r["meta"]["seed_id"]) for r in wiki[:80]]  # no topic
    kept, rep = curate(rows, SeedCurateConfig(min_words=20, clusters=4, min_score=0.2))
    assert rep["balance"].startswith("cluster") and rep["below_min_score"] >= 0
    assert {extra(r)["topic"] for r in kept} <= {f"cluster:{i}" for i in range(4)}
    assert all(extra(r)["scores"]["score"] >= 0.2 for r in kept)


def test_cluster_topics_separates_obvious_groups():
    a = [f"football goal team match league player {i}" for i in range(10)]
    b = [f"protein enzyme cell membrane molecule {i}" for i in range(10)]
    assign = cluster_topics(a + b, 2, seed=0)
    assert len(set(assign[:10])) == 1 and len(set(assign[10:])) == 1 and assign[0] != assign[10]


def test_code_seeds_pass_their_own_tests():
    rows = code_rows()
    assert len(rows) >= 8
    for r in rows:
        ex = extra(r)
        assert r["kind"] == "code" and r["meta"]["seed_id"] == f"code:{ex['entry']}" and ex["tests"]
        res = run_python(ex["tests"], files={"solution.py": r["text"]})
        assert res.ok, (ex["entry"], res.stderr)


def test_code_rows_missing_folder(tmp_path):
    with pytest.raises(FactoryError):
        code_rows(tmp_path / "nope")


def test_qa_rows(tmp_path):
    f = tmp_path / "qa.jsonl"
    f.write_text(json.dumps({"question": "Why is the sky blue?", "answer": "Rayleigh scattering."}) + "\n\n")
    rows = qa_rows(f)
    assert rows[0]["kind"] == "qa" and rows[0]["text"].startswith("Question: Why")
    f.write_text(json.dumps({"question": "No answer?"}) + "\n")
    with pytest.raises(FactoryError) as e:
        qa_rows(f)
    assert "line 1" in str(e.value)


def test_stage_run_writes_manifest_and_skips_rerun(tmp_path, wiki):
    from factory.core.stage import StageDir, read_docs
    from factory.seeds.curate import run

    src = StageDir(str(tmp_path / "seeds"), "seeds", {"n": 50})
    src.write_docs("part-0.parquet", wiki[:50])
    src.finish()
    where = {"inputs": str(tmp_path / "seeds"), "out": str(tmp_path / "cur"), "code": True}
    m = run(SeedCurateConfig(n=20, min_words=20, **where))
    n_code = len(code_rows())
    assert m["status"] == "done" and m["counts"]["kept"] == 20 + n_code
    assert read_docs(str(tmp_path / "cur")).num_rows == 20 + n_code
    again = run(SeedCurateConfig(n=20, min_words=20, **where))
    assert again["counts"] == m["counts"]
    with pytest.raises(FactoryError):  # another config never mixes into the same folder
        run(SeedCurateConfig(n=10, min_words=20, **where))
