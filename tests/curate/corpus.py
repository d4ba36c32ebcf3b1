"""Test corpora for curation: real Wikipedia prose (from the installed offline corpus) turned into
"synthetic" documents, with planted bad documents, duplicates and benchmark contamination."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from factory.core.schema import make_doc
from factory.core.stage import StageDir, write_card
from factory.seeds.sources import load_wiki_summaries


def records(min_words: int = 60) -> list[dict]:
    return [r for r in load_wiki_summaries() if len(r["extract"].split()) >= min_words]


def lesson(rec: dict) -> str:
    """A plausible synthetic lesson around a real extract (real prose keeps the quality filters honest)."""
    return (f"{rec['title']}\n\n{rec['extract']}\n\nIn short, {rec['title']} is best described as "
            f"{(rec['description'] or 'a notable subject').lower()}, and this overview has explained why it matters.")


def syn(text: str, i: int, recipe: str = "textbook", seed: str | None = None, finish: str = "stop",
        extra: dict | None = None, kind: str = "synthetic") -> dict[str, Any]:
    return make_doc(text, kind, "gen", sample=i, seed_id=seed or f"wiki:{i}", recipe=recipe, prompt_sha="p",
                    teacher_model="smollm2", sampling={"temperature": 0.7}, prompt_tokens=10, completion_tokens=100,
                    finish_reason=finish, created_at="2025-01-01T00:00:00+00:00", extra=extra or {"audience": "kids"})


def edit(text: str, rate: float, rng: random.Random) -> str:
    """A near copy: each word independently replaced, dropped or followed by an insertion with `rate`."""
    fillers = ["very", "also", "notably", "indeed", "often", "widely", "largely", "still"]
    out = []
    for w in text.split():
        r = rng.random()
        if r < rate / 3:
            out.append(rng.choice(fillers))
        elif r < 2 * rate / 3:
            continue
        elif r < rate:
            out += [w, rng.choice(fillers)]
        else:
            out.append(w)
    return " ".join(out)


def write_stage(path: Path, rows: list[dict], stage: str = "generate", shards: int = 2) -> str:
    sd = StageDir(str(path), stage, {"test": stage})
    for k in range(shards):
        part = rows[k::shards]
        if part:
            sd.write_docs(f"part-{k:05d}.parquet", part)
    write_card(sd, "planted documents", {"rows": len(rows)}, "cc-by-sa-3.0")  # texts from Wikipedia summaries
    sd.finish()
    return str(path)


def write_jsonl(path: Path, items: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return str(path)
