"""Mix ablations: a grid YAML expands into mixes; one model is trained per cell and seed, evaluated
on the benchmarks, and reported (mean and 95% interval over seeds, signal-to-noise, plot).

```yaml
name: phi4_knowledge
base_mix: ../phi4.yaml           # relative to this file
data_root: runs/demo/tokenized   # a tokenized folder (relative to the working directory)
tokens: 400000                   # total_tokens of every cell
seeds: [0, 1, 2]                 # each seed changes the init and the data order
model: {preset: tiny}
run_config: {train: {global_batch: 16, micro_batch: 4}, optim: {lr: 1.0e-3}}  # more trainer settings
vary:                            # a list of groups: fields inside a group are zipped,
  - sources.synthetic.share: [0.0, 0.5, 1.0]      # the groups are crossed (cartesian)
    sources.web.share: [1.0, 0.5, 0.0]
  - sources.synthetic.max_epochs: [4, 12]
report: {x: synthetic_share, group: synthetic_max_epochs}
```
A field path walks the mix: dict keys, list items by `name` (sources.synthetic) or index.
Folders: `<out>/benchmarks/`, `<out>/cells/<cell>/{mix.yaml,plan.json,seed<k>/{run/,eval.json}}`,
`<out>/results.jsonl`, `<out>/report/`. A run is done when its eval.json exists: reruns skip it.
`out` may be an fsspec URL (s3://, gs://): everything above is written there, and what the planner
and trainer read from disk (mixes, plans, benchmarks) is kept in a local copy as well (`scratch`,
default: a temp folder named after the URL), rebuilt from the URL on another machine.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from factory.config import read_yaml, validate
from factory.errors import FactoryError
from train import storage


class BenchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    builtin: list[str] = Field(default_factory=lambda: ["wiki_mc", "wiki_cloze", "wiki_cloze_mc", "arith_mc", "arith_em"])
    n: int = Field(500, ge=1, description="items per built-in benchmark")
    seed: int = 0
    files: list[str] = Field(default_factory=list, description="more benchmark folders or lm-eval style JSONL files")
    holdout_titles: list[str] = Field(default_factory=list, description="wiki titles kept out of training (wiki_val)")
    holdout_titles_file: str | None = Field(None, description="the same, one title a line (relative to data_root)")
    titles_file: str | None = Field(None, description="knowledge items only from these titles, one a line (relative to data_root)")
    titles_from: str | None = Field(None, description="or from the wiki titles of a stage folder of documents (relative to data_root)")
    source_loss: bool = Field(True, description="also report the loss on the tail windows of each source")
    source_windows: int = 32


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_items: int | None = None
    batch_size: int = 32


class ReportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x: str | None = None
    group: str | None = None
    title: str = ""
    notes: str = ""


class SubsetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str = Field(description="a tokenized source folder under data_root")
    fraction: float = Field(gt=0, le=1, description="share of its documents (the first ones) to keep")


class GridConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    base_mix: str
    data_root: str
    out: str | None = None
    tokens: int | None = Field(None, gt=0, description="total_tokens of every cell")
    seeds: list[int] = Field(min_length=1)
    model: dict[str, Any] = Field(default_factory=lambda: {"preset": "tiny"})
    run_config: dict[str, Any] = Field(default_factory=dict, description="trainer run-config sections (train, optim, ...)")
    nproc: int = 2
    vary: list[dict[str, list[Any]]] | dict[str, list[Any]] = Field(min_length=1)
    mode: Literal["cartesian", "zip"] = Field("cartesian", description="how fields combine when vary is one mapping")
    labels: dict[str, str] = Field(default_factory=dict, description="field path -> short name in tables")
    drop_zero_shares: bool = Field(True, description="leave sources with share 0 out of a cell's mix")
    subsets: dict[str, SubsetConfig] = Field(default_factory=dict, description="smaller copies of a source, made in data_root")
    benchmarks: BenchConfig = Field(default_factory=BenchConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    parallel: Literal["auto", "serial", "ray"] = "auto"


def label(path: str, labels: dict[str, str]) -> str:
    return labels.get(path) or re.sub(r"^sources_", "", path.replace(".", "_"))


def load_grid(path: str | Path) -> GridConfig:
    return validate(GridConfig, read_yaml(path), str(path))


def _groups(g: GridConfig, where: str) -> list[dict[str, list[Any]]]:
    if isinstance(g.vary, dict):
        groups = [g.vary] if g.mode == "zip" else [{k: v} for k, v in g.vary.items()]
    else:
        groups = g.vary
    for i, grp in enumerate(groups):
        lens = {k: len(v) for k, v in grp.items()}
        if not grp or 0 in lens.values():
            raise FactoryError("a vary group lists no values", where=where, field=f"vary[{i}]", fix="give each field a list of values")
        if len(set(lens.values())) > 1:
            raise FactoryError(f"zipped fields have different lengths {lens}", where=where, field=f"vary[{i}]",
                               fix="give zipped fields lists of the same length, or put them in separate groups")
    return groups


def _walk(d: Any, path: str, where: str, base: str) -> tuple[Any, str]:
    """The container holding the last key of `path`, and that key; errors name the grid field."""
    parts = path.split(".")
    node = d
    for i, p in enumerate(parts[:-1]):
        if isinstance(node, list):
            hit = [x for x in node if isinstance(x, dict) and x.get("name") == p]
            if not hit and p.isdigit() and int(p) < len(node):
                hit = [node[int(p)]]
            if not hit:
                names = [x.get("name") for x in node if isinstance(x, dict)]
                raise FactoryError(f"'{p}' is not in {'.'.join(parts[:i]) or 'the mix'} of {base} (names: {names})",
                                   where=where, field=f"vary.{path}", fix="use a source name from the base mix")
            node = hit[0]
        elif isinstance(node, dict) and p in node:
            node = node[p]
        else:
            raise FactoryError(f"'{p}' is not a field of the base mix {base}", where=where, field=f"vary.{path}",
                               fix=f"use one of {sorted(node) if isinstance(node, dict) else '(none)'}")
    if not isinstance(node, dict):
        raise FactoryError(f"'{path}' does not name a field of a mapping in {base}", where=where, field=f"vary.{path}",
                           fix="end the path at a field such as sources.<name>.share")
    return node, parts[-1]


def _allowed(path: str, node: dict) -> set[str]:
    """Fields a path may set even when the base mix leaves them out."""
    from factory.mixspec import MixConfig, PhaseSpec, SourceSpec

    parts = path.split(".")
    if len(parts) == 1:
        return set(MixConfig.model_fields)
    if parts[0] == "sources" and len(parts) == 3:
        return set(SourceSpec.model_fields)
    if parts[0] == "phases" and len(parts) == 3:
        return set(PhaseSpec.model_fields)
    if parts[0] == "phases" and len(parts) == 4 and parts[2] == "shares":
        return set(node) | {"*"}
    return set()


def expand(grid_path: str | Path, g: GridConfig | None = None) -> list[dict[str, Any]]:
    """The cells: [{"id", "params": {label: value}, "fields": {path: value}, "mix": mix dict}]."""
    from factory.mixspec import mix_from_dict

    where = str(grid_path)
    g = g or load_grid(grid_path)
    base_path = (Path(grid_path).parent / g.base_mix).resolve()
    base = read_yaml(base_path)
    groups = _groups(g, where)
    rows = [[{k: v[j] for k, v in grp.items()} for j in range(len(next(iter(grp.values()))))] for grp in groups]
    cells = []
    for combo in itertools.product(*rows):
        fields = {k: v for part in combo for k, v in part.items()}
        mix = copy.deepcopy(base)
        for path, value in fields.items():
            node, key = _walk(mix, path, where, str(base_path))
            allowed = _allowed(path, node)
            if key not in node and key not in allowed and "*" not in allowed:
                raise FactoryError(f"'{key}' is not a field of the mix {base_path}", where=where,
                                   field=f"vary.{path}", fix=f"use one of {sorted(allowed or node)}")
            node[key] = value
        if g.tokens is not None:
            mix["total_tokens"] = g.tokens
        if g.drop_zero_shares:
            _drop_zero(mix)
        params = {label(p, g.labels): v for p, v in fields.items()}
        cid = "__".join(f"{k}={v}" for k, v in params.items())
        cid = re.sub(r"[^A-Za-z0-9_.=-]+", "-", cid)
        mix["name"] = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{g.name}.{cid}")[:120]
        mix_from_dict(mix, f"{where} (cell {cid})")
        cells.append({"id": cid, "params": params, "fields": fields, "mix": mix})
    return cells


def _drop_zero(mix: dict) -> None:
    zero = {s["name"] for s in mix.get("sources", []) if s.get("share") == 0 and not mix.get("phases")}
    if zero and len(zero) < len(mix["sources"]):
        mix["sources"] = [s for s in mix["sources"] if s["name"] not in zero]


# --------------------------------------------------------------------------- running

def _default_train(nproc: int) -> Callable[[dict], str]:
    def train(cfg: dict) -> str:
        from train.launch import run

        return str(run(cfg, nproc=nproc))

    return train


def default_eval(run_dir: str, benches: list[str], max_items: int | None, batch_size: int) -> dict:
    from train.eval import evaluate
    from train.model import load_for_eval

    import torch

    model, tok = load_for_eval(run_dir, device="cuda" if torch.cuda.is_available() else "cpu")
    if tok is None:
        raise FactoryError("the run has no tokenizer.json", where=str(run_dir), fix="export the run with its tokenizer")
    return evaluate(model, tok, benches, max_items=max_items, batch_size=batch_size)


def build_benchmarks(g: GridConfig, out: Path, base_mix: dict, data_root: Path) -> list[str]:
    from factory import evalsets

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


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


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


def run_config(g: GridConfig, seed_dir: Path, seed: int, run_dir: str | None = None) -> dict:
    """The trainer's run config for one cell and seed: steps 0 = train on all of the plan's tokens.
    The plan is read from seed_dir on local disk; the run goes to run_dir (default seed_dir/run)."""
    fixed = {"run_dir": run_dir or str((seed_dir / "run").resolve()), "seed": seed, "model": dict(g.model),
             "data": {"source": "plan", "plan": str((seed_dir / "plan.json").resolve())}}
    return _merge(_merge({"train": {"steps": 0}}, g.run_config), fixed)


def _lines(root: Path, name: str | None, field: str) -> list[str]:
    if not name:
        return []
    p = Path(name) if Path(name).is_absolute() else root / name
    if not p.exists():
        raise FactoryError("titles file not found", where=str(p), field=field, fix="write one title a line, or fix the path")
    return [t for t in p.read_text().splitlines() if t.strip()]


def _doc_titles(root: Path, name: str) -> list[str]:
    from factory.stage import read_docs

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


def _run_one(task: dict, train_fn: Callable, eval_fn: Callable) -> dict:
    plan = Path(task["config"]["data"]["plan"])
    if not plan.exists() and task.get("plan_url"):  # a worker on another node: the plan comes from the store
        storage.get_file(task["plan_url"], plan)
    t0 = time.time()
    run_dir = train_fn(task["config"])
    t1 = time.time()
    scores = eval_fn(run_dir, task["benches"], task["max_items"], task["batch_size"])
    rec = {"cell": task["cell"], "seed": task["seed"], "params": task["params"], "scores": scores,
           "run_dir": str(run_dir), "train_s": round(t1 - t0, 1), "eval_s": round(time.time() - t1, 1)}
    text = json.dumps(rec, indent=1)
    if storage.is_url(task["eval_json"]):  # the done marker: one PUT, the object appears whole
        storage.write_text(task["eval_json"], text)
    else:  # the done marker, written atomically
        tmp = Path(task["eval_json"]).with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(task["eval_json"])
    return rec


def _use_ray(g: GridConfig) -> bool:
    if g.parallel == "serial":
        return False
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:
        gpus = 0
    if g.parallel == "ray" or gpus > 0:
        try:
            import ray  # noqa: F401
        except ImportError:
            return False
        return g.parallel == "ray" or gpus > 1
    return False


def run(grid_path: str | Path, out: str | Path | None = None, *, train_fn: Callable[[dict], str] | None = None,
        eval_fn: Callable[..., dict] | None = None, plan_fn: Callable[[Path, Path], dict] | None = None,
        data_root: str | Path | None = None, show: bool = True, scratch: str | Path | None = None) -> dict[str, Any]:
    """Expand, train, evaluate and report a grid; returns {"out", "results", "report", "ran", "skipped"}.

    train_fn(run_config) -> run dir, eval_fn(run_dir, benches, max_items, batch_size) -> scores and
    plan_fn(mix_yaml, data_root) -> plan dict default to the real trainer, scorer and mix planner.
    `out` may be a URL; `scratch` is then the local folder for mixes, plans and benchmarks.
    """
    from factory import report
    from factory.ui import console, progress, table

    g = load_grid(grid_path)
    o = Out(out or g.out or Path("runs/ablations") / g.name, scratch)
    if storage.is_url(data_root or g.data_root):
        raise FactoryError("training data must be on local disk (the loader memory-maps the .ds shards)", where=str(grid_path),
                           field="data_root", fix="copy the tokenized folder to local disk and point data_root there")
    data_root = Path(data_root or g.data_root)
    if not data_root.exists():
        raise FactoryError("data root not found", where=str(grid_path), field="data_root", fix="tokenize first, or fix the path")
    cells = expand(grid_path, g)
    if plan_fn is None:
        from factory.mix import plan as plan_fn  # type: ignore[no-redef]
    train_fn = train_fn or _default_train(g.nproc)
    eval_fn = eval_fn or default_eval
    o.local.mkdir(parents=True, exist_ok=True)
    o.write("grid.yaml", yaml.safe_dump(g.model_dump(mode="json"), sort_keys=False))  # for a URL: fails early on a bad store
    for name, sub in g.subsets.items():
        make_subset(data_root, name, sub)
    benches = build_benchmarks(g, o.local, read_yaml((Path(grid_path).parent / g.base_mix).resolve()), data_root)
    if o.url:
        storage.put_dir(o.local / "benchmarks", o.uri("benchmarks"))

    tasks, skipped, aliases, seen = [], 0, [], {}
    for c in cells:
        same = json.dumps({k: v for k, v in c["mix"].items() if k != "name"}, sort_keys=True)
        if same in seen:  # e.g. share 0 makes the other fields of that source moot: train once, report twice
            aliases.append((c, seen[same]))
            continue
        seen[same] = c
        cell = f"cells/{c['id']}"
        o.write(f"{cell}/mix.yaml", yaml.safe_dump(c["mix"], sort_keys=False))
        if o.exists(f"{cell}/plan.json"):  # planned before (maybe on another machine): the same plan
            plan = json.loads(o.read(f"{cell}/plan.json"))
        else:
            plan = plan_fn(o.local / cell / "mix.yaml", data_root)
        o.write(f"{cell}/plan.json", json.dumps(plan, indent=1))
        params = {**{k: v for k, v in plan_info(plan).items() if k not in c["params"]}, **c["params"]}
        for s in g.seeds:
            sd = f"{cell}/seed{s}"
            if o.exists(f"{sd}/eval.json"):
                skipped += 1
                continue
            o.write(f"{sd}/plan.json", json.dumps({**plan, "seed": int(plan.get("seed", 0)) + s}, indent=1))
            cfg = run_config(g, o.local / sd, s, o.uri(f"{sd}/run") if o.url else None)
            tasks.append({"cell": c["id"], "seed": s, "params": params, "config": cfg, "benches": benches,
                          "max_items": g.eval.max_items, "batch_size": g.eval.batch_size, "eval_json": o.uri(f"{sd}/eval.json"),
                          "plan_url": o.uri(f"{sd}/plan.json") if o.url else None})
    if show:
        console.print(f"[bold]{g.name}[/]: {len(cells)} cells x {len(g.seeds)} seeds; {len(tasks)} to run, {skipped} done")
    if tasks and _use_ray(g):
        import ray

        ray.init(ignore_reinit_error=True)
        try:
            remote = ray.remote(num_gpus=1)(_run_one)
            ray.get([remote.remote(t, train_fn, eval_fn) for t in tasks])
        finally:
            ray.shutdown()
    elif tasks:
        with progress() as bar:
            job = bar.add_task("ablation runs", total=len(tasks), info="")
            for t in tasks:
                bar.update(job, info=f"{t['cell']} seed {t['seed']}")
                rec = _run_one(t, train_fn, eval_fn)
                bar.update(job, advance=1, info=f"last: {rec['train_s']}s train, {rec['eval_s']}s eval")
    for c, orig in aliases:
        for s in g.seeds:
            src, dst = f"cells/{orig['id']}/seed{s}/eval.json", f"cells/{c['id']}/seed{s}/eval.json"
            if o.exists(src) and not o.exists(dst):
                rec = json.loads(o.read(src))
                o.write(dst, json.dumps({**rec, "cell": c["id"], "params": {**rec["params"], **c["params"]},
                                         "same_as": orig["id"]}, indent=1))
    results = collect(o.name)
    o.write("results.jsonl", "".join(json.dumps(r) + "\n" for r in results))
    keys = list(cells[0]["params"])
    x = g.report.x or keys[0]
    group = g.report.group if g.report.group is not None else (next((k for k in keys if k != x and len({str(c["params"][k]) for c in cells}) > 1), None))
    paths = report.write(results, o.uri("report"), x=x, group=group, title=g.report.title or f"Ablation: {g.name}",
                         notes=g.report.notes or g.description)
    if show:
        summ = json.loads(storage.read_text(paths["summary_json"]))
        names = summ["benches"]
        rows = [[c["cell"], len(c["seeds"])] + [f"{c['stats'][b]['mean']:.3f}±{c['stats'][b]['half']:.3f}" if b in c["stats"] else "" for b in names]
                for c in summ["cells"]]
        console.print(table(f"{g.name}: mean ± 95% interval", ["cell", "seeds", *names], rows))
        console.print(f"report: {paths['report_md']}")
    return {"out": o.name, "results": results, "report": paths, "ran": len(tasks), "skipped": skipped}


def collect(out: str | Path) -> list[dict]:
    """Every finished run's eval.json under out/cells (a local folder or a URL), sorted by cell and seed."""
    if storage.is_url(out):
        recs = [json.loads(storage.read_text(u)) for u in storage.glob(storage.join(out, "cells/*/seed*/eval.json"))]
    else:
        recs = [json.loads(p.read_text()) for p in sorted(Path(out).glob("cells/*/seed*/eval.json"))]
    return sorted(recs, key=lambda r: (r["cell"], r["seed"]))
