"""A synthetic run folder in the formats the real stages write (seeds/, generated/, curated/), made
with the real writers (StageDir, the document schema, generate's and curate's rejected schemas),
with its ground truth: what each request became. The review tests and benchmarks/review_page.py
build theirs with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from factory.core.schema import make_doc
from factory.core.stage import StageDir
from factory.curate.io import REJECTED_SCHEMA
from factory.generate.shard import REJECT_SCHEMA

RECIPES = {"textbook": ("synthetic", "teacher-a"), "wiki_rewrite": ("rewrite", "teacher-b"), "qa_rewrite": ("qa", "teacher-a")}
# what request r of a recipe becomes, by r % 10 (a qa_rewrite request with r % 5 == 4 makes no document)
OUTCOME = ["kept", "kept", "kept", "unfaithful", "unfaithful", "meta_commentary", "meta_commentary", "truncated",
           "gopher_quality", "near_dup"]
FILLER = ("The subject has a long history and many parts, and students often meet it first in school where "
          "teachers explain its main ideas with simple examples and short exercises. ")


def seed_text(i: int, words: int) -> str:
    body = (FILLER * (1 + words // 30)).split()[:words]
    return f"Topic {i}\nA subject of study\n\nTopic {i} was first described in {1800 + i % 200}. " + " ".join(body)


def doc_text(seed: int, recipe: str, outcome: str, words: int) -> str:
    body = " ".join((FILLER * (1 + words // 30)).split()[:words])
    head = {"unfaithful": f"Topic {seed} was founded by Zorbania Quux in 1999.",
            "meta_commentary": f"Topic {seed} matters. This passage explains it in plain words.",
            }.get(outcome, f"Topic {seed} is explained here for {recipe}.")
    if recipe == "qa_rewrite":
        return f"Question: What is Topic {seed}?\nAnswer: {head} {body}"
    return f"{head} {body}"


def make_run(root: Path, seeds: int = 6, samples: int = 1, words: int = 40, shard_rows: int = 1000,
             seed_words: int = 60) -> dict[str, Any]:
    """Write root/seeds, root/generated and root/curated; return the truth: `requests`, a list of
    {id, seed_id, recipe, teacher, status, reason} per request (id None for a failed one)."""
    root = Path(root)
    seed_rows = [make_doc(seed_text(i, seed_words), "web", "wiki", seed_id=f"wiki:Topic {i}",
                          extra={"title": f"Topic {i}", "topic": "Test"}) for i in range(seeds)]
    st = StageDir(str(root / "seeds"), "seeds", {"n": seeds})
    for k in range(0, seeds, shard_rows):
        st.write_docs(f"part-{k // shard_rows}.parquet", seed_rows[k:k + shard_rows])
    st.counts["out"] = seeds
    st.finish()

    truth, docs, failed, kept, rejected = [], [], [], [], []
    r = 0
    for recipe, (kind, teacher) in RECIPES.items():
        for i in range(seeds):
            for s in range(samples):
                outcome = OUTCOME[r % 10]
                sid = f"wiki:Topic {i}"
                rec = {"seed_id": sid, "recipe": recipe, "teacher": teacher}
                if recipe == "qa_rewrite" and r % 5 == 4:
                    failed.append({"seed_id": sid, "recipe": recipe, "sample": s, "reason": "parse_no_qa_pairs",
                                   "detail": json.dumps({"detail": "found 0 Q/A pairs, need 1", "finish_reason": "stop",
                                                         "raw": f"Question: 1 about Topic {i}", "seed_id": sid})})
                    truth.append({**rec, "id": None, "status": "failed", "reason": "parse_no_qa_pairs"})
                    r += 1
                    continue
                extra = {"title": f"Topic {i}", "sample": s, "vars": {"style": "plain"}, "verdicts": {}}
                if outcome == "kept" and r % 3 == 0:
                    extra["stripped"] = [{"step": "meta_commentary", "text": "Here is the rewritten text:", "where": "start"}]
                doc = make_doc(doc_text(i, recipe, outcome, words), kind, f"synthetic/{recipe}", sample=s,
                               seed_id=sid, recipe=recipe, prompt_sha=f"p{r}", teacher_model=teacher,
                               sampling={"max_tokens": 320}, prompt_tokens=100, completion_tokens=words,
                               finish_reason="length" if outcome == "truncated" else "stop", extra=extra)
                docs.append(doc)
                if outcome == "kept":
                    kept.append(doc)
                    truth.append({**rec, "id": doc["id"], "status": "kept", "reason": ""})
                    r += 1
                    continue
                detail = {"unfaithful": "2/5 unsupported: Zorbania Quux; 1999",
                          "meta_commentary": "This passage",
                          "truncated": "finish_reason=length",
                          "gopher_quality": "gopher_below_alpha_threshold"}.get(outcome)
                if outcome == "near_dup":
                    detail = json.dumps({"cluster": r, "kept": kept[-1]["id"] if kept else "x"})
                rejected.append({**doc, "reason": outcome, "detail": detail})
                truth.append({**rec, "id": doc["id"], "status": "rejected", "reason": outcome})
                r += 1

    teachers = sorted({t for _, t in RECIPES.values()})
    g = StageDir(str(root / "generated"), "generate", {"recipes": list(RECIPES), "teacher_models": teachers,
                                                        "seeds": str(root / "seeds")}, inputs=[str(root / "seeds")])
    for k in range(0, max(len(docs), 1), shard_rows):
        g.write_docs(f"shard-{k // shard_rows:05d}.parquet", docs[k:k + shard_rows])
    g.write_table("rejected/shard-00000.parquet", pa.Table.from_pylist(failed, schema=REJECT_SCHEMA))
    g.counts.update(docs=len(docs), rejected=len(failed), seeds=seeds, units=len(truth))
    g.dropped.update({"parse_no_qa_pairs": len(failed)} if failed else {})
    g.finish(accounting={"requests": len(truth), "docs": len(docs)})

    c = StageDir(str(root / "curated"), "curate", {"filters": "test"}, inputs=[str(root / "generated"), str(root / "seeds")])
    for k in range(0, max(len(kept), 1), shard_rows):
        c.write_docs(f"{k // shard_rows:05d}.parquet", kept[k:k + shard_rows])
    by_reason: dict[str, list] = {}
    for row in rejected:
        by_reason.setdefault(row["reason"], []).append(row)
    for reason, rows in by_reason.items():
        for k in range(0, len(rows), shard_rows):
            c.write_table(f"rejected/{reason}-{k // shard_rows:05d}.parquet",
                          pa.Table.from_pylist(rows[k:k + shard_rows], schema=REJECTED_SCHEMA))
    c.counts.update({"in": len(docs), "kept": len(kept), "rejected": len(rejected)})
    c.dropped.update({k: len(v) for k, v in by_reason.items()})
    c.finish()
    return {"requests": truth, "seeds": seeds, "seed_rows": seed_rows}
