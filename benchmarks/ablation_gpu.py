"""GPU-scale mix ablation in three steps, for a GPU host that has torch but not the factory.

    python benchmarks/ablation_gpu.py prepare [--grid G.yaml] [--prep tmp/gpu_ablation]   # here: plan
    python benchmarks/ablation_gpu.py run --prep tmp/gpu_ablation --out DIR [--budget-s 420]  # GPU: torch only
    python benchmarks/ablation_gpu.py report DIR/results.jsonl [--prep tmp/gpu_ablation]  # here: report

`prepare` expands the grid with `factory.ablate` into a self-contained folder: copies of the
tokenized sources and tokenizer, the subsets, the benchmarks, and one plan per cell for each of
several token budgets, every path relative to the folder. `run` (imports only `train`, torch and
the standard library) measures tokens/s on the card with a short calibration run, picks the largest
budget whose grid fits the time limit, then trains and evaluates every cell and seed, several runs
side by side (seed-major, so a run cut short by the limit still leaves whole seeds), appending to
`results.jsonl`. `report` writes `benchmarks/results/ablation_gpu/{table.md,plot.png,report.md}`
and `benchmarks/results/ablation_gpu.json` with `factory.ablate.report`.
"""

from __future__ import annotations

RUN_ALL = False  # a driver with modes (prepare | run | report), not a ratio benchmark

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `train` from this checkout, installed or not
    sys.path.insert(0, str(REPO))
BUDGETS = [500_000, 1_000_000, 2_000_000, 3_000_000, 4_000_000, 6_000_000, 8_000_000, 12_000_000]
RESULTS = REPO / "benchmarks" / "results"


# --------------------------------------------------------------------------- prepare (factory side)

def prepare(grid: Path, prep: Path, budgets: list[int]) -> Path:
    """Write the self-contained folder `prep` (manifest.json, data/, benchmarks/, plans/)."""
    import yaml

    from factory import ablate as ab
    from factory.core.config import read_yaml
    from factory.mix.plan import plan as plan_mix

    g = ab.load_grid(grid)
    src_root = Path(g.data_root)
    if prep.exists():
        shutil.rmtree(prep)
    data = prep / "data"
    data.mkdir(parents=True)
    base = read_yaml((grid.parent / g.base_mix).resolve())
    shutil.copy2(src_root / base.get("tokenizer", "tokenizer.json"), data / "tokenizer.json")
    for s in base["sources"]:
        shutil.copytree(src_root / s["path"], data / s["path"])
    for name, sub in g.subsets.items():
        ab.make_subset(data, name, sub)
    b = g.benchmarks.model_copy(update={k: str((src_root / v).resolve()) for k in ("titles_from", "titles_file", "holdout_titles_file")
                                         if (v := getattr(g.benchmarks, k))})
    benches = [Path(d) for d in ab.build_benchmarks(g.model_copy(update={"benchmarks": b}), prep, base, data)]
    for d in benches:  # source-loss benchmarks point at a source folder: make it relative to prep
        spec_path = d / "benchmark.yaml"
        spec = yaml.safe_load(spec_path.read_text())
        if spec.get("ds"):
            spec["ds"] = os.path.relpath(spec["ds"], prep.resolve())
            spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    cells_out, seen = [], {}
    for B in budgets:
        gb = g.model_copy(update={"tokens": B})
        for i, c in enumerate(ab.expand(grid, gb)):
            key = f"c{i}"
            same = json.dumps({k: v for k, v in c["mix"].items() if k != "name"}, sort_keys=True)
            alias = seen.setdefault((B, same), key)
            if B == budgets[0]:
                cells_out.append({"key": key, "id": c["id"], "params": c["params"],
                                  "same_as": None if alias == key else alias, "info": {}})
            cell = cells_out[i]
            if cell["same_as"]:
                continue
            mdir = prep / "mixes" / str(B)
            mdir.mkdir(parents=True, exist_ok=True)
            (mdir / f"{key}.yaml").write_text(yaml.safe_dump(c["mix"], sort_keys=False))
            p = plan_mix(mdir / f"{key}.yaml", data)
            for ph in p["phases"]:
                for s in ph["sources"]:
                    s["path"] = os.path.relpath(s["path"], prep.resolve())
            p["tokenizer"] = os.path.relpath(p["tokenizer"], prep.resolve())
            pdir = prep / "plans" / str(B)
            pdir.mkdir(parents=True, exist_ok=True)
            (pdir / f"{key}.json").write_text(json.dumps(p, indent=1))
            cell["info"][str(B)] = ab.plan_info(p)
    manifest = {"grid": g.name, "grid_file": str(grid), "model": g.model, "run_config": g.run_config,
                "seeds": g.seeds, "nproc": g.nproc, "budgets": budgets, "cells": cells_out,
                "benches": [os.path.relpath(d.resolve(), prep.resolve()) for d in benches],
                "eval": g.eval.model_dump(), "report": g.report.model_dump(), "description": g.description}
    (prep / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return prep


# --------------------------------------------------------------------------- run (torch side)

def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _overrides(items: list[str]) -> dict:
    import yaml

    out: dict = {}
    for it in items:
        k, v = it.split("=", 1)
        cur = out
        *parents, leaf = k.split(".")
        for p in parents:
            cur = cur.setdefault(p, {})
        cur[leaf] = yaml.safe_load(v)
    return out


def _resolve_plan(prep: Path, budget: int, key: str, seed: int, dest: Path) -> Path:
    p = json.loads((prep / "plans" / str(budget) / f"{key}.json").read_text())
    for ph in p["phases"]:
        for s in ph["sources"]:
            s["path"] = str((prep / s["path"]).resolve())
    p["tokenizer"] = str((prep / p["tokenizer"]).resolve())
    p["seed"] = int(p.get("seed", 0)) + seed
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(p, indent=1))
    return dest


