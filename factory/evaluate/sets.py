"""Built-in benchmarks, generated at run time from the offline corpus (third-party text is never
committed): one folder per benchmark with `benchmark.yaml` and `data.jsonl`.

Every item has `question`, `choices` (a list, empty for generative items) and `answer` (the index
of the right choice for multiple choice, the answer string for generative items), plus
`answer_text` (always the answer as a string) and `subject` (the wiki title or the template).
Curation decontaminates against these files by their `question`, `choices` and `answer_text`.

- wiki_mc:        "What is <title>?" -> its description, 4 choices, distractors from the same topic.
- wiki_cloze:     the first sentence of the extract, the final word left out; greedy exact match.
- wiki_cloze_mc:  the same sentences, the final word chosen among 4 same-topic final words.
- arith_mc / arith_em: templated arithmetic and word problems, answers computed and checked.
- wiki_val:       validation loss on the extracts of held-out titles (never trained on).
"""

from __future__ import annotations

import ast
import json
import operator
import random
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import yaml

from factory.core.errors import FactoryError

QA_PROMPT = "Question: {question}\nAnswer:"
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_WORD = re.compile(r"^[A-Za-z][a-z]{3,}$")


def write_benchmark(out_dir: str | Path, spec: dict[str, Any], items: list[dict[str, Any]]) -> str:
    """Write one benchmark folder (benchmark.yaml + data.jsonl) under `out_dir` (any fsspec URL);
    return the folder's URL."""
    from factory.core.stage import join, put_bytes, storage_errors

    d = join(str(out_dir), spec["name"])
    with storage_errors(d):
        put_bytes(join(d, "data.jsonl"), "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items).encode())
        put_bytes(join(d, "benchmark.yaml"), yaml.safe_dump({**spec, "n": len(items)}, sort_keys=False).encode())
    return d


def _mc_item(question: str, answer: str, distractors: list[str], rng: random.Random, **extra) -> dict:
    choices = [answer, *distractors]
    rng.shuffle(choices)
    return {"question": question, "choices": choices, "answer": choices.index(answer), "answer_text": answer, **extra}


def _same_topic(pool: dict[str, list[str]], topic: str, answer: str, k: int, rng: random.Random) -> list[str] | None:
    cands = sorted({c for c in pool.get(topic, []) if c.lower() != answer.lower()})
    return rng.sample(cands, k) if len(cands) >= k else None


def wiki_mc(records: list[dict], n: int, seed: int) -> tuple[dict, list[dict]]:
    rng = random.Random(f"wiki_mc:{seed}")
    recs = [r for r in records if r.get("description")]
    pool: dict[str, list[str]] = defaultdict(list)
    for r in recs:
        pool[r["topic"]].append(r["description"])
    items = []
    for r in rng.sample(recs, len(recs)):
        wrong = _same_topic(pool, r["topic"], r["description"], 3, rng)
        if wrong is None:
            continue
        items.append(_mc_item(f"What is {r['title']}?", r["description"], wrong, rng, subject=r["title"], topic=r["topic"]))
        if len(items) == n:
            break
    spec = {"name": "wiki_mc", "type": "mc_loglik", "prompt": QA_PROMPT, "choice_prefix": " ",
            "normalisation": "bytes", "description": "title -> description, 4 choices from the same topic"}
    return spec, items


def _cloze(rec: dict) -> tuple[str, str] | None:
    first = _SENT.split(rec["extract"].strip())[0].strip()
    if "  " in first or not first.endswith("."):
        return None
    words = first[:-1].split(" ")
    if len(words) < 8 or not _WORD.match(words[-1]):
        return None
    return " ".join(words[:-1]), words[-1]


def _cloze_pairs(records: list[dict], seed: int, tag: str) -> list[tuple[dict, str, str]]:
    rng = random.Random(f"{tag}:{seed}")
    out = []
    for r in rng.sample(records, len(records)):
        c = _cloze(r)
        if c:
            out.append((r, *c))
    return out


def wiki_cloze(records: list[dict], n: int, seed: int) -> tuple[dict, list[dict]]:
    items = [
        {"question": q, "choices": [], "answer": a, "answer_text": a, "subject": r["title"], "topic": r["topic"]}
        for r, q, a in _cloze_pairs(records, seed, "wiki_cloze")[:n]
    ]
    spec = {"name": "wiki_cloze", "type": "gen_exact_match", "prompt": "{question}", "max_new_tokens": 6,
            "stop": ["\n", "."], "match": "first_word",
            "description": "first sentence of the extract, final word by greedy decoding (exact match)"}
    return spec, items


def wiki_cloze_mc(records: list[dict], n: int, seed: int) -> tuple[dict, list[dict]]:
    rng = random.Random(f"wiki_cloze_mc:{seed}")
    pairs = _cloze_pairs(records, seed, "wiki_cloze")
    pool: dict[str, list[str]] = defaultdict(list)
    for r, _, a in pairs:
        pool[r["topic"]].append(a)
    items = []
    for r, q, a in pairs:
        wrong = _same_topic(pool, r["topic"], a, 3, rng)
        if wrong is not None:
            items.append(_mc_item(q, a, wrong, rng, subject=r["title"], topic=r["topic"]))
        if len(items) == n:
            break
    spec = {"name": "wiki_cloze_mc", "type": "mc_loglik", "prompt": "{question}", "choice_prefix": " ",
            "normalisation": "none", "description": "first-sentence final word, 4 same-topic choices"}
    return spec, items


# ---------------------------------------------------------------- arithmetic
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}
_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana", "Ivo", "Juno", "Kai", "Lena"]
_THINGS = ["apples", "books", "coins", "marbles", "pencils", "stamps", "shells", "cards"]


