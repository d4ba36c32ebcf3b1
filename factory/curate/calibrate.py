"""`factory curate calibrate LABELS --in GENERATED`: how well each filter's "drop" agrees with
reviewers' labels, and the filter settings that keep the fewest defects at a given clean recall,
chosen by k-fold cross-validation over the labeled documents.

Labels are `labels.jsonl` as `factory review` writes it (factory/review/labels.py reads it): a
document is defective when its label is anything but `clean` (with several reviewers: when at least
half of them say so).

Every filter is run by its own code (the datatrove step its config section builds) on every labeled
document, not only on those the filters before it let through, so each filter gets its own
precision and recall of "drop". A document reaches each filter as it would in today's chain: with
the lines today's strippers (meta_commentary, chatter) cut. A document is kept by a setting when
none of its enabled filters drops it and the run did not drop it as a duplicate or as contaminated
(those decisions are read from the curate stage's `rejected/` rows, not made again).

Knobs: each filter's on/off and, where it has one, its numeric threshold (`SWEEPS`); the
faithfulness check has three. A sweep changes one knob with the rest at today's settings and gives
the kept set's defect share and clean recall at each value, and the Pareto front of the two. The
choice is a coordinate search over the knobs on the training folds: among settings that keep at
least `min_clean_recall` of the clean documents, the one with the lowest defect share (else the
highest clean recall); its kept set on each held-out fold, pooled, is the reported estimate. The
config written is the same search run on all the labels.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from factory.core.errors import FactoryError

CLEAN = "clean"
CONFIG_FILE, REPORT_FILE, PLOT_FILE = "curate_calibrated.yaml", "calibration.json", "calibration.png"
TARGET = {"max_defect_share": 0.05, "min_clean_recall": 0.8}

# filter -> [(knob path in its config section, values tried)]; today's value is always tried too
SWEEPS: dict[str, list[tuple[str, list[Any]]]] = {
    "length": [("min_words", [0, 5, 10, 15, 20, 30, 40, 60, 80, 120])],
    "gopher_quality": [("options.max_non_alpha_words_ratio", [0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9])],
    "faithfulness": [("max_novelty", [0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.8, 1.0]),
                     ("min_unsupported", [1, 2, 3, 4]),
                     ("max_relations", [0, 1, 2, 3])],
    "language": [("threshold", [0.3, 0.5, 0.65, 0.8, 0.9])],
    "quality": [("threshold", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])],
    "judge": [("min_score", [1, 2, 3, 4, 5])],
}
# off today and tried on: filters that need nothing but their defaults
TRY_ON = ("fineweb_quality", "c4_quality")
# off today and left off: they need a model, endpoints or a package to be built at all
NEEDS_SETUP = ("language", "quality", "judge")
NOT_REDONE = ("dedup", "contamination")  # decisions read from the run's rejected rows


# ---------------------------------------------------------------- inputs


def read_labels(path: str, reviewer: str | None = None) -> dict[str, dict[str, Any]]:
    """doc id -> {label, defective, labels, notes}: the last label per (document, reviewer)."""
    from factory.review.labels import LabelStore

    fix = "label documents with `factory review RUN` (it writes RUN/labels.jsonl), or give that file's path"
    if not os.path.isfile(path):
        raise FactoryError("labels file not found", where=path, fix=fix)
    got = LabelStore(path).read()
    recs = [r for (_, who), r in got.latest.items() if reviewer is None or who == reviewer]
    if not recs:
        what = f"no labels by reviewer '{reviewer}'" if reviewer and got.latest else "no labels in this file"
        if got.bad_lines:
            what += f" ({len(got.bad_lines)} unreadable line(s), first line {got.bad_lines[0]})"
        raise FactoryError(what, where=path, fix=fix if not got.latest else
                           f"name one of its reviewers ({', '.join(got.reviewers())}) or leave --reviewer out")
    by: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        by.setdefault(r["id"], []).append(r)
    out = {}
    for doc, rs in by.items():
        labels = [r["label"] for r in rs]
        bad = sum(x != CLEAN for x in labels)
        worst = max((x for x in labels if x != CLEAN), key=labels.count, default=CLEAN)
        out[doc] = {"label": worst if 2 * bad >= len(labels) else CLEAN, "defective": 2 * bad >= len(labels),
                    "labels": labels, "notes": [r.get("note", "") for r in rs if r.get("note")]}
    return out


def read_rows(url: str, ids: set[str]) -> list[dict[str, Any]]:
    """The rows of a stage folder (or parquet file) whose id is in `ids`, in stored order."""
    import fsspec
    import pyarrow.parquet as pq

    from factory.curate.io import shard_files

    try:
        root, files = shard_files(url)
    except FactoryError as e:
        raise FactoryError(e.what, where=url, field="--in", fix="give the generate stage folder the labels were "
                           "made on (like runs/demo/generated)") from None
    fs, path = fsspec.core.url_to_fs(root)
    out = []
    for f in files:
        with fs.open(f"{path}/{f}", "rb") as fh:
            t = pq.ParquetFile(fh).read()
        for r in t.to_pylist():
            if r.get("id") in ids:
                out.append(r)
    return out


def find_curated(generated: str) -> str | None:
    """The curate stage folder beside `generated` that read it (its manifest names it as an input)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(generated.rstrip("/"))
    parent, name = path.rsplit("/", 1) if "/" in path else (".", path)
    try:
        kids = sorted(fs.ls(parent, detail=False))
    except (FileNotFoundError, OSError):
        return None
    for kid in kids:
        try:
            with fs.open(f"{kid}/manifest.json") as f:
                m = json.load(f)
        except (FileNotFoundError, OSError, ValueError):
            continue
        if m.get("stage") == "curate" and any(str(i).rstrip("/").rsplit("/", 1)[-1] == name for i in m.get("inputs") or []):
            proto = generated.split("://", 1)[0] + "://" if "://" in generated else ""
            return proto + kid
    return None


