"""What a run made, as a light index: every document's id, recipe, teacher, status and reason, and
where its row lives (file, row), built once from a few parquet columns; rows are read lazily, one
row group at a time, so a folder of 100k+ documents never loads whole.

A folder is a stage (generate or curate: it holds `manifest.json` naming its stage) or a run (a
folder whose sub-folders are stages, like `runs/demo`). From a stage the other stages are found
through the manifests' `inputs` (or, where an input path moved, a sibling folder of that name).

Statuses: `kept` (a curated shard), `rejected` (curate's rejected/, with its reason and detail),
`generated` (made, not curated by any stage found here), `failed` (a generation request that
made no document: generate's rejected/, with its reason and the raw completion).
"""

from __future__ import annotations

import bisect
import json
import os
import re
from collections import Counter, OrderedDict, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from factory.core.errors import FactoryError
from factory.core.stage import StageDir, doc_files, is_local, storage_errors

GENERATE, CURATE = "generate", "curate"
SEED_STAGES = ("seeds", "seedcurate")
STATUSES = ("kept", "rejected", "generated", "failed")
GROUP_CACHE = 24  # row groups held decoded (1,000 rows each)


@dataclass
class Stage:
    url: str
    kind: str
    manifest: dict[str, Any]
    fs: Any = None
    root: str = ""

    def __post_init__(self):
        self.fs, self.root = fsspec.core.url_to_fs(self.url)


def _stage_at(url: str) -> Stage | None:
    try:
        with storage_errors(url):
            m = StageDir.read_manifest(url)
    except FactoryError:
        return None
    if not isinstance(m, dict) or not m.get("stage"):
        return None
    return Stage(url.rstrip("/"), str(m["stage"]), m)


def _children(url: str) -> list[str]:
    fs, root = fsspec.core.url_to_fs(url)
    with storage_errors(url):
        fs.invalidate_cache(root)
        entries = fs.ls(root, detail=True)
    out = []
    for e in entries:
        if e.get("type") == "directory":
            name = e["name"].rstrip("/").rsplit("/", 1)[-1]
            out.append(f"{url.rstrip('/')}/{name}")
    return sorted(out)


def _resolve_input(stage: Stage, inp: str) -> Stage | None:
    """An input named in a manifest: a sibling of `stage` by that name first (a run copied or moved,
    to another disk or a store, reads its own stages), else where the manifest says."""
    name = inp.rstrip("/").rsplit("/", 1)[-1]
    parent = stage.url.rsplit("/", 1)[0] if "/" in stage.url else "."
    return _stage_at(f"{parent}/{name}") or _stage_at(inp)


@dataclass
class Stages:
    folder: str
    seeds: Stage | None = None
    generate: Stage | None = None
    curate: Stage | None = None
    kind: str = "run"  # "run" or the stage given


def find_stages(folder: str) -> Stages:
    """The seeds, generate and curate stages of a run folder or reached from a stage folder."""
    folder = str(folder).rstrip("/") or "/"
    fs, root = fsspec.core.url_to_fs(folder)
    with storage_errors(folder):
        if not fs.isdir(root):
            raise FactoryError("not a folder", where=folder,
                               fix="give a run folder (like runs/demo) or its generated/ or curated/ stage folder")
    here = _stage_at(folder)
    st = Stages(folder)
    found: list[Stage] = []
    if here is not None:
        st.kind = here.kind
        found = [here]
    else:
        found = [s for s in (_stage_at(c) for c in _children(folder)) if s is not None]
    by = defaultdict(list)
    for s in found:
        by[s.kind].append(s)
    st.curate = by[CURATE][0] if by[CURATE] else None
    st.generate = by[GENERATE][0] if by[GENERATE] else None
    # follow the inputs: curate -> generate -> seeds
    if st.curate is not None and st.generate is None:
        for inp in st.curate.manifest.get("inputs") or []:
            s = _resolve_input(st.curate, str(inp))
            if s is not None and s.kind == GENERATE:
                st.generate = s
                break
    if st.curate is not None and len(by[CURATE]) > 1 and st.generate is not None:
        for c in by[CURATE]:  # the curate stage that read this generate stage
            if any(str(i).rstrip("/").endswith("/" + st.generate.url.rsplit("/", 1)[-1]) for i in c.manifest.get("inputs") or []):
                st.curate = c
                break
    if st.generate is not None:
        srcs = list(st.generate.manifest.get("inputs") or [])
        cfg_seeds = (st.generate.manifest.get("config") or {}).get("seeds")
        if cfg_seeds:
            srcs.insert(0, str(cfg_seeds))
        for inp in srcs:
            s = _resolve_input(st.generate, inp)
            if s is not None and s.kind in SEED_STAGES:
                st.seeds = s
                break
    if st.seeds is None:
        seeds = [s for k in SEED_STAGES for s in by[k]]
        st.seeds = seeds[-1] if seeds else None  # curated seeds, where both are there
    if st.generate is None and st.curate is None:
        what = f"a {here.kind} stage" if here is not None else "neither a stage folder nor a run folder"
        raise FactoryError(f"{what}: nothing to review here",
                           where=folder, fix="give a run folder (like runs/demo, with generated/ and curated/ inside) "
                           "or a generate or curate stage folder (one with manifest.json)")
    return st


