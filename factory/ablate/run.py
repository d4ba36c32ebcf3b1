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

import json
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from factory.ablate.grid import GridConfig, expand, load_grid, scaled
from factory.ablate.inputs import Out, build_benchmarks, make_subset, plan_info, run_config
from factory.core.config import read_yaml
from factory.core.errors import FactoryError
from train import storage

# --------------------------------------------------------------------------- running

def _default_train(nproc: int) -> Callable[[dict], str]:
    def train(cfg: dict) -> str:
        from train.launch import run

        return str(run(cfg, nproc=nproc))

    return train


def default_eval(run_dir: str, benches: list[str], max_items: int | None, batch_size: int) -> dict:
    from factory.evaluate.score import score_run

    return score_run(run_dir, benches, max_items=max_items, batch_size=batch_size)


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


def _use_ray(g: GridConfig, address: str | None = None) -> bool:
    if g.parallel == "serial":
        return False
    if address:
        return True
    from train.suite import gpus as count_gpus

    gpus = count_gpus()
    if g.parallel == "ray" or gpus > 0:
        try:
            import ray  # noqa: F401
        except ImportError:
            return False
        return g.parallel == "ray" or gpus > 1
    return False


def plan_tasks(grid_path: str | Path, out: str | Path | None = None, *, plan_fn: Callable[[Path, Path], dict] | None = None,
               data_root: str | Path | None = None, scratch: str | Path | None = None) -> dict[str, Any]:
    """Expand a grid (x its scales), write every cell's mix and plan and each seed's plan, and list
    the runs still to do; writes `<out>/tasks.json` (the task list train.suite runs)."""
    g = load_grid(grid_path)
    o = Out(out or g.out or Path("runs/ablations") / g.name, scratch)
    if storage.is_url(data_root or g.data_root):
        raise FactoryError("training data must be on local disk (the loader memory-maps the .ds shards)", where=str(grid_path),
                           field="data_root", fix="copy the tokenized folder to local disk and point data_root there")
    data_root = Path(data_root or g.data_root)
    if not data_root.exists():
        raise FactoryError("data root not found", where=str(grid_path), field="data_root", fix="tokenize first, or fix the path")
    cells = scaled(expand(grid_path, g), g)
    if plan_fn is None:
        from factory.mix.plan import plan as plan_fn  # type: ignore[no-redef]
    o.local.mkdir(parents=True, exist_ok=True)
    o.write("grid.yaml", yaml.safe_dump(g.model_dump(mode="json"), sort_keys=False))  # for a URL: fails early on a bad store
    for name, sub in g.subsets.items():
        make_subset(data_root, name, sub)
    benches = build_benchmarks(g, o.local, read_yaml((Path(grid_path).parent / g.base_mix).resolve()), data_root)
    if o.url:
        storage.put_dir(o.local / "benchmarks", o.uri("benchmarks"))

    from train.suite import Mover

    before = o.local / "tasks.json"  # a folder planned elsewhere: its plans' paths move here
    move = Mover(json.loads(before.read_text()).get("root") if before.exists() else None)
    tasks, skipped, aliases, seen = [], 0, [], {}
    for c in cells:
        same = json.dumps({k: v for k, v in c["mix"].items() if k != "name"}, sort_keys=True) + str(c.get("scale"))
        if same in seen:  # e.g. share 0 makes the other fields of that source moot: train once, report twice
            aliases.append((c, seen[same]))
            continue
        seen[same] = c
        cell = f"cells/{c['id']}"
        o.write(f"{cell}/mix.yaml", yaml.safe_dump(c["mix"], sort_keys=False))
        if o.exists(f"{cell}/plan.json"):  # planned before (maybe on another machine): the same plan
            plan = move(json.loads(o.read(f"{cell}/plan.json")))
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
            cfg = run_config(g, o.local / sd, s, o.uri(f"{sd}/run") if o.url else None, c.get("scale"))
            tasks.append({"cell": c["id"], "seed": s, "params": params, "config": cfg, "benches": benches,
                          "max_items": g.eval.max_items, "batch_size": g.eval.batch_size, "eval_json": o.uri(f"{sd}/eval.json"),
                          "plan_url": o.uri(f"{sd}/plan.json") if o.url else None, "cost": _cost(cfg, plan)})
    suite = {"root": str(Path.cwd().resolve()), "benches": [o.uri(f"benchmarks/{Path(b).name}") if o.url and Path(b).is_relative_to(o.local)
                                                           else b for b in benches],
             "max_items": g.eval.max_items, "batch_size": g.eval.batch_size, "per_gpu_auto": _per_gpu(g, tasks),
             "tasks": [{k: t[k] for k in ("cell", "seed", "params", "config", "eval_json", "plan_url", "cost")} for t in tasks]}
    (o.local / "tasks.json").write_text(json.dumps(suite, indent=1))
    return {"grid": g, "out": o, "cells": cells, "tasks": tasks, "aliases": aliases, "skipped": skipped,
            "tasks_file": str(o.local / "tasks.json")}