def recorded(curated: str | None) -> dict[str, str]:
    """doc id -> the run's decision: 'kept' or its rejection reason."""
    if not curated:
        return {}
    import fsspec
    import pyarrow.parquet as pq

    fs, path = fsspec.core.url_to_fs(curated)
    out: dict[str, str] = {}
    for f in sorted(fs.glob(f"{path}/rejected/*.parquet")):
        with fs.open(f, "rb") as fh:
            t = pq.ParquetFile(fh).read(columns=["id", "reason"])
        out.update(zip(t.column("id").to_pylist(), t.column("reason").to_pylist()))
    for f in sorted(fs.glob(f"{path}/data/*.parquet")):
        with fs.open(f, "rb") as fh:
            out.update((i, "kept") for i in pq.ParquetFile(fh).read(columns=["id"]).column("id").to_pylist())
    return out


def _relocate(paths: list[str], near: str) -> list[str]:
    """Stage folders a config names that are not where it says (a run copied or moved): the folder of
    that name beside `near`, where there is one."""
    out = []
    for p in paths:
        if "://" in p or os.path.exists(p):
            out.append(p)
            continue
        alt = os.path.join(os.path.dirname(os.path.abspath(near.rstrip("/"))), os.path.basename(p.rstrip("/")))
        out.append(alt if os.path.exists(alt) else p)
    return out


def load_config(config: str | None, curated: str | None, generated: str, out: str) -> tuple[Any, str]:
    """Today's curate config: CONFIG, else the one the curate stage ran with, else the packaged
    default; seed and reference folders that moved are found beside GENERATED."""
    from factory.curate import config as C

    if config:
        cfg, src = C.load(config), config
    elif curated:
        import fsspec

        with fsspec.open(f"{curated.rstrip('/')}/manifest.json") as f:
            data = json.load(f).get("config") or {}
        src = f"{curated.rstrip('/')}/manifest.json"
        cfg = C.validate_config(data, src)
    else:
        cfg, src = C.load(None), str(C.DEFAULT_YAML)
    data = cfg.model_dump()
    data["dedup"]["reference"] = _relocate(data["dedup"]["reference"], generated)
    data["filters"]["faithfulness"]["seeds"] = _relocate(data["filters"]["faithfulness"]["seeds"], generated)
    data["filters"]["quality"]["seeds"] = _relocate(data["filters"]["quality"]["seeds"], generated)
    data["inputs"], data["out"] = [generated], out
    return C.validate_config(data, src), src


