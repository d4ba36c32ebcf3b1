"""The curation report: counts per reason, examples per reason, and the dedup clusters removed."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import fsspec
import pyarrow.parquet as pq

SNIP = 240


def _snip(s: str | None) -> str:
    s = " ".join((s or "").split())
    return s if len(s) <= SNIP else s[:SNIP] + "…"


def read_rejected(fs, files: list[str]) -> list[dict[str, Any]]:
    rows = []
    for f in files:
        with fs.open(f, "rb") as fh:
            t = pq.ParquetFile(fh).read(columns=["id", "text", "reason", "detail", "meta"])
        for r in t.to_pylist():
            r["recipe"] = (r.pop("meta") or {}).get("recipe") or "-"
            rows.append(r)
    return rows


def by_recipe(fs, rejected: list[dict], kept_files: list[str], examples: int = 2) -> dict[str, Any]:
    """Per recipe: documents in and kept, dropped per reason, and a few examples of each reason."""
    out: dict[str, Any] = {}

    def entry(recipe: str) -> dict[str, Any]:
        return out.setdefault(recipe, {"in": 0, "kept": 0, "dropped": Counter(), "examples": {}})

    for f in kept_files:
        with fs.open(f, "rb") as fh:
            metas = pq.ParquetFile(fh).read(columns=["meta"]).column("meta").to_pylist()
        for m in metas:
            e = entry((m or {}).get("recipe") or "-")
            e["in"] += 1
            e["kept"] += 1
    for r in rejected:
        e = entry(r["recipe"])
        e["in"] += 1
        e["dropped"][r["reason"]] += 1
        lst = e["examples"].setdefault(r["reason"], [])
        if len(lst) < examples:
            lst.append({"id": r["id"], "detail": r["detail"], "text": _snip(r["text"])})
    for e in out.values():
        e["dropped"] = dict(e["dropped"].most_common())
    return dict(sorted(out.items()))


def build(fs, wfs, work_root: str, rejected: list[dict], kept_files: list[str], max_clusters: int,
          examples_per_reason: int = 3) -> dict[str, Any]:
    """The report's examples and dedup clusters; `fs` holds the kept files, `wfs` the work folder."""
    by_reason: dict[str, list[dict]] = {}
    for r in rejected:
        lst = by_reason.setdefault(r["reason"], [])
        if len(lst) < examples_per_reason:
            lst.append({"id": r["id"], "detail": r["detail"], "text": _snip(r["text"])})
    clusters: list[dict] = []
    cpath = f"{work_root}/decide/clusters.json"
    if wfs.exists(cpath):
        with wfs.open(cpath, "rt") as f:
            clusters = json.load(f)
    clusters.sort(key=lambda c: (-c["size"], c["cluster"]))
    shown = clusters[:max_clusters]
    texts = {r["id"]: r["text"] for r in rejected if r["reason"].endswith("_dup") or r["reason"].endswith("_reference")}
    want = {c["kept"] for c in shown}
    texts.update(_lookup(fs, wfs, want - texts.keys(), work_root, kept_files))
    for c in shown:
        c["kept_text"] = _snip(texts.get(c["kept"]))
        c["removed_examples"] = [{"id": i, "text": _snip(texts.get(i))} for i in c["removed"][:3]]
    kinds = Counter(c["kind"] for c in clusters)
    return {"examples": by_reason, "by_recipe": by_recipe(fs, rejected, kept_files), "clusters_total": len(clusters), "clusters_by_kind": dict(kinds),
            "docs_removed_by_dedup": sum(len(c["removed"]) for c in clusters), "clusters": shown}


def _lookup(fs, wfs, ids: set[str], work_root: str, kept_files: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    if not ids:
        return out
    for f in wfs.glob(f"{work_root}/index/ref-*.jsonl"):
        with wfs.open(f, "rt") as fh:
            for line in fh:
                rec = json.loads(line)
                if rec["id"] in ids:
                    out[rec["id"]] = rec.get("text", "")
    for f in kept_files:
        if len(out) == len(ids):
            break
        with fs.open(f, "rb") as fh:
            t = pq.ParquetFile(fh).read(columns=["id", "text"])
        for i, txt in zip(t.column("id").to_pylist(), t.column("text").to_pylist()):
            if i in ids:
                out[i] = txt
    return out


def markdown(summary: dict[str, Any], report: dict[str, Any]) -> str:
    lines = ["# Curation report", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary.items() if not isinstance(v, dict)]
    lines += ["", "## Removed, by reason", "", "| reason | docs |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(summary.get("dropped", {}).items(), key=lambda kv: -kv[1])]
    lines += ["", "## Examples per reason", ""]
    for reason, exs in sorted(report["examples"].items()):
        lines.append(f"### {reason}")
        lines += [f"- `{e['id']}` ({e['detail']}): {e['text']}" for e in exs]
        lines.append("")
    lines += ["## By recipe", "", "| recipe | in | kept | dropped (reason: docs) |", "|---|---|---|---|"]
    for recipe, e in report.get("by_recipe", {}).items():
        lines.append(f"| {recipe} | {e['in']} | {e['kept']} | "
                     + (", ".join(f"{k}: {v}" for k, v in e["dropped"].items()) or "-") + " |")
    lines.append("")
    for recipe, e in report.get("by_recipe", {}).items():
        for reason, exs in e["examples"].items():
            lines.append(f"### {recipe}: {reason}")
            lines += [f"- `{x['id']}` ({x['detail']}): {x['text']}" for x in exs]
            lines.append("")
    lines += ["## Dedup clusters", "", f"{report['clusters_total']} clusters lost "
              f"{report['docs_removed_by_dedup']} documents ({report['clusters_by_kind']}).", ""]
    for c in report["clusters"]:
        who = "reference" if c["kept_is_reference"] else "kept"
        lines.append(f"### cluster {c['cluster']} ({c['kind']}, {c['size']} docs)")
        lines.append(f"- {who} `{c['kept']}`: {c['kept_text']}")
        lines += [f"- removed `{e['id']}`: {e['text']}" for e in c["removed_examples"]]
        lines.append("")
    return "\n".join(lines)


def fs_root(url: str):
    return fsspec.core.url_to_fs(str(url).rstrip("/"))
