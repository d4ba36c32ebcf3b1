"""Diversity report: repeated openings and n-gram repetition."""

from factory.core.schema import make_doc
from factory.recipes.diversity import ngram_repetition, openings, report, report_rows


def test_repeated_openings_found():
    texts = ["Once upon a time there was a cat."] * 3 + ["The moon orbits the earth.", "Volcanoes erupt lava."]
    o = openings(texts, 3)
    assert o["distinct"] == 3 and o["repeated_share"] == 0.6
    assert o["top"][0] == ["once upon a", 3]


def test_all_distinct_openings():
    o = openings(["alpha beta gamma delta", "beta gamma delta alpha", "gamma delta alpha beta"], 3)
    assert o["distinct_ratio"] == 1.0 and o["repeated_share"] == 0.0 and o["top"] == []


def test_ngram_repetition_across_and_within():
    same = ngram_repetition(["a b c d e f"] * 4, 4)
    assert same["repeated_share"] == 0.75 and same["within_doc_mean"] == 0.0
    loop = ngram_repetition(["x y z w " * 5], 4)
    assert loop["within_doc_mean"] > 0.7
    fresh = ngram_repetition(["one two three four five", "six seven eight nine ten"], 4)
    assert fresh["repeated_share"] == 0.0


def test_report_by_recipe():
    rows = [make_doc(f"In this lesson we learn {i} things about topic {i}.", "synthetic", "synthetic/textbook",
                     recipe="textbook", seed_id=f"s{i}") for i in range(3)]
    rows += [make_doc(f"Question {i}? Answer {i}.", "qa", "synthetic/qa_rewrite", recipe="qa_rewrite", seed_id=f"q{i}") for i in range(2)]
    rep = report_rows(rows)
    assert rep["all"]["docs"] == 5 and set(rep["by"]) == {"textbook", "qa_rewrite"}
    assert rep["by"]["textbook"]["openings_5"]["top"][0] == ["in this lesson we learn", 3]
    assert report([])["docs"] == 0