# ---------------------------------------------------------------- knobs and evaluation


@dataclass
class Knob:
    filter: str
    path: str                       # in the filter's section: "enabled", "min_words", "options.x"
    values: list[Any]
    today: Any

    @property
    def name(self) -> str:
        return f"{self.filter}.{self.path}"


def _get(d: dict[str, Any], path: str) -> Any:
    for k in path.split("."):
        d = (d or {}).get(k) if isinstance(d, dict) else None
    return d


def _set(d: dict[str, Any], path: str, v: Any) -> dict[str, Any]:
    d = copy.deepcopy(d)
    keys = path.split(".")
    cur = d
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
    cur[keys[-1]] = v
    return d


def knobs(cfg: Any) -> list[Knob]:
    from factory.curate.registry import FILTERS

    out = []
    for name, kind in FILTERS.items():
        if kind is None:
            continue
        sec = getattr(cfg.filters, name).model_dump()
        if not sec["enabled"] and (name in NEEDS_SETUP or name not in TRY_ON):
            continue
        out.append(Knob(name, "enabled", [sec["enabled"], not sec["enabled"]], sec["enabled"]))
        for path, values in SWEEPS.get(name, []):
            today = _get(sec, path)
            if today is None and path.startswith("options."):  # a datatrove default: read it off the class
                import inspect

                from factory.curate.registry import import_class

                p = inspect.signature(import_class(kind.cls).__init__).parameters.get(path.split(".", 1)[1])
                today = p.default if p is not None else None
            if today is None:
                continue
            out.append(Knob(name, path, sorted(set(values) | {today}), today))
    return out


def today_settings(cfg: Any, ks: list[Knob]) -> dict[str, dict[str, Any]]:
    s: dict[str, dict[str, Any]] = {}
    for k in ks:
        s.setdefault(k.filter, {})[k.path] = k.today
    return s


@dataclass
class Outcome:
    kept: int
    defective_kept: int
    clean: int
    clean_kept: int

    @property
    def defect_share(self) -> float | None:
        return self.defective_kept / self.kept if self.kept else None

    @property
    def clean_recall(self) -> float | None:
        return self.clean_kept / self.clean if self.clean else None

    def as_dict(self) -> dict[str, Any]:
        r = lambda v: None if v is None else round(v, 4)  # noqa: E731
        return {"kept": self.kept, "defective_kept": self.defective_kept, "clean": self.clean,
                "clean_kept": self.clean_kept, "defect_share": r(self.defect_share), "clean_recall": r(self.clean_recall)}


def outcome(kept: np.ndarray, defective: np.ndarray) -> Outcome:
    return Outcome(int(kept.sum()), int((kept & defective).sum()), int((~defective).sum()),
                   int((kept & ~defective).sum()))


