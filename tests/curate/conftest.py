"""Fixtures for curation tests: one planted corpus and one Ray session shared by the module."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from .corpus import edit, lesson, records, syn, write_jsonl, write_stage


@dataclass
class Planted:
    inputs: str
    reference: str
    bench: str
    distinct: list[dict]                      # clean documents nothing else duplicates
    groups: dict[str, list[str]] = field(default_factory=dict)   # original id -> ids of its planted copies (by kind)
    kinds: dict[str, str] = field(default_factory=dict)          # copy id -> "exact" | "near" | "seed"
    seed_ids: dict[str, str] = field(default_factory=dict)       # copy id -> reference doc id
    bad: dict[str, str] = field(default_factory=dict)            # doc id -> expected rejection reason
    contaminated: list[str] = field(default_factory=list)
    rows: dict[str, dict] = field(default_factory=dict)
    stripped: dict[str, str] = field(default_factory=dict)       # doc id -> its text once preamble/sign-off are cut


def _gopher_clean(recs: list[dict]) -> list[dict]:
    """Records whose lesson passes datatrove's Gopher filters, so dedup is measured on its own."""
    from datatrove.data import Document
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter

    q, r = GopherQualityFilter(), GopherRepetitionFilter()
    return [x for x in recs if q.filter(Document(lesson(x), "t")) is True and r.filter(Document(lesson(x), "t")) is True]


def build(tmp, n_distinct: int = 220, seed: int = 0) -> Planted:
    from factory.seeds.sources import wiki_rows

    rng = random.Random(seed)
    recs = records(70)
    rng.shuffle(recs)
    clean = _gopher_clean(recs[: n_distinct + 120])
    base, spare = clean[:n_distinct], clean[n_distinct:]
    distinct = [syn(lesson(r), i, seed=f"wiki:{r['title']}") for i, r in enumerate(base)]
    p = Planted("", "", "", distinct)
    rows = list(distinct)

    def add(row, kind=None, original=None, bad=None):
        rows.append(row)
        if kind:
            p.kinds[row["id"]] = kind
            p.groups.setdefault(original, []).append(row["id"])
        if bad:
            p.bad[row["id"]] = bad
        return row

    for j in range(15):  # exact copies (another recipe, so another id); half with changed spacing
        o = distinct[j]
        text = o["text"] if j % 2 else o["text"].replace(" ", "  ").replace(",", " ,") + "\n"
        add(syn(text, 5000 + j, recipe="distill"), "exact", o["id"])
    for j, rate in enumerate([0.05] * 10 + [0.10] * 10 + [0.15] * 10):  # near copies: words swapped, dropped, added
        o = distinct[20 + j]
        add(syn(edit(o["text"], rate, rng), 6000 + j, recipe="rewrite"), "near", o["id"])
    seeds = wiki_rows(records=spare[:40])
    for j, s in enumerate(seeds[:10]):  # rewrites that copy their seed
        r = add(syn(edit(s["text"], 0.05, rng), 7000 + j, recipe="rewrite", seed=s["meta"]["seed_id"], kind="rewrite"),
                "seed", s["id"])
        p.seed_ids[r["id"]] = s["id"]
    other = spare[40:]
    bad = [
        (syn("As an AI language model, I cannot share opinions. " + lesson(other[0]), 8000), "refusal"),
        (syn(lesson(other[1]).replace("\n\n", "\n\nHere is a rewritten version of the original text.\n\n", 1), 8001),
         "meta_commentary"),
        (syn(lesson(other[2]).replace("\n\n", "\n\nFeel free to ask me anything about it.\n\n", 1), 8002), "chatter"),
        (syn(lesson(other[3]), 8003, finish="length"), "truncated"),
        (syn("Write for {{ audience }}: " + lesson(other[4]), 8004), "leakage"),
        (syn("<|im_start|>assistant\n" + lesson(other[5]), 8005), "leakage"),
        (syn(lesson(other[6]), 8006, extra={"verdicts": {"tests": False}}), "verification"),
        (syn(lesson(other[7]), 8007, extra={"verdicts": {"math": "fail", "format": True}}), "verification"),
        (syn("Too short to keep.", 8008), "length"),
        (syn("", 8009), "empty"),
    ]
    for row, reason in bad:
        add(row, bad=reason)
    for j, (pre, post) in enumerate([("Sure! Here is a lesson for you:", ""), ("", "I hope this helps!"),
                                     ("Here's a rewritten version of the text:", "Let me know if you have questions.")]):
        text = lesson(other[20 + j])
        row = add(syn("\n\n".join(x for x in (pre, text, post) if x), 8100 + j))
        p.stripped[row["id"]] = text
    # benchmark items taken from documents we plant: long questions (13-grams) and one short one
    items = []
    for j, r in enumerate(other[10:18]):
        sent = " ".join(r["extract"].split()[:18])
        items.append({"question": f"Which statement is true? {sent}", "choices": ["yes", "no"], "answer": 0,
                      "answer_text": "yes"})
        row = add(syn(lesson(r), 9000 + j))
        p.contaminated.append(row["id"])
    short = " ".join(other[18]["extract"].split()[:9])
    items.append({"question": short, "choices": [], "answer": "x", "answer_text": "x"})
    p.contaminated.append(add(syn(lesson(other[18]), 9100))["id"])
    items += [{"question": "What is the capital of a country that does not exist anywhere?", "choices": [],
               "answer_text": "nowhere"}]
    p.rows = {r["id"]: r for r in rows}
    order = rows[:]
    rng.shuffle(order)
    p.inputs = write_stage(tmp / "gen", order, shards=3)
    p.reference = write_stage(tmp / "seeds", seeds, "seeds", shards=2)
    p.bench = write_jsonl(tmp / "bench" / "kb" / "data.jsonl", items)
    return p


@pytest.fixture(scope="session")
def planted(tmp_path_factory) -> Planted:
    return build(tmp_path_factory.mktemp("curate_corpus"))


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from factory.curate.raysession import init

    init(num_cpus=2)
    yield ray
    ray.shutdown()