def _shape(cfg: dict, plan: dict) -> tuple[int, int]:
    """(parameters, tokens per micro-batch) of a run, for packing and cost estimates."""
    from train.model import model_args

    m = {k: v for k, v in cfg["model"].items() if k != "preset"}
    m.setdefault("vocab_size", plan.get("vocab_size", 8192))
    a = model_args(cfg["model"].get("preset", "tiny"), **m)
    params = a.n_layers * (4 * a.dim * a.dim + 3 * a.dim * a.ffn_dim) + a.vocab_size * a.dim * (1 if a.tie_embeddings else 2)
    micro = int(cfg.get("train", {}).get("micro_batch", 4))
    return params, micro * int(plan.get("seq_len", 256))


def _cost(cfg: dict, plan: dict) -> float:
    params, _ = _shape(cfg, plan)
    return float(params) * float(plan.get("total_tokens") or 1)


def _per_gpu(g: GridConfig, tasks: list[dict]) -> int:
    if isinstance(g.pack, int):
        return g.pack
    if not tasks:
        return 1
    from train.suite import per_gpu_auto

    free = None
    try:
        import torch

        if torch.cuda.is_available():
            free = float(torch.cuda.mem_get_info()[0])
    except Exception:  # noqa: BLE001 - no CUDA here: the estimate goes by throughput alone
        free = None
    plans = [json.loads(Path(t["config"]["data"]["plan"]).read_text()) for t in tasks]
    return min(per_gpu_auto(_shape(t["config"], p)[1], _shape(t["config"], p)[0], free) for t, p in zip(tasks, plans))


def _run_lanes(p: dict, show: bool, address: str | None = None) -> None:
    """The packed path: runs in lanes (train.suite), several per GPU, on this machine or through Ray
    (each lane a Ray task holding 1/pack of a GPU, or one CPU on a machine without GPUs)."""
    from train import suite

    g, tasks_file = p["grid"], Path(p["tasks_file"])
    spec = json.loads(tasks_file.read_text())
    if not _use_ray(g, address):
        res = suite.run_tasks(tasks_file, spec["per_gpu_auto"], None if suite.gpus() else g.lanes,
                              echo=print if show else (lambda _: None))
        if res["failed"]:
            raise FactoryError(f"{len(res['failed'])} lane(s) failed", where=res["failed"][0],
                               fix="read the lane log named here; finished runs are kept and a rerun does the rest")
        return
    import ray

    from factory.cluster import init_ray

    init_ray(address)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        per_gpu = int(spec["per_gpu_auto"])
        files = suite.write_lanes(tasks_file, gpus * per_gpu if gpus else g.lanes, tasks_file.with_suffix("") / "lanes")
        res = {"num_gpus": 1.0 / per_gpu} if gpus else {"num_cpus": 1}
        remote = ray.remote(**res)(_ray_lane)
        codes = ray.get([remote.remote(f.read_text(), str(f.with_suffix(".log")), 0 if gpus else len(files)) for f in files])
    finally:
        ray.shutdown()
    bad = [str(f.with_suffix(".log")) for f, c in zip(files, codes) if c != 0]
    if bad:
        raise FactoryError(f"{len(bad)} lane(s) failed", where=bad[0],
                           fix="read the lane log named here; finished runs are kept and a rerun does the rest")


def _ray_lane(lane_text: str, log: str, cpu_lanes: int) -> int:
    """One lane on a Ray worker: the lane file written where the worker runs, then the lane's process
    (Ray has set CUDA_VISIBLE_DEVICES to the worker's share of a GPU), in the planning folder when
    this machine has it (a worker's own working directory is elsewhere), else where the worker is."""
    import tempfile

    from train import suite

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(lane_text)
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    root = json.loads(lane_text).get("root")
    return suite.launch_lane(f.name, suite.lane_env(None, max(1, cpu_lanes), None), log,
                             cwd=root if root and Path(root).is_dir() else None)