class Evaluator:
    """Each filter's drop decisions on the labeled documents, per setting, by the filter's own step
    (built from its config section), memoized."""

    def __init__(self, cfg: Any, rows: list[dict[str, Any]], defective: np.ndarray, other_drop: np.ndarray):
        from factory.curate.io import SharedTokenizer
        from factory.curate.registry import FILTERS, Build

        self.cfg, self.rows, self.defective, self.other_drop = cfg, rows, defective, other_drop
        self.n = len(rows)
        self.build = Build(cfg, lambda reason: None, SharedTokenizer(cfg.language))
        self._memo: dict[tuple[str, str], np.ndarray] = {}
        self._seeds: dict[tuple[str, ...], Any] = {}
        self.texts: dict[str, list[str]] = {}
        texts = [r.get("text") or "" for r in rows]
        for name, kind in FILTERS.items():  # the text each filter sees in today's chain (strippers cut lines)
            if kind is None:
                continue
            self.texts[name] = list(texts)
            sec = getattr(cfg.filters, name)
            if sec.enabled and name in ("meta_commentary", "chatter"):
                _, texts = self._run(name, sec, with_text=True)

    def section(self, name: str, settings: dict[str, Any]) -> Any:
        sec = getattr(self.cfg.filters, name)
        data = sec.model_dump()
        for path, v in settings.items():
            data = _set(data, path, v)
        return type(sec).model_validate(data)

    def _share_seeds(self, step: Any) -> None:
        from factory.curate.faithful import SeedTexts

        for k, v in list(vars(step).items()):
            if isinstance(v, SeedTexts):
                setattr(step, k, self._seeds.setdefault(tuple(v.folders), v))

    def _run(self, name: str, sec: Any, with_text: bool = False) -> tuple[np.ndarray, list[str]]:
        from datatrove.data import Document
        from datatrove.pipeline.filters.base_filter import get_filter_result

        from factory.curate.io import row_to_doc

        drops = np.zeros(self.n, dtype=bool)
        texts = list(self.texts[name])
        step = sec.build(name, self.build) if sec.enabled else None
        if step is None:
            return drops, texts
        self._share_seeds(step)
        docs = []
        for i, r in enumerate(self.rows):
            d = row_to_doc(None, {**r, "text": texts[i]}, "labeled", i)
            docs.append(Document(text=d["text"], id=d["id"], metadata=copy.deepcopy(d["metadata"])))
        size = max(1, getattr(step, "batch_size", 1))
        for s in range(0, self.n, size):
            batch = docs[s:s + size]
            for j, res in enumerate(step.filter_batch(batch)):
                ok, _ = get_filter_result(res)
                drops[s + j] = not ok
                if ok and with_text:
                    texts[s + j] = batch[j].text
        return drops, texts

    def drops(self, name: str, settings: dict[str, Any]) -> np.ndarray:
        key = (name, json.dumps(settings, sort_keys=True, default=str))
        if key not in self._memo:
            self._memo[key] = self._run(name, self.section(name, settings))[0]
        return self._memo[key]

    def kept(self, setting: dict[str, dict[str, Any]]) -> np.ndarray:
        drop = self.other_drop.copy()
        for name, s in setting.items():
            drop |= self.drops(name, s)
        return ~drop

    def clean_votes(self, setting: dict[str, dict[str, Any]], idx: np.ndarray) -> int:
        """How many (filter, clean document) drops: a smoother guide than clean recall alone."""
        clean = ~self.defective[idx]
        return int(sum((self.drops(n, s)[idx] & clean).sum() for n, s in setting.items()))


def _score(ev: Evaluator, setting: dict[str, dict[str, Any]], idx: np.ndarray, min_recall: float) -> tuple:
    o = outcome(ev.kept(setting)[idx], ev.defective[idx])
    r = 1.0 if o.clean_recall is None else o.clean_recall
    d = 0.0 if o.defect_share is None else o.defect_share
    if r >= min_recall - 1e-12:
        return (1, -d, r, 0)
    return (0, r, -ev.clean_votes(setting, idx), -d)


def choose(ev: Evaluator, ks: list[Knob], idx: np.ndarray, min_recall: float, passes: int = 3) -> dict[str, dict[str, Any]]:
    """A coordinate search over the knobs on the documents `idx`, from today's settings: a knob moves
    only to a strictly better score (see the module doc)."""
    cur = today_settings(ev.cfg, ks)
    best = _score(ev, cur, idx, min_recall)
    for _ in range(passes):
        moved = False
        for k in ks:
            for v in k.values:
                if v == cur[k.filter][k.path]:
                    continue
                cand = {**cur, k.filter: {**cur[k.filter], k.path: v}}
                sc = _score(ev, cand, idx, min_recall)
                if sc > best:
                    best, cur, moved = sc, cand, True
        if not moved:
            break
    return cur


