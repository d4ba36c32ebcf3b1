"""Meta-commentary and chatter, faithfulness to the seed and the quality classifier, step by step
and through a real curation run."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from datatrove.data import Document

from factory.core.config import read_yaml
from factory.core.errors import FactoryError
from factory.core.stage import read_docs
from factory.curate import config as C
from factory.curate import load, run
from factory.curate.chatter import CommentaryFilter
from factory.curate.faithful import Support, spans, unsupported

from .corpus import lesson, records, syn, write_stage

BODY = ("Réunion is an island in the Indian Ocean, east of Madagascar and about 175 km southwest of Mauritius. "
        "It is an overseas department and region of the French Republic. Its capital is Saint-Denis, and in 2019 it had about "
        "860,000 inhabitants.")
SEED = ("Réunion is an island in the Indian Ocean that is an overseas department and region of the French Republic. "
        "It is located approximately 679 km east of Madagascar and 175 km southwest of Mauritius. As of January "
        "2019, it had a population of 859,959. The capital is Saint-Denis.")


def doc(text: str, **meta) -> Document:
    return Document(text, "d1", metadata={"meta": {"extra": json.dumps(meta.pop("extra", {})), **meta}})


def meta_step(**kw) -> CommentaryFilter:
    return CommentaryFilter("meta_commentary", C.META_PATTERNS, **kw)


def chatter_step(**kw) -> CommentaryFilter:
    return CommentaryFilter("chatter", C.CHATTER_PATTERNS, **kw)


def test_default_yaml_agrees_with_config_defaults():
    """Every default is written in default.yaml exactly as the code has it: an option added, dropped
    or changed on one side only fails here."""
    y = read_yaml(C.DEFAULT_YAML)
    assert y == C.CurateConfig().model_dump(mode="json")
    assert list(y["filters"]) == list(C.FILTERS)  # shown in the order they run


@pytest.mark.parametrize("text,step,cut", [
    ("Here's a rewritten version of the original text using plain English:\n\n" + BODY, meta_step, "start"),
    ("Sure! Here is a lesson about Réunion.\n" + BODY, chatter_step, "start"),
    (BODY + "\n\nI hope this helps! Let me know if you have other questions.", chatter_step, "end"),
])
def test_preamble_or_sign_off_is_cut_and_recorded(text, step, cut):
    d = doc(text)
    assert step().filter(d) is True
    assert d.text == BODY
    rec = json.loads(d.metadata["meta"]["extra"])["stripped"]
    assert [r["where"] for r in rec] == [cut] and rec[0]["text"] in text and rec[0]["step"] == step().reason


@pytest.mark.parametrize("text,step,hit", [
    (BODY + " In the article, I've reformatted the original text. " + BODY, meta_step, "i've reformatted"),
    (BODY + "\nRewrite the source using plain language to avoid any new claims.\n" + BODY, meta_step, "rewrite the source"),
    ("Réunion\n\nFeel free to ask me more.\n\n" + BODY, chatter_step, "feel free to"),
])
def test_commentary_inside_a_document_rejects_it_with_the_match(text, step, hit):
    d = doc(text)
    ok, reason = step().filter(d)
    assert not ok and reason == step().reason
    assert hit in d.metadata["_reject"]["detail"].lower()
    assert d.text == text  # a rejected document is quarantined as it came


def test_nothing_left_after_cutting_or_strip_off_rejects():
    d = doc("Here's a rewritten version of the text:\nI have rewritten it for you.")
    ok, _ = meta_step().filter(d)
    assert not ok and "nothing left" in d.metadata["_reject"]["detail"]
    d = doc("Here's a revised version:\n\n" + BODY)
    ok, _ = meta_step(strip=False).filter(d)
    assert not ok
    assert meta_step().filter(doc(BODY)) is True and chatter_step().filter(doc(BODY)) is True


def test_commentary_patterns_spare_real_encyclopedia_prose():
    """The default patterns match at most 0.2% of the offline Wikipedia summaries."""
    texts = [r["extract"] for r in records(40)][:3000]
    hits = sum(meta_step().rx.search(t) is not None or chatter_step().rx.search(t) is not None for t in texts)
    assert hits <= 0.002 * len(texts), hits


def test_spans_find_names_numbers_and_dates_not_sentence_openers():
    s = dict.fromkeys(sp for _, sp in spans("The island had 860,000 people in 2019. Its capital, Saint-Denis, "
                                             "lies in the Indian Ocean.\n1. Tourism grew on March 19th."))
    assert {"860000", "2019", "Saint-Denis", "Indian Ocean", "March"} <= s.keys()
    assert not {"The", "Its", "Tourism", "1"} & s.keys()


def test_unsupported_spans_against_the_seed():
    wrong = ("Réunion is a fictional island in French Polynesia, in the Pacific Ocean. Andrew Carnegie visited "
             "it on March 19th, 2016, when 12,000 people lived there.")
    bad, total = unsupported(wrong, Support(SEED))
    assert {"French Polynesia", "Pacific Ocean", "Andrew Carnegie", "2016", "12000"} <= set(bad)
    assert "Réunion" not in bad and total == len(bad)  # a lone sentence-opening word is not taken for a name
    ok, total = unsupported(BODY.replace("860,000", "859,959"), Support(SEED))
    assert ok == [] and total >= 5


def test_novelty_is_the_share_of_content_words_the_seed_never_uses():
    from factory.curate.faithful import FaithfulnessFilter, novelty

    assert novelty(BODY, Support(SEED)) < 0.2
    invented = ("Réunion is famous for volcanic wine terraces, submarine orchestras and glacier festivals where "
                "penguins compete in elaborate marathons every winter.")
    assert novelty(invented, Support(SEED)) > 0.6
    f = FaithfulnessFilter([], 0.25, 2, [], max_novelty=0.3, novelty_per_recipe={"textbook": 1.0})
    f.seeds._map = {"wiki:Réunion": SEED}
    d = doc(invented, seed_id="wiki:Réunion", recipe="wiki_rewrite")
    ok, _ = f.filter(d)
    assert not ok and d.metadata["_reject"]["detail"].startswith("novel words")
    assert f.filter(doc(invented, seed_id="wiki:Réunion", recipe="textbook")) is True  # its own limit
    assert f.filter(doc(BODY, seed_id="wiki:Réunion", recipe="wiki_rewrite")) is True
    assert f.filter(doc(invented, seed_id="wiki:elsewhere", recipe="wiki_rewrite")) is True  # no seed: not judged


def test_relations_the_seed_does_not_make():
    """Names, numbers and directions all from the seed, joined as the seed never joins them."""
    from factory.curate.faithful import relations

    sup = Support(SEED)
    ok, checked = relations(BODY, sup, "Réunion")  # two seed sentences merged into one: still faithful
    assert ok == [] and checked >= 5
    bad, _ = relations("The French Republic has ruled it since January 2019.", sup, "Réunion")
    assert any(b.startswith("French Republic (near") for b in bad)
    assert not any(b.startswith("2019 (near") for b in bad)  # its neighbour "January" stands by it in the seed
    # a swap inside one short seed phrase is not seen: every item stays near the others
    assert relations("It lies 679 km east of Mauritius and 175 km southwest of Madagascar.", sup, "Réunion")[0] == []
    bad, _ = relations("Its capital is Saint-Denis, in the French Republic since 2019.", sup, "Réunion")
    assert bad and all(b.split(" (near")[0] in {"Saint-Denis", "French Republic", "2019"} for b in bad)
    bad, _ = relations(BODY.replace("east of Madagascar", "north of Madagascar"), sup, "Réunion")
    assert any(b.startswith("north (near") for b in bad)  # a direction the seed never gives
    assert relations("Réunion had 859,959 people in 2019.", sup, "Réunion")[0] == []  # the subject is left out
    seed = ("Sichuan lies in the Sichuan Basin and on the Tibetan Plateau, with the Jinsha River to its west and the "
            "Daba Mountains to its north. Its capital is Chengdu, a city of many millions. It borders Shaanxi and "
            "Chongqing to the east.")
    bad, _ = relations("Between the Jinsha River and the Daba Mountains to the north, it also extends into the "
                       "Tibetan Plateau to the east.", Support(seed), "Sichuan")
    assert bad == ["east (near Tibetan Plateau)"]  # the seed gives the east to other provinces
    assert relations("It lies on the Tibetan Plateau, with the Daba Mountains to the north, and borders Shaanxi to "
                     "the east.", Support(seed), "Sichuan")[0] == []


def test_faithfulness_filter_rejects_wrong_relations_with_them_in_the_row():
    from factory.curate.faithful import FaithfulnessFilter

    f = FaithfulnessFilter([], 0.1, 1, [], relation_window=12, relation_sentences=1, max_relations=0)
    f.seeds._map = {"wiki:Réunion": SEED}
    right = BODY.replace("860,000", "859,959")
    wrong = right.replace("Its capital is Saint-Denis", "The capital of the French Republic is Saint-Denis")
    d = doc(wrong, seed_id="wiki:Réunion", recipe="wiki_rewrite", extra={"title": "Réunion"})
    ok, reason = f.filter(d)
    assert not ok and reason == "unfaithful"
    assert "relations the seed does not make" in d.metadata["_reject"]["detail"]
    assert "French Republic (near" in d.metadata["_reject"]["detail"]
    assert f.filter(doc(right, seed_id="wiki:Réunion", recipe="wiki_rewrite")) is True
    f.relation_window = 0  # off: only the spans are checked
    assert f.filter(doc(wrong, seed_id="wiki:Réunion", recipe="wiki_rewrite")) is True


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """A real curation run: lessons around real seeds, some faithful, some with facts the seed lacks."""
    from factory.seeds.sources import wiki_rows

    tmp = tmp_path_factory.mktemp("quality_steps")
    recs = [r for r in records(60) if not any(ch.isdigit() for ch in r["extract"])][:12]
    seeds = wiki_rows(records=recs)
    rows, want = [], {}
    for i, (r, s) in enumerate(zip(recs, seeds)):
        sid = s["meta"]["seed_id"]
        text = lesson(r)
        if i % 2:  # facts from nowhere
            text += ("\n\nHistorians in Buenos Aires and Kyoto dated it to 1642, and Gustav Lindqvist counted "
                     "4,381 records of it at the Royal Danish Library in 1911.")
            want_reason = "unfaithful"
        else:
            want_reason = None
        row = syn(text, i, recipe="wiki_rewrite", seed=sid, kind="rewrite")
        rows.append(row)
        want[row["id"]] = want_reason
    gen = write_stage(tmp / "gen", rows, shards=2)
    ref = write_stage(tmp / "seeds", seeds, "seeds", shards=1)
    out = str(tmp / "out")
    cfg = load(None, inputs=[gen], out=out)
    cfg.filters.faithfulness.seeds = [ref]
    cfg.dedup.minhash.enabled = cfg.dedup.exact = False
    cfg.filters.gopher_quality.enabled = cfg.filters.gopher_repetition.enabled = False
    return run(cfg), out, want


def test_unfaithful_documents_rejected_with_their_spans(curated):
    manifest, out, want = curated
    rej = {r["id"]: r for f in sorted((Path(out) / "rejected").glob("*.parquet")) for r in pq.read_table(f).to_pylist()}
    kept = {r["id"] for r in read_docs(out).to_pylist()}
    for i, reason in want.items():
        if reason:
            assert rej[i]["reason"] == "unfaithful"
            assert "Buenos Aires" in rej[i]["detail"] and "1642" in rej[i]["detail"]
        else:
            assert i in kept, rej.get(i)
    report = json.loads((Path(out) / "report.json").read_text())
    by = report["by_recipe"]["wiki_rewrite"]
    assert by["dropped"]["unfaithful"] == sum(1 for r in want.values() if r)
    assert by["in"] == len(want) and by["kept"] == len(kept) == sum(1 for r in want.values() if not r)
    assert "Buenos Aires" in by["examples"]["unfaithful"][0]["detail"]
    md = (Path(out) / "report.md").read_text()
    assert "## By recipe" in md and "### wiki_rewrite: unfaithful" in md


def test_quality_classifier_trains_scores_and_filters(tmp_path):
    from factory.curate.quality import Model, QualityFilter, train

    good = [lesson(r) for r in records(60)[:60]]
    bad = [f"Sure! I'd be happy to help. Here's a rewritten version of the text. I hope this helps! {i}" for i in range(60)]
    model = train(good + bad, [1] * 60 + [0] * 60)
    path = str(tmp_path / "q.npz")
    model.save(path)
    again = Model.load(path)
    fresh_good, fresh_bad = lesson(records(60)[70]), "Sure! Here's a revised version of the draft, I hope this helps!"
    assert again.score(fresh_good) > 0.5 > again.score(fresh_bad)
    f = QualityFilter(path, 0.5)
    d = doc(fresh_good)
    assert f.filter(d) is True and json.loads(d.metadata["meta"]["extra"])["quality"] > 0.5
    d = doc(fresh_bad)
    ok, reason = f.filter(d)
    assert not ok and reason == "quality" and "score" in d.metadata["_reject"]["detail"]


def _invented(rec: dict, i: int) -> str:
    """A defective text about a seed: its title, then list fragments and facts from nowhere."""
    return (f"Notes on {rec['title']}\n- {rec['title']}\n- Important facts\n- Gustav Lindqvist of Buenos Aires "
            f"counted {4000 + i} of them in {1600 + i}\n- Kyoto")


def test_seed_feature_model_scores_a_document_against_its_own_seed(tmp_path):
    from factory.curate.quality import SEED_FEATURES, Model, QualityFilter, seed_features, train_seeded

    recs = records(60)[:44]
    seeds = {f"wiki:{r['title']}": r["extract"] for r in recs}
    texts = [lesson(r) for r in recs[:20]] + [_invented(r, i) for i, r in enumerate(recs[:20])]
    model = train_seeded(texts, [r["extract"] for r in recs[:20]] * 2, [1] * 20 + [0] * 20)
    assert len(seed_features(texts[0], recs[0]["extract"])) == len(SEED_FEATURES)
    path = str(tmp_path / "seed.npz")
    model.save(path)
    again = Model.load(path)
    assert again.needs_seed
    for i, r in enumerate(recs[30:44]):
        assert again.score(lesson(r), r["extract"]) > 0.5 > again.score(_invented(r, i), r["extract"])
    # the same faithful text read against another seed is not faithful
    assert again.score(lesson(recs[30]), recs[31]["extract"]) < again.score(lesson(recs[30]), recs[30]["extract"])
    with pytest.raises(ValueError, match="against its seed"):
        again.score(lesson(recs[30]))
    f = QualityFilter(path, 0.5)
    f.seeds._map = seeds
    good = doc(lesson(recs[40]), seed_id=f"wiki:{recs[40]['title']}")
    assert f.filter(good) is True and json.loads(good.metadata["meta"]["extra"])["quality"] > 0.5
    bad = doc(_invented(recs[41], 1), seed_id=f"wiki:{recs[41]['title']}")
    ok, reason = f.filter(bad)
    assert not ok and reason == "quality"
    unknown = doc(_invented(recs[41], 1), seed_id="wiki:not a seed")
    assert f.filter(unknown) is True and "quality" not in json.loads(unknown.metadata["meta"]["extra"])


def test_quality_filter_without_or_with_a_bad_model_is_one_clear_error(tmp_path):
    from factory.curate.pipeline import filter_steps
    from factory.curate.quality import Model

    cfg = load(None)
    cfg.filters.quality.enabled = True
    with pytest.raises(FactoryError, match="names no model"):
        filter_steps(cfg, str(tmp_path / "rej"), None)
    (tmp_path / "bad.npz").write_bytes(b"not a model")
    with pytest.raises(FactoryError, match="cannot read the quality model") as e:
        Model.load(str(tmp_path / "bad.npz"))
    assert "filters.quality.model" in str(e.value)


def test_train_command_writes_a_model_from_labels_and_seeds(tmp_path, capsys):
    from factory.curate.quality import Model, main
    from factory.seeds.sources import wiki_rows

    recs = records(60)[:30]
    seeds = write_stage(tmp_path / "seeds", wiki_rows(records=recs[:20]), "seeds", shards=1)
    rows = [{"text": lesson(r), "label": "clean", "split": "dev"} for r in recs[20:25]]
    rows += [{"text": f"Sure! Here's a rewritten version of the passage, I hope this helps {i}", "label": "chatter",
              "split": "dev"} for i in range(5)]
    rows += [{"text": "held out, never trained on", "label": "clean", "split": "held"}]
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "q.npz"
    with pytest.raises(SystemExit) as e:
        main(["train", str(labels), "--seeds", seeds, "--out", str(out)])
    assert e.value.code == 0
    m = Model.load(str(out))
    assert m.score(lesson(recs[28])) > 0.5 > m.score("Sure! Here's a rewritten version, I hope this helps")
    # a seed-feature model needs every labeled document's seed
    for i, r in enumerate(rows):
        r["seed_id"] = f"wiki:{recs[i % 20]['title']}"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SystemExit) as e:
        main(["train", str(labels), "--seeds", seeds, "--kind", "seed", "--out", str(out)])
    assert e.value.code == 0 and Model.load(str(out)).needs_seed
    rows[0]["seed_id"] = "wiki:nowhere"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SystemExit) as e:
        main(["train", str(labels), "--seeds", seeds, "--kind", "seed", "--out", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "not in --seeds" in err and "seed_id" in err and "Traceback" not in err


def test_judge_score_is_the_last_score_line():
    from factory.curate.judge import parse_score

    assert parse_score("Reasons: fine.\nScore: 4") == 4
    assert parse_score("score 2 at first, then **Score:** 5") == 5
    assert parse_score("Sounds good to me!") is None and parse_score("Score: 9") is None


@pytest.mark.slow  # starts a local teacher of its own
def test_llm_judge_on_the_local_teacher_scores_filters_and_caches(tmp_path):
    """A real llama.cpp judge over four documents; the rerun with the judge stopped decides the same
    from the cache."""
    from factory.seeds.sources import wiki_rows
    from factory.teacher.server import LocalTeacher

    recs = [r for r in records(40) if len(r["extract"].split()) < 80][:4]
    seeds = write_stage(tmp_path / "seeds", wiki_rows(records=recs), "seeds", shards=1)
    rows = [syn(lesson(r), i, recipe="distill", seed=f"wiki:{r['title']}", kind="rewrite") for i, r in enumerate(recs)]
    gen = write_stage(tmp_path / "gen", rows, shards=1)

    def curate(out: str, teacher: dict) -> tuple[dict, dict]:
        cfg = load(None, inputs=[gen], out=out)
        f = cfg.filters
        f.faithfulness.enabled = f.gopher_quality.enabled = f.gopher_repetition.enabled = False
        cfg.dedup.minhash.enabled = cfg.dedup.exact = False
        f.faithfulness.seeds = [seeds]
        f.judge = f.judge.model_copy(update={"enabled": True, "teacher": teacher, "min_score": 4, "batch": 2,
                                             "cache_dir": str(tmp_path / "judge_cache")})
        m = run(cfg)
        kept = {r["id"]: json.loads(r["meta"]["extra"])["judge"] for r in read_docs(out).to_pylist()} \
            if m["counts"]["kept"] else {}
        rej = {r["id"]: r for p in sorted((Path(out) / "rejected").glob("*.parquet")) for r in pq.read_table(p).to_pylist()}
        return kept, rej

    with LocalTeacher(1) as t:
        teacher = {"endpoints": [{"base_url": t.endpoints[0], "model": t.model, "api_key_env": t.api_key_env}],
                   "sampling": {"temperature": 0.0, "max_tokens": 40}}
        kept, rej = curate(str(tmp_path / "a"), teacher)
    assert len(kept) + len(rej) == 4
    assert all(s is None or s >= 4 for s in kept.values())  # unparsed replies are kept by default
    for r in rej.values():
        assert r["reason"] == "judge" and r["detail"].startswith("score ")
        assert int(r["detail"].split()[1]) < 4
    again = curate(str(tmp_path / "b"), teacher)  # the server is gone: every verdict comes from the cache
    assert again[0] == kept and again[1].keys() == rej.keys()


def test_judge_without_endpoints_is_one_clear_error(tmp_path):
    from factory.curate.pipeline import filter_steps

    cfg = load(None)
    cfg.filters.judge.enabled = True
    with pytest.raises(FactoryError, match="bad judge teacher") as e:
        filter_steps(cfg, str(tmp_path / "rej"), None)
    assert "filters.judge.teacher" in str(e.value)
