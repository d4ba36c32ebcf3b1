"""What the cells of a grid read: benchmarks, subsets of a source, the output folder (a path or a
URL, with a local copy of what the planner and trainer read from disk) and each run's config."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from factory.ablate.grid import GridConfig, SubsetConfig
from factory.core.errors import FactoryError
from factory.core.merge import deep_merge
from train import storage


def build_benchmarks(g: GridConfig, out: Path, base_mix: dict, data_root: Path) -> list[str]:
    from factory.evaluate import sets as evalsets

    bdir = out / "benchmarks"
    b = g.benchmarks
    hold = list(b.holdout_titles) + _lines(data_root, b.holdout_titles_file, "benchmarks.holdout_titles_file")
    titles = _lines(data_root, b.titles_file, "benchmarks.titles_file") if b.titles_file else None
    if b.titles_from:
        titles = (titles or []) + _doc_titles(data_root, b.titles_from)
    made = evalsets.build(bdir, holdout_titles=hold or None, titles=titles, seed=b.seed, n=b.n,
                          benches=list(b.builtin) + (["wiki_val"] if hold else []))
    dirs = list(made["dirs"].values())
    if g.benchmarks.source_loss:
        for s in base_mix.get("sources", []):
            src = Path(s["path"]) if Path(s["path"]).is_absolute() else data_root / s["path"]
            if src.exists():
                dirs.append(str(evalsets.source_loss_bench(bdir, f"loss_{s['name']}", src, g.benchmarks.source_windows)))
    for f in g.benchmarks.files:
        if not Path(f).exists():
            raise FactoryError("benchmark file not found", where=f, field="benchmarks.files", fix="check the path")
        dirs.append(f)
    return dirs


class Out:
    """The output folder (a path or a URL) and `local`, the folder here holding what the planner
    and trainer read from disk (for a local `out`, the same folder)."""

    def __init__(self, out: str | Path, scratch: str | Path | None = None):
        self.url = str(out).rstrip("/") if storage.is_url(out) else None
        tag = hashlib.sha256(str(self.url).encode()).hexdigest()[:16]
        self.local = Path(out) if not self.url else Path(scratch or Path(tempfile.gettempdir()) / "factory-ablate" / tag)
        self.name = self.url or str(self.local)

    def uri(self, rel: str) -> str:
        return storage.join(self.url, rel) if self.url else str(self.local / rel)

    def write(self, rel: str, text: str) -> None:  # the local copy and, for a URL, the object
        (self.local / rel).parent.mkdir(parents=True, exist_ok=True)
        (self.local / rel).write_text(text)
        if self.url:
            storage.write_text(self.uri(rel), text)

    def exists(self, rel: str) -> bool:
        return storage.exists(self.uri(rel))

    def read(self, rel: str) -> str:
        return storage.read_text(self.uri(rel))


def run_config(g: GridConfig, seed_dir: Path, seed: int, run_dir: str | None = None, scale: str | None = None) -> dict:
    """The trainer's run config for one cell and seed (at a scale of the grid): steps 0 = train on
    all of the plan's tokens. The plan is read from seed_dir on local disk; the run goes to run_dir
    (default seed_dir/run)."""
    s = g.scales[scale] if scale else None
    fixed = {"run_dir": run_dir or str((seed_dir / "run").resolve()), "seed": seed, "model": dict(s.model if s else g.model),
             "data": {"source": "plan", "plan": str((seed_dir / "plan.json").resolve())}}
    return deep_merge(deep_merge(deep_merge({"train": {"steps": 0}}, g.run_config), s.run_config if s else {}), fixed)


def _lines(root: Path, name: str | None, field: str) -> list[str]:
    if not name:
        return []
    p = Path(name) if Path(name).is_absolute() else root / name
    if not p.exists():
        raise FactoryError("titles file not found", where=str(p), field=field, fix="write one title a line, or fix the path")
    return [t for t in p.read_text().splitlines() if t.strip()]


def _doc_titles(root: Path, name: str) -> list[str]:
    from factory.core.stage import read_docs

    p = Path(name) if Path(name).is_absolute() else root / name
    try:
        ids = read_docs(str(p)).column("meta").combine_chunks().field("seed_id").to_pylist()
    except FactoryError as e:
        raise FactoryError(e.what, where=str(p), field="benchmarks.titles_from", fix="name a stage folder of wiki documents") from None
    return [i[5:] for i in ids if i and i.startswith("wiki:")]


def make_subset(data_root: Path, name: str, sub: SubsetConfig) -> Path:
    """A tokenized source holding the first `fraction` of another's documents (same tokenizer)."""
    import numpy as np

    src, dst = data_root / sub.source, data_root / name
    if (dst / "source.json").exists():
        return dst
    info = json.loads((src / "source.json").read_text()) if (src / "source.json").exists() else {}
    files = sorted(src.glob("*.ds"))
    if not files:
        raise FactoryError(f"no .ds shards in {src}", where="grid", field=f"subsets.{name}.source", fix="name a tokenized source")
    width = int(info.get("token_size", 2))
    dtype = np.uint16 if width == 2 else np.uint32
    toks = [np.fromfile(f, dtype=dtype) for f in files]
    ends, base = [], 0
    for f, t in zip(files, toks):
        ends += [base + int(e) for e in np.fromfile(f"{f}.index", dtype="<u8")]
        base += len(t)
    keep = max(1, round(sub.fraction * len(ends)))
    n = ends[keep - 1]
    dst.mkdir(parents=True, exist_ok=True)
    shard = dst / f"{name}_00000_unshuffled.ds"
    np.concatenate(toks)[:n].astype(dtype).tofile(shard)
    np.asarray(ends[:keep], dtype="<u8").tofile(f"{shard}.index")
    meta = Path(f"{files[0]}.metadata")
    head = meta.read_text().splitlines()[0] if meta.exists() else f"subset|{width}"
    Path(f"{shard}.metadata").write_text(f"{head}\n{n}\n{n}\n")
    (dst / "source.json").write_text(json.dumps({**info, "docs": keep, "tokens": n, "files": [shard.name],
                                                 "subset_of": sub.source, "fraction": sub.fraction}, indent=1))
    return dst


def plan_info(plan: dict) -> dict[str, Any]:
    """Facts of a cell's plan for the tables: the teacher-made share and the epochs per source."""
    rows = [s for ph in plan.get("phases", []) for s in ph["sources"]]
    total = sum(s["tokens"] for s in rows)
    info: dict[str, Any] = {}
    if total:
        info["synthetic_share"] = round(sum(s["tokens"] for s in rows if s["kind"] != "web") / total, 3)
    for s in rows:
        info[f"epochs_{s['name']}"] = round(info.get(f"epochs_{s['name']}", 0) + s["epochs"], 2)
    return info