def folds_of(defective: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """k stratified folds (each holds clean and defective documents), as index arrays."""
    rng = random.Random(seed)
    out: list[list[int]] = [[] for _ in range(k)]
    for cls in (False, True):
        idx = [int(i) for i in np.flatnonzero(defective == cls)]
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            out[j % k].append(i)
    return [np.array(sorted(f), dtype=int) for f in out]


def p_better_than_chance(drops: int, hits: int, base: float) -> float:
    """P(at least `hits` defective among `drops` documents dropped at random, defect rate `base`)."""
    if drops == 0:
        return 1.0
    return float(min(1.0, sum(math.comb(drops, j) * base ** j * (1 - base) ** (drops - j) for j in range(hits, drops + 1))))


def agreement(drop: np.ndarray, defective: np.ndarray) -> dict[str, Any]:
    n_drop, tp = int(drop.sum()), int((drop & defective).sum())
    base = float(defective.mean()) if len(defective) else 0.0
    p = p_better_than_chance(n_drop, tp, base)
    prec = tp / n_drop if n_drop else None
    if not n_drop:
        verdict = "drops nothing"
    elif p < 0.05:
        verdict = "better than chance"
    elif prec is not None and prec < base and p_better_than_chance(n_drop, n_drop - tp, 1 - base) < 0.05:
        verdict = "worse than chance (drops clean documents)"
    else:
        verdict = "no better than chance"
    return {"drops": n_drop, "defective_dropped": tp, "clean_dropped": n_drop - tp,
            "precision": None if prec is None else round(prec, 4),
            "recall": round(tp / int(defective.sum()), 4) if defective.any() else None,
            "base_rate": round(base, 4), "p_value": round(p, 6), "verdict": verdict}


def pareto(points: list[dict[str, Any]]) -> list[int]:
    """Indexes of the points no other point beats on both clean recall (higher) and defect share (lower)."""
    def rd(p):
        return (p["clean_recall"] if p["clean_recall"] is not None else 0.0,
                p["defect_share"] if p["defect_share"] is not None else 0.0)
    out = []
    for i, p in enumerate(points):
        r, d = rd(p)
        if not any((r2 >= r and d2 <= d) and (r2 > r or d2 < d) for r2, d2 in map(rd, points)):
            out.append(i)
    return out


def changes(ks: list[Knob], setting: dict[str, dict[str, Any]]) -> list[str]:
    """The `--set` overrides that turn today's config into `setting`."""
    out = []
    for k in ks:
        v = setting[k.filter][k.path]
        if v != k.today:
            out.append(f"filters.{k.name}={json.dumps(v)}")
    return out


# ---------------------------------------------------------------- the command


@dataclass
class Result:
    report: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)