# -- reading parquet ---------------------------------------------------------------------------
def _open(fs, path: str):
    return path if is_local(fs) else fs.open(path, "rb")


def _names(schema: pa.Schema) -> set[str]:
    return set(schema.names)


def _col(table: pa.Table, name: str, sub: str | None = None) -> list:
    """A column (or a field of the `meta` struct) as a list; Nones where it is absent."""
    if sub is not None:
        if "meta" not in table.column_names:
            return [None] * table.num_rows
        meta = table.column("meta").combine_chunks()
        t = meta.type
        if sub not in [t.field(i).name for i in range(t.num_fields)]:
            return [None] * table.num_rows
        return meta.field(sub).to_pylist()
    return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows


class Files:
    """Parquet files by number, with their row-group offsets and an LRU of decoded row groups."""

    def __init__(self):
        self.paths: list[tuple[Any, str]] = []
        self.offsets: list[list[int]] = []
        self._cache: OrderedDict[tuple[int, int], list[dict]] = OrderedDict()

    def add(self, fs, path: str, meta: pq.FileMetaData) -> int:
        offs, n = [], 0
        for i in range(meta.num_row_groups):
            offs.append(n)
            n += meta.row_group(i).num_rows
        self.paths.append((fs, path))
        self.offsets.append(offs)
        return len(self.paths) - 1

    def row(self, file: int, row: int) -> dict:
        offs = self.offsets[file]
        rg = bisect.bisect_right(offs, row) - 1
        key = (file, rg)
        rows = self._cache.get(key)
        if rows is None:
            fs, path = self.paths[file]
            with storage_errors(path):
                rows = pq.ParquetFile(_open(fs, path)).read_row_group(rg).to_pylist()
            self._cache[key] = rows
            while len(self._cache) > GROUP_CACHE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return rows[row - offs[rg]]


def _files(stage: Stage, pattern: str) -> list[str]:
    stage.fs.invalidate_cache(stage.root)
    return sorted(stage.fs.glob(f"{stage.root}/{pattern}"))


def _read_cols(fs, path: str, want: list[str]) -> tuple[pa.Table, pq.FileMetaData]:
    with storage_errors(path):
        pf = pq.ParquetFile(_open(fs, path))
        have = set(pf.schema_arrow.names)
        cols = [c for c in want if c.split(".", 1)[0] in have]
        return pf.read(columns=cols), pf.metadata


def _meta_cols(table: pa.Table, names: list[str]) -> dict[str, list]:
    """With `meta.x` columns read, pyarrow returns a `meta` struct holding only those fields."""
    return {n: _col(table, "", n) for n in names}


def _covered(st: Stages) -> bool:
    """Curate read this generate stage alone, finished, and wrote every document it read (kept or
    rejected): the generated shards hold no document the index lacks, and need not be read."""
    if st.curate is None or st.generate is None:
        return False
    c, g = st.curate.manifest, st.generate.manifest
    gens = [i for i in c.get("inputs") or [] if getattr(_resolve_input(st.curate, str(i)), "kind", "") == GENERATE]
    cin, gdocs = (c.get("counts") or {}).get("in"), (g.get("counts") or {}).get("docs")
    counts = c.get("counts") or {}
    return (c.get("status") == "done" and g.get("status") == "done" and len(gens) == 1 and isinstance(cin, int)
            and cin == gdocs and counts.get("kept", -1) + counts.get("rejected", -1) == cin)