def safe_eval(expr: str) -> int:
    """Evaluate an integer expression of + - * and parentheses (the answer check)."""

    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(f"unsupported expression: {expr}")

    return ev(ast.parse(expr, mode="eval"))


def _arith_problem(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(5)
    a, b = rng.randint(2, 60), rng.randint(2, 40)
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    if kind == 0:
        return f"What is {a} plus {b}?", f"{a} + {b}"
    if kind == 1:
        a, b = max(a, b), min(a, b)
        return f"What is {a} minus {b}?", f"{a} - {b}"
    if kind == 2:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        return f"What is {a} times {b}?", f"{a} * {b}"
    if kind == 3:
        return f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?", f"{a} + {b}"
    a, b = max(a, b), min(a, b)
    return f"{name} has {a} {thing} and gives away {b}. How many {thing} does {name} have left?", f"{a} - {b}"


def _arith_items(n: int, seed: int) -> list[tuple[str, str, int]]:
    rng, seen, out = random.Random(f"arith:{seed}"), set(), []
    while len(out) < n:
        q, expr = _arith_problem(rng)
        if q not in seen:
            seen.add(q)
            out.append((q, expr, safe_eval(expr)))
    return out


def arith_mc(n: int, seed: int) -> tuple[dict, list[dict]]:
    rng = random.Random(f"arith_mc:{seed}")
    items = []
    for q, expr, ans in _arith_items(n, seed):
        near = [ans + d for d in (-10, -2, -1, 1, 2, 10) if ans + d >= 0]
        wrong = [str(x) for x in rng.sample(near, 3)]
        items.append(_mc_item(q, str(ans), wrong, rng, expr=expr, subject="arith"))
    spec = {"name": "arith_mc", "type": "mc_loglik", "prompt": QA_PROMPT, "choice_prefix": " ",
            "normalisation": "none", "description": "arithmetic and word problems, 4 numeric choices near the answer"}
    return spec, items


def arith_em(n: int, seed: int) -> tuple[dict, list[dict]]:
    items = [{"question": q, "choices": [], "answer": str(a), "answer_text": str(a), "expr": e, "subject": "arith"}
             for q, e, a in _arith_items(n, seed + 7919)]
    spec = {"name": "arith_em", "type": "gen_exact_match", "prompt": QA_PROMPT, "max_new_tokens": 6,
            "stop": ["\n"], "match": "number", "description": "arithmetic and word problems, greedy exact match"}
    return spec, items


def wiki_val(records: list[dict], n: int, seed: int) -> tuple[dict, list[dict]]:
    from factory.seeds.sources import wiki_text

    rng = random.Random(f"wiki_val:{seed}")
    recs = rng.sample(records, min(n, len(records)))
    items = [{"question": "", "choices": [], "answer": "", "answer_text": "", "text": wiki_text(r), "subject": r["title"]}
             for r in recs]
    spec = {"name": "wiki_val", "type": "val_loss", "higher_is_better": False, "seq_len": 256,
            "description": "mean token loss on the documents of held-out titles (never trained on)"}
    return spec, items


def source_loss_bench(out_dir: str | Path, name: str, ds_folder: str | Path, windows: int = 32, seq_len: int = 256) -> str:
    """A val_loss benchmark over the last `windows` windows of a tokenized source (a folder of .ds
    shards, local or any fsspec URL). Those windows are held out only if the tokenize stage kept
    them out of training."""
    from factory.core.stage import is_url

    ds = str(ds_folder) if is_url(str(ds_folder)) else str(Path(ds_folder).resolve())
    spec = {"name": name, "type": "val_loss", "higher_is_better": False, "ds": ds,
            "windows": windows, "seq_len": seq_len, "description": f"mean token loss on the tail of {ds_folder}"}
    return write_benchmark(out_dir, spec, [])



# The built-in benchmarks, in one table: name -> maker(known records, held-out records, n, seed).
# Adding one: write its maker above and add a line here; `factory evalsets`, ablation grids
# (`benchmarks.builtin`) and the demo pick it up by name.
BENCHMARKS: dict[str, Any] = {
    "wiki_mc": lambda known, held, n, seed: wiki_mc(known, n, seed),
    "wiki_cloze": lambda known, held, n, seed: wiki_cloze(known, n, seed),
    "wiki_cloze_mc": lambda known, held, n, seed: wiki_cloze_mc(known, n, seed),
    "arith_mc": lambda known, held, n, seed: arith_mc(n, seed),
    "arith_em": lambda known, held, n, seed: arith_em(n, seed),
    "wiki_val": lambda known, held, n, seed: wiki_val(held, n, seed),  # only with held-out titles
}
BUILTIN = tuple(BENCHMARKS)
TRAINING_FREE = tuple(b for b in BUILTIN if b != "wiki_val")  # those that need no held-out titles

def build(
    out_dir: str | Path,
    holdout_titles: Iterable[str] | None = None,
    seed: int = 0,
    *,
    titles: Iterable[str] | None = None,
    n: int = 500,
    benches: Iterable[str] = BUILTIN,
    records: list[dict] | None = None,
) -> dict[str, Any]:
    """Write the built-in benchmarks under `out_dir` (one folder each); same arguments, same files.

    titles: knowledge items are drawn only from these (e.g. the titles the web source covers).
    holdout_titles: titles kept out of training: never a knowledge item, they make `wiki_val`.
    Returns {"dirs": {name: folder}, "titles": sorted subject titles of the knowledge items};
    `out_dir` and the folders are local paths or fsspec URLs.
    """
    from factory.core.stage import check_store

    benches = list(benches)
    bad = [b for b in benches if b not in BUILTIN]
    if bad:
        raise FactoryError(f"unknown built-in benchmark(s) {bad}", where="evalsets", field="benches", fix=f"pick from {list(BUILTIN)}")
    check_store(str(out_dir))
    if records is None:
        from factory.seeds.sources import load_wiki_summaries

        records = load_wiki_summaries()
    hold = set(holdout_titles or ())
    keep = set(titles) if titles is not None else None
    known = [r for r in records if r["title"] not in hold and (keep is None or r["title"] in keep)]
    held = [r for r in records if r["title"] in hold]
    dirs, subjects = {}, set()
    for name in benches:
        if name == "wiki_val" and not held:
            continue  # no held-out titles: no validation set to build
        spec, items = BENCHMARKS[name](known, held, n, seed)
        if not items:
            raise FactoryError(f"no items could be built for {name}", where="evalsets", field="titles",
                               fix="give more titles (each topic needs 4 with a description)")
        spec["seed"] = seed
        dirs[name] = write_benchmark(out_dir, spec, items)
        if name.startswith("wiki_") and name != "wiki_val":
            subjects.update(it["subject"] for it in items)
    return {"dirs": dirs, "titles": sorted(subjects)}