def calibrate(labels: str, generated: str, out: str | None = None, config: str | None = None,
              curated: str | None = None, folds: int = 5, min_clean_recall: float = TARGET["min_clean_recall"],
              reviewer: str | None = None, seed: int = 0, plot: bool = True) -> Result:
    """Evaluate, sweep and (with folds >= 2) choose; write calibration.json, the plot and the chosen
    config into `out` (default: the labels' folder)."""
    lab = read_labels(labels, reviewer)
    out = out or os.path.dirname(os.path.abspath(labels))
    rows = read_rows(generated, set(lab))
    if not rows:
        raise FactoryError(f"none of the {len(lab)} labeled documents is in {generated}", where=labels,
                           fix="give --in the generate stage folder the documents were labeled in (like runs/demo/generated)")
    defective = np.array([lab[r["id"]]["defective"] for r in rows], dtype=bool)
    n_clean, n_bad = int((~defective).sum()), int(defective.sum())
    if folds == 1 or folds < 0:
        raise FactoryError(f"--folds {folds}: k-fold cross-validation needs 2 or more folds", field="--folds",
                           fix="pass --folds 5 (or 2 or more), or --folds 0 for the report without a chosen config")
    if folds and min(n_clean, n_bad) < folds:
        short = "clean" if n_clean < folds else "defective"
        have = n_clean if short == "clean" else n_bad
        raise FactoryError(
            f"{folds}-fold cross-validation needs at least {folds} clean and {folds} defective labeled documents; "
            f"{len(rows)} labeled documents here: {n_clean} clean, {n_bad} defective", where=labels,
            fix=f"label {folds - have} more {short} document(s), or pass --folds {max(2, have)}"
                if have >= 2 else f"label {folds - have} more {short} document(s), or pass --folds 0 for the report "
                                  "without a chosen config")
    curated = curated or find_curated(generated)
    rec = recorded(curated)
    os.makedirs(out, exist_ok=True)
    cfg, cfg_src = load_config(config, curated, generated, out)
    other = np.array([rec.get(r["id"]) in NOT_REDONE for r in rows], dtype=bool)
    ev = Evaluator(cfg, rows, defective, other)
    ks = knobs(cfg)
    today = today_settings(cfg, ks)
    all_idx = np.arange(len(rows))

    # each filter at today's settings (a filter off today: as if it were on)
    filters = {}
    for name in today:
        s = {**today[name], "enabled": True}
        filters[name] = {"enabled": today[name]["enabled"], **agreement(ev.drops(name, s), defective)}
    if rec:
        by_reason: dict[str, list[bool]] = {}
        for r, bad in zip(rows, defective):
            by_reason.setdefault(rec.get(r["id"], "not in the run"), []).append(bool(bad))
        recorded_rep = {k: {"documents": len(v), "defective": sum(v),
                            "precision" if k != "kept" else "defect_share": round(sum(v) / len(v), 4)}
                        for k, v in sorted(by_reason.items())}
        kept_rec = np.array([rec.get(r["id"]) == "kept" for r in rows], dtype=bool)
    else:
        recorded_rep, kept_rec = {}, None

    sweeps = []
    for k in ks:
        pts = []
        for v in k.values:
            s = {**today, k.filter: {**today[k.filter], k.path: v}}
            o = outcome(ev.kept(s), defective).as_dict()
            fs = {**s[k.filter], "enabled": True} if k.path != "enabled" else s[k.filter]
            a = agreement(ev.drops(k.filter, fs), defective)
            pts.append({"value": v, "today": v == k.today, **o, "filter_precision": a["precision"],
                        "filter_recall": a["recall"]})
        front = pareto(pts)
        for i, p in enumerate(pts):
            p["pareto"] = i in front
        sweeps.append({"knob": k.name, "today": k.today, "points": pts})

    today_all = outcome(ev.kept(today), defective)
    rep: dict[str, Any] = {
        "labels": {"file": labels, "labeled": len(lab), "found": len(rows), "not_found": len(lab) - len(rows),
                   "clean": n_clean, "defective": n_bad,
                   "by_label": {k: int(v) for k, v in sorted(_count(lab[r["id"]]["label"] for r in rows).items())}},
        "inputs": {"generated": generated, "curated": curated, "config": cfg_src},
        "target": {"max_defect_share": TARGET["max_defect_share"], "min_clean_recall": min_clean_recall},
        "today": {"settings": today, "recomputed": today_all.as_dict(),
                  "recorded": outcome(kept_rec, defective).as_dict() if kept_rec is not None else None},
        "filters": filters, "recorded_reasons": recorded_rep, "sweeps": sweeps,
    }
    files: dict[str, str] = {}
    if folds:
        fl = folds_of(defective, folds, seed)
        held = np.zeros(len(rows), dtype=bool)
        per_fold = []
        for j, test in enumerate(fl):
            train = np.setdiff1d(all_idx, test)
            s = choose(ev, ks, train, min_clean_recall)
            k_all = ev.kept(s)
            held[test] = k_all[test]
            per_fold.append({"fold": j, "documents": len(test), "set": changes(ks, s),
                             "held_out": outcome(k_all[test], defective[test]).as_dict(),
                             "today_held_out": outcome(ev.kept(today)[test], defective[test]).as_dict()})
        final = choose(ev, ks, all_idx, min_clean_recall)
        cv = outcome(held, defective)
        rep["cross_validation"] = {
            "folds": folds, "seed": seed, "held_out": cv.as_dict(), "today": today_all.as_dict(),
            "meets_target": bool(cv.clean_recall is not None and cv.defect_share is not None
                                 and cv.clean_recall >= min_clean_recall
                                 and cv.defect_share <= TARGET["max_defect_share"]),
            "per_fold": per_fold}
        rep["chosen"] = {"settings": final, "set": changes(ks, final),
                         "in_sample": outcome(ev.kept(final), defective).as_dict()}
        files["config"] = write_config(cfg, final, ks, os.path.join(out, CONFIG_FILE), rep)
    else:
        rep["cross_validation"] = None
        rep["chosen"] = None
    rep_path = os.path.join(out, REPORT_FILE)
    if plot:
        files["plot"] = write_plot(rep, os.path.join(out, PLOT_FILE))
    with open(rep_path, "w") as f:
        json.dump(rep, f, indent=1, default=str)
        f.write("\n")
    files["report"] = rep_path
    return Result(rep, files)