# -- the index -----------------------------------------------------------------------------------
@dataclass
class Index:
    """One entry per document (and per failed generation request), in columns."""

    stages: Stages
    files: Files = field(default_factory=Files)
    ids: list[str] = field(default_factory=list)
    recipe: list[str] = field(default_factory=list)
    teacher: list[str] = field(default_factory=list)
    seed: list[str] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    reason: list[str] = field(default_factory=list)
    loc: list[tuple[int, int]] = field(default_factory=list)
    pos: dict[str, int] = field(default_factory=dict)
    seed_loc: dict[str, tuple[int, int]] = field(default_factory=dict)
    seed_count: int = 0
    _codes: dict[str, tuple[list[str], np.ndarray]] = field(default_factory=dict)
    _funnel: dict[str, Any] | None = None
    _failed: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def _add(self, id_: str, recipe, teacher, seed, status: str, reason, loc) -> None:
        if id_ in self.pos:
            return
        self.pos[id_] = len(self.ids)
        self.ids.append(id_)
        self.recipe.append(recipe or "?")
        self.teacher.append(teacher or "?")
        self.seed.append(seed or "")
        self.status.append(status)
        self.reason.append(reason or "")
        self.loc.append(loc)

    def _extend(self, ids: list, recipe: list, teacher: list, seed: list, status: str, reason: list, file: int) -> None:
        start = len(self.ids)
        rows = range(len(ids))
        if not self.pos.keys().isdisjoint(ids) or len(set(ids)) != len(ids):  # the first of an id wins
            for i, id_ in enumerate(ids):
                self._add(id_, recipe[i], teacher[i], seed[i], status, reason[i], (file, i))
            return
        self.pos.update(zip(ids, range(start, start + len(ids))))
        self.ids += ids
        self.recipe += [r or "?" for r in recipe]
        self.teacher += [t or "?" for t in teacher]
        self.seed += [d or "" for d in seed]
        self.status += [status] * len(ids)
        self.reason += [r or "" for r in reason]
        self.loc += [(file, i) for i in rows]

    def _add_docs(self, stage: Stage, paths: list[str], status: str, with_reason: bool, new_only: bool = False) -> None:
        """`new_only`: read ids first and the rest only where some are not indexed yet (a generate
        stage whose documents curate already accounted for costs one column)."""
        want = ["id", "meta.recipe", "meta.teacher_model", "meta.seed_id"] + (["reason"] if with_reason else [])

        def read(p: str):
            if new_only:
                t, _ = _read_cols(stage.fs, p, ["id"])
                if self.pos.keys() >= set(_col(t, "id")):
                    return None
            return _read_cols(stage.fs, p, want)

        # parquet decoding releases the GIL: a few files at once
        with ThreadPoolExecutor(max_workers=min(4, (os.cpu_count() or 1) + 1)) as pool:
            for p, got in zip(paths, pool.map(read, paths)):
                if got is None:
                    continue
                t, meta = got
                f = self.files.add(stage.fs, p, meta)
                m = _meta_cols(t, ["recipe", "teacher_model", "seed_id"])
                reasons = _col(t, "reason") if with_reason else [None] * t.num_rows
                self._extend(_col(t, "id"), m["recipe"], m["teacher_model"], m["seed_id"], status, reasons, f)

    def _add_failed(self, stage: Stage) -> None:
        teachers = (stage.manifest.get("config") or {}).get("teacher_models") or []
        teacher = teachers[0] if len(teachers) == 1 else "?"
        for p in _files(stage, "rejected/*.parquet"):
            t, meta = _read_cols(stage.fs, p, ["seed_id", "recipe", "sample", "reason"])
            f = self.files.add(stage.fs, p, meta)
            name = p.rsplit("/", 1)[-1].removesuffix(".parquet")
            for i, (sd, rc, smp, rs) in enumerate(zip(_col(t, "seed_id"), _col(t, "recipe"), _col(t, "sample"),
                                                      _col(t, "reason"))):
                self._add(f"failed-{name}-{i}", rc, teacher, sd, "failed", rs, (f, i))
                self._failed.append(len(self.ids) - 1)

    def _add_seeds(self, stage: Stage) -> None:
        for p in doc_files(stage.fs, stage.root):
            t, meta = _read_cols(stage.fs, p, ["id", "meta.seed_id"])
            f = self.files.add(stage.fs, p, meta)
            for i, (id_, sd) in enumerate(zip(_col(t, "id"), _meta_cols(t, ["seed_id"])["seed_id"])):
                self.seed_loc.setdefault(sd or id_, (f, i))
                self.seed_loc.setdefault(id_, (f, i))
                self.seed_count += 1

    @classmethod
    def build(cls, stages: Stages) -> "Index":
        ix = cls(stages)
        if stages.curate is not None:
            c = stages.curate
            ix._add_docs(c, doc_files(c.fs, c.root), "kept", False)
            ix._add_docs(c, _files(c, "rejected/*.parquet"), "rejected", True)
        if stages.generate is not None:
            g = stages.generate
            if not _covered(stages):
                ix._add_docs(g, doc_files(g.fs, g.root), "generated", False, new_only=stages.curate is not None)
            ix._add_failed(g)
        if stages.seeds is not None:
            ix._add_seeds(stages.seeds)
        ix._teachers_of_failed()
        return ix

    def _teachers_of_failed(self) -> None:
        """A failed request records no teacher: where every document of its recipe has one teacher, it is that."""
        by: dict[str, set] = defaultdict(set)
        if not self._failed:
            return
        rcats, rcode = self.codes("recipe")
        tcats, tcode = self.codes("teacher")
        ok = np.ones(len(self), dtype=bool)
        ok[self._failed] = False
        for r_, t_ in set(zip(rcode[ok].tolist(), tcode[ok].tolist())):
            by[rcats[r_]].add(tcats[t_])
        self._codes.pop("teacher", None)
        for i in self._failed:
            if self.teacher[i] == "?" and len(by[self.recipe[i]]) == 1:
                self.teacher[i] = next(iter(by[self.recipe[i]]))

    # filters -----------------------------------------------------------------------------------
    def codes(self, name: str) -> tuple[list[str], np.ndarray]:
        """(sorted distinct values, each entry's position among them) of a column."""
        if name not in self._codes:
            enc = pa.array(getattr(self, name), type=pa.string()).dictionary_encode()
            cats = enc.dictionary.to_pylist()
            order = sorted(range(len(cats)), key=cats.__getitem__)
            remap = np.empty(len(cats), dtype=np.int32)
            remap[order] = np.arange(len(cats), dtype=np.int32)
            idx = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
            self._codes[name] = ([cats[i] for i in order], remap[idx] if len(idx) else idx.astype(np.int32))
        return self._codes[name]

    def select(self, recipe: str = "", status: str = "", reason: str = "", teacher: str = "",
               only: set[int] | None = None, exclude: set[int] | None = None) -> np.ndarray:
        """Positions of the entries that pass every filter given (empty: any)."""
        mask = np.ones(len(self), dtype=bool)
        for name, want in (("recipe", recipe), ("status", status), ("reason", reason), ("teacher", teacher)):
            if want:
                cats, codes = self.codes(name)
                mask &= codes == (cats.index(want) if want in cats else -1)
        if only is not None:
            keep = np.zeros(len(self), dtype=bool)
            keep[list(only)] = True
            mask &= keep
        if exclude:
            mask[list(exclude)] = False
        return np.nonzero(mask)[0]

    # rows --------------------------------------------------------------------------------------
    def row(self, i: int) -> dict:
        return self.files.row(*self.loc[i])

    def seed_row(self, seed_id: str) -> dict | None:
        loc = self.seed_loc.get(seed_id)
        return self.files.row(*loc) if loc else None

    def entry(self, i: int) -> dict[str, Any]:
        return {"id": self.ids[i], "recipe": self.recipe[i], "teacher": self.teacher[i], "seed_id": self.seed[i],
                "status": self.status[i], "reason": self.reason[i]}

    def doc(self, i: int, full: bool = True, snippet: int = 240) -> dict[str, Any]:
        """The entry with its text (the raw completion for a failed request), detail and marks; with
        `full`, the seed passage too."""
        e = self.entry(i)
        r = self.row(i)
        meta = r.get("meta") or {}
        if e["status"] == "failed":
            d = _json(r.get("detail"))
            text = (d.get("raw") if isinstance(d, dict) else None) or r.get("text") or ""
            detail = d.get("detail") if isinstance(d, dict) and d.get("detail") else r.get("detail")
            extra: dict[str, Any] = {"vars": d.get("vars")} if isinstance(d, dict) else {}
            finish = d.get("finish_reason") if isinstance(d, dict) else None
        else:
            text = r.get("text") or ""
            detail = r.get("detail")
            extra = _json(meta.get("extra")) or {}
            finish = meta.get("finish_reason")
        e["detail"] = detail if isinstance(detail, str) or detail is None else json.dumps(detail)
        if not full:
            e["text"] = text[:snippet] + ("…" if len(text) > snippet else "")
            return e
        e["text"] = text
        e["marks"], e["notes"] = marks(text, e["reason"], e["detail"], extra, finish, self)
        e["meta"] = {k: v for k, v in meta.items() if k != "extra" and v is not None}
        e["vars"] = extra.get("vars") if isinstance(extra, dict) else None
        s = self.seed_row(e["seed_id"]) if e["seed_id"] else None
        e["seed"] = {"id": s["id"], "text": s["text"]} if s else None
        return e

    # the funnel --------------------------------------------------------------------------------
    def funnel(self) -> dict[str, Any]:
        """seeds -> requests -> documents -> kept, overall, per recipe and per teacher; reasons.
        Counted once (the index does not change), with numpy over the columns' codes."""
        if self._funnel is not None:
            return self._funnel
        scats, scode = self.codes("status")
        rcats, rcode = self.codes("reason")
        dcats, dcode = self.codes("seed")
        is_ = {name: (scode == scats.index(name)) if name in scats else np.zeros(len(self), dtype=bool)
               for name in STATUSES}
        dropped = is_["rejected"] | is_["failed"]
        empty_seed = dcats.index("") if "" in dcats else -1

        def group(key: str) -> list[dict[str, Any]]:
            cats, code = self.codes(key)
            k = len(cats)
            count = lambda mask: np.bincount(code[mask], minlength=k)  # noqa: E731
            req, kept, rej, fail = count(np.ones(len(self), bool)), count(is_["kept"]), count(is_["rejected"]), count(is_["failed"])
            pairs = np.unique(code.astype(np.int64) * (len(dcats) + 1) + dcode)
            pairs = pairs[pairs % (len(dcats) + 1) != empty_seed]
            seeds = np.bincount(pairs // (len(dcats) + 1), minlength=k)
            rp, rn = np.unique(code[dropped].astype(np.int64) * (len(rcats) + 1) + rcode[dropped], return_counts=True)
            reasons: dict[int, Counter] = defaultdict(Counter)
            for p_, n_ in zip(rp.tolist(), rn.tolist()):
                if rcats[p_ % (len(rcats) + 1)]:
                    reasons[p_ // (len(rcats) + 1)][rcats[p_ % (len(rcats) + 1)]] = n_
            return [{key: cats[i], "seeds": int(seeds[i]), "requests": int(req[i]),
                     "documents": int(req[i] - fail[i]), "kept": int(kept[i]), "rejected": int(rej[i]),
                     "failed": int(fail[i]), "reasons": dict(reasons[i].most_common())} for i in range(k)]

        st = {name: int(m.sum()) for name, m in is_.items()}
        curated = self.stages.curate is not None
        reasons = []
        for stage, status in (("generate", "failed"), ("curate", "rejected")):
            c = Counter(dict(zip(rcats, np.bincount(rcode[is_[status]], minlength=len(rcats)).tolist())))
            reasons += [{"stage": stage, "reason": r, "count": n} for r, n in c.most_common() if n and r]
        gen = self.stages.generate.manifest if self.stages.generate else {}
        cur = self.stages.curate.manifest if self.stages.curate else {}
        self._funnel = {
            "total": {"seeds": self.seed_count or len(set(dcats) - {""}), "requests": len(self),
                      "documents": len(self) - st["failed"], "kept": st["kept"] if curated else None,
                      "rejected": st["rejected"], "failed": st["failed"], "uncurated": st["generated"]},
            "recipes": group("recipe"),
            "teachers": group("teacher"),
            "reasons": reasons,
            "manifests": {"generate": {k: gen.get(k) for k in ("status", "counts", "dropped", "accounting") if k in gen},
                          "curate": {k: cur.get(k) for k in ("status", "counts", "dropped") if k in cur}},
        }
        return self._funnel


def _json(s: Any) -> Any:
    if not isinstance(s, str) or not s.strip().startswith(("{", "[")):
        return s if not isinstance(s, str) else {}
    try:
        return json.loads(s)
    except ValueError:
        return {}


# -- what each check saw, marked in the text ---------------------------------------------------------
_PREFIXES = (re.compile(r"^\d+/\d+ unsupported:\s*"), re.compile(r"^\d+/\d+ relations the seed does not make:\s*"),
             re.compile(r"^nothing left after stripping:\s*"), re.compile(r"^instruction:\s*"))
_NEAR = re.compile(r"\s*\(near [^)]*\)\s*$")


def _pieces(detail: str) -> list[str]:
    """The text spans a check's detail names (unsupported names, a matched phrase, ...)."""
    out = []
    for part in re.split(r";\s+", detail):
        part = part.strip()
        for rx in _PREFIXES:
            part = rx.sub("", part)
        part = _NEAR.sub("", part).strip()
        if len(part) >= 2 and not re.match(r"^(novel words|score|too (short|long)|finish_reason=|gopher_)", part):
            out.append(part)
    return out


def _find(text: str, piece: str) -> list[tuple[int, int]]:
    words = [re.escape(w) for w in piece.split()]
    if not words:
        return []
    pat = r"\s+".join(words)
    if re.match(r"\w", piece):
        pat = r"(?<!\w)" + pat
    bounded = pat
    if re.search(r"\w$", piece):
        bounded += r"(?!\w)"
    found = [(m.start(), m.end()) for m in re.finditer(bounded, text, re.IGNORECASE)][:50]
    if not found and bounded != pat:  # "20" of "20th": the check saw it inside a longer word
        found = [(m.start(), m.end()) for m in re.finditer(pat, text, re.IGNORECASE)][:50]
    return found


def marks(text: str, reason: str, detail: str | None, extra: dict, finish: str | None, ix: Index | None = None
          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(spans in `text` a check pointed at: start, end, kind, why; notes: what a check recorded
    that is not in the text, e.g. the stripped lines, the duplicate kept instead)."""
    spans: list[dict[str, Any]] = []
    notes: list[dict[str, Any]] = []
    d = _json(detail) if detail else {}
    if reason:
        notes.append({"kind": reason, "text": detail or ""})
    if isinstance(d, dict) and d.get("kept"):  # dedup: the document kept in its place
        kept = str(d["kept"])
        notes.append({"kind": "duplicate", "text": f"near/exact duplicate of {kept} (cluster {d.get('cluster')})",
                      "doc": kept if ix is not None and kept in ix.pos else None})
    if isinstance(d, dict) and d.get("ngram"):  # decontamination
        for a, b in _find(text, str(d["ngram"])):
            spans.append({"start": a, "end": b, "kind": reason or "contamination", "why": f"benchmark {d.get('task')}"})
    elif detail and not (isinstance(d, dict) and d):
        for piece in _pieces(detail):
            for a, b in _find(text, piece):
                spans.append({"start": a, "end": b, "kind": reason, "why": piece})
    if isinstance(extra, dict):
        for cut in extra.get("stripped") or []:  # lines curate cut from the text (a preamble, a sign-off)
            if isinstance(cut, dict):
                notes.append({"kind": "stripped", "text": str(cut.get("text", "")), "where": cut.get("where"),
                              "step": cut.get("step")})
            else:
                notes.append({"kind": "stripped", "text": str(cut)})
        c = extra.get("contamination")
        if isinstance(c, dict) and c.get("ngram"):
            notes.append({"kind": "contamination", "text": f"flagged: {c.get('task')}: {c.get('ngram')}"})
            for a, b in _find(text, str(c["ngram"])):
                spans.append({"start": a, "end": b, "kind": "contamination", "why": str(c.get("task"))})
        v = extra.get("verdicts")
        if v:
            notes.append({"kind": "verdicts", "text": json.dumps(v, sort_keys=True)[:500]})
    if finish == "length":
        notes.append({"kind": "truncated", "text": "the teacher stopped at max_tokens (finish_reason=length)"})
        if text:
            spans.append({"start": max(0, len(text) - 40), "end": len(text), "kind": "truncated",
                          "why": "cut off at max_tokens"})
    spans.sort(key=lambda s: (s["start"], -s["end"]))
    merged: list[dict[str, Any]] = []
    for s in spans:  # no overlaps: the page wraps each span in one element
        if merged and s["start"] < merged[-1]["end"]:
            continue
        merged.append(s)
    return merged, notes