def run(grid_path: str | Path, out: str | Path | None = None, *, train_fn: Callable[[dict], str] | None = None,
        eval_fn: Callable[..., dict] | None = None, plan_fn: Callable[[Path, Path], dict] | None = None,
        data_root: str | Path | None = None, show: bool = True, scratch: str | Path | None = None,
        plan_only: bool = False, address: str | None = None) -> dict[str, Any]:
    """Expand, train, evaluate and report a grid; returns {"out", "results", "report", "ran", "skipped"}.

    With the real trainer and one rank per run (nproc 1) the runs go in lanes packed onto the GPUs
    (train.suite); otherwise one run at a time, or one per GPU through Ray. train_fn(run_config) ->
    run dir, eval_fn(run_dir, benches, max_items, batch_size) -> scores and plan_fn(mix_yaml,
    data_root) -> plan dict default to the real trainer, scorer and mix planner. `out` may be a
    URL; `scratch` is then the local folder for mixes, plans and benchmarks. `plan_only` stops
    after writing tasks.json (train it with `python -m train.suite`, then run again to report).
    `address` (or RAY_ADDRESS with `parallel: ray`) runs them on that Ray cluster.
    """
    from factory.core.ui import console, progress

    p = plan_tasks(grid_path, out, plan_fn=plan_fn, data_root=data_root, scratch=scratch)
    g, o, cells, tasks = p["grid"], p["out"], p["cells"], p["tasks"]
    n_scales = max(1, len(g.scales))
    if show:
        console.print(f"[bold]{g.name}[/]: {len(cells) // n_scales} cells x {n_scales} scale(s) x {len(g.seeds)} seeds; "
                      f"{len(tasks)} to run, {p['skipped']} done")
    if plan_only:
        return {"out": o.name, "tasks_file": p["tasks_file"], "ran": 0, "skipped": p["skipped"], "to_run": len(tasks)}
    if tasks and train_fn is None and eval_fn is None and g.nproc == 1:
        _watched(tasks, lambda: _run_lanes(p, show, address), show)
    elif tasks and _use_ray(g, address):
        import ray

        from factory.cluster import init_ray

        train_fn, eval_fn = train_fn or _default_train(g.nproc), eval_fn or default_eval
        init_ray(address)
        try:
            gpu = ray.cluster_resources().get("GPU", 0) > 0  # a GPU per run; a CPU where the cluster has none
            remote = ray.remote(**({"num_gpus": 1} if gpu else {"num_cpus": 1}))(_run_one)
            _watched(tasks, lambda: ray.get([remote.remote(t, train_fn, eval_fn) for t in tasks]), show)
        finally:
            ray.shutdown()
    elif tasks:
        train_fn, eval_fn = train_fn or _default_train(g.nproc), eval_fn or default_eval
        with progress(disable=not show) as bar:
            job = bar.add_task("ablation runs", total=len(tasks), unit="runs", info="")
            for t in tasks:
                bar.update(job, info=f"{t['cell']} seed {t['seed']}")
                rec = _run_one(t, train_fn, eval_fn)
                bar.update(job, advance=1, info=f"last: {rec['train_s']}s train, {rec['eval_s']}s eval")
    res = finish(p, show)
    return {**res, "ran": len(tasks), "skipped": p["skipped"]}


def _watched(tasks: list[dict], work: Callable[[], Any], show: bool, poll_s: float = 5.0) -> Any:
    """Run `work()` (runs in other processes) while a progress line counts the runs whose eval.json exists."""
    import concurrent.futures as cf

    from factory.core.ui import progress

    with progress(disable=not show) as bar, cf.ThreadPoolExecutor(1) as ex:
        job = bar.add_task("ablation runs", total=len(tasks), unit="runs", info="")
        fut = ex.submit(work)
        while True:
            try:
                return fut.result(timeout=poll_s)
            except cf.TimeoutError:
                pass
            finally:
                bar.update(job, completed=sum(storage.exists(t["eval_json"]) for t in tasks))


def finish(p: dict, show: bool = True) -> dict[str, Any]:
    """Copy the results of mixes trained once to the cells that name them again, collect every
    eval.json and write the report."""
    from factory.ablate import report
    from factory.core.ui import console, table

    g, o, cells = p["grid"], p["out"], p["cells"]
    for c, orig in p["aliases"]:
        for s in g.seeds:
            src, dst = f"cells/{orig['id']}/seed{s}/eval.json", f"cells/{c['id']}/seed{s}/eval.json"
            if o.exists(src) and not o.exists(dst):
                rec = json.loads(o.read(src))
                o.write(dst, json.dumps({**rec, "cell": c["id"], "params": {**rec["params"], **c["params"]},
                                         "same_as": orig["id"]}, indent=1))
    results = collect(o.name)
    if not results:
        raise FactoryError("no finished runs to report", where=o.name, fix="train the task list first (python -m train.suite)")
    o.write("results.jsonl", "".join(json.dumps(r) + "\n" for r in results))
    keys = [k for k in cells[0]["params"] if k != "scale"]
    x = g.report.x or keys[0]
    group = g.report.group if g.report.group is not None else (next((k for k in keys if k != x and len({str(c["params"][k]) for c in cells}) > 1), None))
    paths = report.write(results, o.uri("report"), x=x, group=group, title=g.report.title or f"Ablation: {g.name}",
                         notes=g.report.notes or g.description, scales=list(g.scales) or None)
    if show:
        summ = json.loads(storage.read_text(paths["summary_json"]))
        names = summ["benches"]
        rows = [[c["cell"], len(c["seeds"])] + [f"{c['stats'][b]['mean']:.3f}±{c['stats'][b]['half']:.3f}" if b in c["stats"] else "" for b in names]
                for c in summ["cells"]]
        console.print(table(f"{g.name}: mean ± 95% interval", ["cell", "seeds", *names], rows))
        console.print(f"report: {paths['report_md']}")
    return {"out": o.name, "results": results, "report": paths}


def collect(out: str | Path) -> list[dict]:
    """Every finished run's eval.json under out/cells (a local folder or a URL), sorted by cell and seed."""
    if storage.is_url(out):
        recs = [json.loads(storage.read_text(u)) for u in storage.glob(storage.join(out, "cells/*/seed*/eval.json"))]
    else:
        recs = [json.loads(p.read_text()) for p in sorted(Path(out).glob("cells/*/seed*/eval.json"))]
    return sorted(recs, key=lambda r: (r["cell"], r["seed"]))