def _count(xs: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return out


def write_config(cfg: Any, setting: dict[str, dict[str, Any]], ks: list[Knob], path: str, rep: dict[str, Any]) -> str:
    """The chosen settings as a full curate config (usable as `factory curate FILE --in ... --out ...`)."""
    import yaml

    from factory.curate import config as C

    data = cfg.model_dump(mode="json")
    for name, s in setting.items():
        for p, v in s.items():
            data["filters"][name] = _set(data["filters"][name], p, v)
    data["inputs"], data["out"] = [], ""
    C.validate_config(data, path)  # what is written loads
    cv = rep["cross_validation"]
    sets = changes(ks, setting)
    head = ["# Chosen by `factory curate calibrate` from " + rep["labels"]["file"],
            f"# ({rep['labels']['found']} labeled documents: {rep['labels']['clean']} clean, "
            f"{rep['labels']['defective']} defective).",
            f"# Held out ({cv['folds']}-fold): defect share {cv['held_out']['defect_share']}, clean recall "
            f"{cv['held_out']['clean_recall']}; today's settings: {cv['today']['defect_share']}, "
            f"{cv['today']['clean_recall']}.",
            "# Changes from today's settings (the same as `factory curate --set` each):"]
    head += [f"#   {s}" for s in sets] or ["#   none"]
    head.append("# Use: factory curate THIS_FILE --in GENERATED --out DIR")
    with open(path, "w") as f:
        f.write("\n".join(head) + "\n")
        yaml.safe_dump(data, f, sort_keys=False, allow_unicode=True, width=120)
    return path


def write_plot(rep: dict[str, Any], path: str) -> str:
    """Defect share against clean recall: each knob's sweep (the rest at today's settings), its Pareto
    front, today's settings, the cross-validated choice (held out) and the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8), dpi=90)
    t = rep["target"]
    ax.fill_between([t["min_clean_recall"], 1.02], -0.02, t["max_defect_share"], color="#2ca02c", alpha=0.12,
                    label="target")
    cmap = plt.get_cmap("tab10")
    for i, sw in enumerate(s for s in rep["sweeps"] if len({(p["clean_recall"], p["defect_share"]) for p in s["points"]}) > 1):
        pts = [p for p in sw["points"] if p["defect_share"] is not None and p["clean_recall"] is not None]
        front = sorted((p for p in pts if p["pareto"]), key=lambda p: p["clean_recall"])
        ax.scatter([p["clean_recall"] for p in pts], [p["defect_share"] for p in pts], s=14, color=cmap(i % 10), alpha=0.5)
        ax.plot([p["clean_recall"] for p in front], [p["defect_share"] for p in front], "-o", ms=3,
                color=cmap(i % 10), label=sw["knob"])
    td = rep["today"]["recomputed"]
    if td["defect_share"] is not None and td["clean_recall"] is not None:
        ax.scatter([td["clean_recall"]], [td["defect_share"]], marker="*", s=180, color="black", zorder=5,
                   label="today's settings")
    cv = rep.get("cross_validation")
    if cv and cv["held_out"]["defect_share"] is not None:
        ax.scatter([cv["held_out"]["clean_recall"]], [cv["held_out"]["defect_share"]], marker="D", s=70,
                   color="red", zorder=6, label=f"calibrated, held out ({cv['folds']}-fold)")
    ax.set_xlabel("clean recall (share of clean documents kept)")
    ax.set_ylabel("defect share of the kept set")
    lab = rep["labels"]
    ax.set_title(f"curate calibration: {lab['found']} labeled documents ({lab['clean']} clean)", fontsize=10)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