def _resolve_benches(prep: Path, man: dict, work: Path) -> list[str]:
    import yaml

    out = []
    for rel in man["benches"]:
        src, dst = prep / rel, work / "benchmarks" / Path(rel).name
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
        spec = yaml.safe_load((dst / "benchmark.yaml").read_text())
        if spec.get("ds") and not Path(spec["ds"]).is_absolute():
            spec["ds"] = str((prep / spec["ds"]).resolve())
            (dst / "benchmark.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        out.append(str(dst))
    return out


def one(task_path: Path) -> None:
    """Train and evaluate one cell and seed (a process of its own); writes task['result']."""
    import torch

    from train.eval import evaluate
    from train.launch import run as launch
    from train.model import load_for_eval

    task = json.loads(task_path.read_text())
    t0 = time.time()
    run_dir = launch(task["config"], nproc=task["nproc"], echo=None)
    t1 = time.time()
    dev = "cuda" if torch.cuda.is_available() and task.get("device") != "cpu" else "cpu"
    model, tok = load_for_eval(run_dir, device=dev)
    scores = evaluate(model, tok, task["benches"], max_items=task.get("max_items"), batch_size=task["batch_size"])
    recs = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [r for r in recs if "tokens_per_s" in r]
    tps = [r["tokens_per_s"] for r in steps[len(steps) // 4:] if r.get("tokens_per_s")]
    step_s = [r["step_s"] for r in steps[len(steps) // 4:] if r.get("step_s")]
    mfu = [r["mfu"] for r in steps[len(steps) // 4:] if r.get("mfu")]
    rec = {"cell": task["cell"], "seed": task["seed"], "params": task["params"], "scores": scores,
           "budget": task["budget"], "steps": len(steps), "tokens": steps[-1]["tokens"] if steps else 0,
           "final_loss": steps[-1]["loss"] if steps else None,
           "tokens_per_s": statistics.median(tps) if tps else None, "step_s": statistics.median(step_s) if step_s else None,
           "mfu": statistics.median(mfu) if mfu else None,
           "train_s": round(t1 - t0, 1), "eval_s": round(time.time() - t1, 1)}
    shutil.rmtree(Path(run_dir) / "hf", ignore_errors=True)  # keep the disk small: the scores are kept
    Path(task["result"]).write_text(json.dumps(rec))


def _launch_one(task: dict, work: Path, env: dict, timeout: float) -> dict | None:
    tdir = work / "tasks"
    tdir.mkdir(parents=True, exist_ok=True)
    name = f"{task['cell']}_s{task['seed']}_{task['budget']}"
    tp, task["result"] = tdir / f"{name}.json", str(tdir / f"{name}.result.json")
    tp.write_text(json.dumps(task))
    with open(tdir / f"{name}.log", "w") as log:
        try:
            rc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "one", str(tp)], cwd=str(REPO),
                                env=env, stdout=log, stderr=subprocess.STDOUT, timeout=max(1.0, timeout)).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    if rc != 0 or not Path(task["result"]).exists():
        tail = (tdir / f"{name}.log").read_text()[-1500:]
        print(f"FAILED {name} (rc {rc}):\n{tail}", flush=True)
        return None
    return json.loads(Path(task["result"]).read_text())


def _task(man: dict, cell: dict, seed: int, budget: int, work: Path, benches: list[str], prep: Path, extra: dict,
          nproc: int, max_items: int | None, device: str) -> dict:
    sdir = work / "cells" / cell["key"] / f"seed{seed}_{budget}"
    plan = _resolve_plan(prep, budget, cell["key"], seed, sdir / "plan.json")
    cfg = _merge(_merge({"train": {"steps": 0}}, man["run_config"]),
                 {"run_dir": str(sdir / "run"), "seed": seed, "model": dict(man["model"]),
                  "data": {"source": "plan", "plan": str(plan)}})
    cfg = _merge(cfg, extra)
    params = {**{k: v for k, v in cell["info"][str(budget)].items() if k not in cell["params"]}, **cell["params"]}
    return {"cell": cell["id"], "key": cell["key"], "seed": seed, "budget": budget, "params": params, "config": cfg,
            "benches": benches, "nproc": nproc, "batch_size": man["eval"].get("batch_size", 32),
            "max_items": max_items if max_items is not None else man["eval"].get("max_items"), "device": device}


def run(prep: Path, out: Path, budget_s: float, jobs: int, nproc: int, tokens: int | None, extra: dict,
        calib_steps: int, max_items: int | None, seeds: list[int] | None, device: str, min_tokens: int = 0) -> None:
    t_start = time.time()
    prep, out = prep.resolve(), out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    man = json.loads((prep / "manifest.json").read_text())
    work = prep / "work"
    benches = _resolve_benches(prep, man, work)
    env = dict(os.environ, NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1",
               HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    info = _machine()
    print(f"machine: {info}", flush=True)
    cells = [c for c in man["cells"] if not c["same_as"]]
    seeds = seeds if seeds is not None else man["seeds"]
    log = out / "results.jsonl"
    log.write_text("")

    # 1. calibration: a short run of the first cell measures tokens/s, start-up and eval time
    gb = int(_merge(man["run_config"], extra).get("train", {}).get("global_batch", 16))
    small = next((B for B in man["budgets"] if B >= calib_steps * gb * _seq_len(prep, B, cells[0])), man["budgets"][-1])
    ctask = _task(man, cells[0], 99, small, work / "calib", benches, prep, _merge(extra, {"train": {"steps": calib_steps}}),
                  nproc, max_items, device)
    t0 = time.time()
    crec = _launch_one(ctask, work / "calib", env, budget_s)
    if crec is None:
        raise SystemExit("calibration run failed")
    wall = time.time() - t0
    tps = crec["tokens_per_s"]
    fixed = max(0.0, wall - crec["steps"] * (crec["step_s"] or 0))  # start-up, export and eval
    calib = {"tokens_per_s": tps, "step_s": crec["step_s"], "mfu": crec["mfu"], "wall_s": round(wall, 1),
             "fixed_s": round(fixed, 1), "train_s": crec["train_s"], "eval_s": crec["eval_s"], "steps": crec["steps"]}
    print(f"calibration: {json.dumps(calib)}", flush=True)

    # 2. the largest budget whose grid fits the time left (runs side by side share the card)
    n_runs = len(cells) * len(seeds)
    left = budget_s - (time.time() - t_start)
    cfg0 = ctask["config"]
    forced = int(extra.get("train", {}).get("steps", 0)) * int(cfg0["train"]["global_batch"]) * _seq_len(prep, small, cells[0])

    def tok(B: int) -> int:
        return min(B, forced) if forced else B

    est = {B: n_runs * (tok(B) / tps + fixed / jobs) for B in man["budgets"]}
    fits = [B for B in man["budgets"] if est[B] <= 0.85 * left]
    while not tokens and len(seeds) > 2 and (max(fits) if fits else 0) < min_tokens:  # fewer seeds, more tokens
        seeds = seeds[:-1]
        n_runs = len(cells) * len(seeds)
        est = {B: n_runs * (tok(B) / tps + fixed / jobs) for B in man["budgets"]}
        fits = [B for B in man["budgets"] if est[B] <= 0.85 * left]
    budget = tokens or (max(fits) if fits else man["budgets"][0])
    print(f"{n_runs} runs (seeds {seeds}), {left:.0f}s left; estimates {({B: round(s) for B, s in est.items()})}; budget {budget} tokens",
          flush=True)

    # 3. the grid, seed-major, `jobs` runs at a time
    deadline = t_start + budget_s
    lock = threading.Lock()
    tasks = [_task(man, c, s, budget, work, benches, prep, extra, nproc, max_items, device) for s in seeds for c in cells]
    per_run = tok(budget) / tps + fixed
    ngpu = info.get("gpus", 0)
    done: list[dict] = []

    def go(i: int, t: dict) -> None:
        if time.time() + per_run > deadline:
            print(f"skipped {t['cell']} seed {t['seed']}: past the time limit", flush=True)
            return
        e = dict(env, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // jobs)))  # evals side by side: no oversubscription
        if nproc == 1 and ngpu > 1:
            e["CUDA_VISIBLE_DEVICES"] = str(i % ngpu)
        rec = _launch_one(t, work, e, deadline + 60 - time.time())
        if rec:
            with lock:
                done.append(rec)
                with open(log, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            sc = rec["scores"]
            print(f"[{len(done)}/{len(tasks)}] {t['key']} seed {t['seed']}: train {rec['train_s']}s eval {rec['eval_s']}s "
                  f"loss {rec['final_loss']:.3f} wiki_mc {sc.get('wiki_mc', {}).get('score', float('nan')):.3f} "
                  f"t+{time.time() - t_start:.0f}s", flush=True)

    with cf.ThreadPoolExecutor(jobs) as ex:
        list(ex.map(lambda a: go(*a), enumerate(tasks)))
    summary = {"machine": info, "calibration": calib, "budget_tokens": budget, "runs": len(done), "planned_runs": n_runs,
               "jobs": jobs, "nproc": nproc, "wall_s": round(time.time() - t_start, 1), "model": man["model"],
               "run_config": _merge(man["run_config"], extra), "seeds": seeds,
               "date": time.strftime("%Y-%m-%d", time.gmtime())}
    (out / "run_summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary), flush=True)


def _seq_len(prep: Path, budget: int, cell: dict) -> int:
    return int(json.loads((prep / "plans" / str(budget) / f"{cell['key']}.json").read_text())["seq_len"])


def _machine() -> dict:
    try:
        import torch

        n = torch.cuda.device_count()
        return {"gpus": n, "card": torch.cuda.get_device_name(0) if n else "cpu", "torch": torch.__version__,
                "cpus": os.cpu_count()}
    except Exception as e:  # pragma: no cover
        return {"gpus": 0, "card": f"unknown ({e})", "cpus": os.cpu_count()}


# --------------------------------------------------------------------------- report (factory side)

def report(results: Path, prep: Path, out: Path, summary_path: Path | None, extra_notes: str = "") -> dict:
    from factory.ablate import report as rep

    man = json.loads((prep / "manifest.json").read_text())
    recs = [json.loads(x) for x in results.read_text().splitlines() if x.strip()]
    by_key = {c["id"]: c for c in man["cells"]}
    keys = {c["key"]: c for c in man["cells"]}
    for c in man["cells"]:  # the same mix trained once is reported in every cell that names it
        if c["same_as"]:
            orig = keys[c["same_as"]]["id"]
            recs += [{**r, "cell": c["id"], "params": {**r["params"], **c["params"]}, "same_as": orig}
                     for r in recs if r["cell"] == orig]
    recs = [r for r in recs if r["cell"] in by_key]
    run_sum = json.loads(summary_path.read_text()) if summary_path and summary_path.exists() else {}
    card = run_sum.get("machine", {}).get("card", "unknown card")
    eps = [float(r["params"][k]) for r in recs for k in ("epochs_synthetic", "epochs_rewrite") if k in r["params"]]
    span = f"{min(eps):.0f} to {max(eps):.0f}" if eps else "many"
    notes = (f"{man['description']} Trained on one {card}, {run_sum.get('budget_tokens', 0) / 1e6:g}M tokens per "
             f"model at seq 512 ({_params_m(man['model'])}), bf16, {len(run_sum.get('seeds', man['seeds']))} seeds, "
             f"{run_sum.get('runs', len(recs))} runs in {run_sum.get('wall_s', 0):.0f} s. "
             "The teacher-made sources hold ~5k tokens each (a quarter of that in the `_q` cells), so every "
             f"share above 0 repeats them {span} times: these cells ask how many epochs of synthetic data a model "
             "takes before its knowledge of the web facts drops (Phi-4 drew ~12 epochs of its synthetic data)."
             + (f" {extra_notes}" if extra_notes else ""))
    paths = rep.write(recs, out, x=man["report"].get("x") or "synthetic_share", group=man["report"].get("group"),
                      title=man["report"].get("title") or f"Ablation: {man['grid']}", notes=notes)
    summ = json.loads(Path(paths["summary_json"]).read_text())
    drop = _knowledge_drop(summ)
    res = {"ours": drop, "anchor": 14.8, "ratio": round(drop / 14.8, 3) if drop is not None else None,
           "unit": "wiki_mc accuracy points lost from teacher-made share 0 to the highest share (full set)",
           "target": "anchor: Phi-4's TriviaQA loss of synthetic-only vs web-heavy training (its Table 3); "
                     "the sign is the claim, not the size",
           "machine": card, "date": run_sum.get("date") or time.strftime("%Y-%m-%d", time.gmtime()),
           "run": run_sum, "cells": summ["cells"], "snr": summ["snr"]}
    (RESULTS / "ablation_gpu.json").write_text(json.dumps(res, indent=1, default=str))
    (RESULTS / "ablation_gpu_runs.json").write_text(json.dumps(recs, indent=1, default=str))  # every run's scores
    return paths


def _params_m(model: dict) -> str:
    return {"125m": "~91M parameters: the 125m preset with a 4k vocabulary"}.get(model.get("preset", ""), str(model))


def _knowledge_drop(summ: dict) -> float | None:
    cells = [c for c in summ["cells"] if c["params"].get("synthetic_data") == "synthetic" and "wiki_mc" in c["stats"]]
    if len(cells) < 2:
        return None
    cells.sort(key=lambda c: float(c["params"].get("synthetic_share", 0)))
    return round(100 * (cells[0]["stats"]["wiki_mc"]["mean"] - cells[-1]["stats"]["wiki_mc"]["mean"]), 2)


# --------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--grid", type=Path, default=REPO / "mixes/ablations/phi4_knowledge_gpu.yaml")
    p.add_argument("--prep", type=Path, default=REPO / "tmp/gpu_ablation")
    p.add_argument("--budgets", type=lambda s: [int(float(x)) for x in s.split(",")], default=BUDGETS)
    r = sub.add_parser("run")
    r.add_argument("--prep", type=Path, default=REPO / "tmp/gpu_ablation")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--budget-s", type=float, default=420, help="wall-clock limit for calibration and grid")
    r.add_argument("--jobs", type=int, default=4, help="runs side by side")
    r.add_argument("--nproc", type=int, default=1, help="GPUs (ranks) per run")
    r.add_argument("--tokens", type=int, default=None, help="force a planned budget instead of measuring")
    r.add_argument("--calib-steps", type=int, default=40)
    r.add_argument("--min-tokens", type=float, default=2e6, help="below this budget, drop seeds (down to 2) first")
    r.add_argument("--max-items", type=int, default=None)
    r.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=None)
    r.add_argument("--device", default="auto", help="cpu forces the CPU (a microscopic test run)")
    r.add_argument("--set", action="append", default=[], help="run-config override, e.g. model.preset=tiny")
    o = sub.add_parser("one")
    o.add_argument("task", type=Path)
    q = sub.add_parser("report")
    q.add_argument("results", type=Path)
    q.add_argument("--prep", type=Path, default=REPO / "tmp/gpu_ablation")
    q.add_argument("--out", type=Path, default=RESULTS / "ablation_gpu")
    q.add_argument("--summary", type=Path, default=None, help="run_summary.json (default: beside the results)")
    q.add_argument("--notes", default="", help="a paragraph appended to the report's notes")
    a = ap.parse_args(argv)
    if a.mode == "prepare":
        print(prepare(a.grid, a.prep, a.budgets))
    elif a.mode == "run":
        extra = _overrides(a.set)
        if a.device == "cpu":
            extra = _merge(extra, {"train": {"device": "cpu"}})
        run(a.prep, a.out, a.budget_s, a.jobs, a.nproc, a.tokens, extra, a.calib_steps, a.max_items, a.seeds, a.device, int(a.min_tokens))
    elif a.mode == "one":
        one(a.task)
    else:
        paths = report(a.results, a.prep, a.out, a.summary or a.results.with_name("run_summary.json"), a.notes)
        print(json.dumps(paths, indent=1))


if __name__ == "__main__":
    main()
