"""Suite throughput of packed ablation runs vs one large-batch run of the same model on the same card,
and the two-scale decision suite of mixes/ablations/decision_gpu.yaml.

    python benchmarks/ablation_packing.py prepare [--prep tmp/abl_gpu]             # here: data, plans, task lists
    python benchmarks/ablation_packing.py run small --out DIR                      # GPU host (torch only)
    python benchmarks/ablation_packing.py run large --out DIR                      # GPU host: anchor, then ours
    python benchmarks/ablation_packing.py report DIR [DIR ...]                     # here: result JSON, report

`prepare` builds a small tokenized corpus (web: the offline Wikipedia summaries; `synthetic` and
`rewrite`: template-made restatements of the same summaries, standing in for teacher output, which
needs a teacher this script does not start), then plans the decision grid with `factory ablate
--plan-only` as two task lists, one per scale. `run large` trains, one process each: the anchor
(one run of the large-scale model on the same data at 256 sequences a step; its figure is the
median tokens/s of its steps after the first quarter, start-up and compile left out) and ours (the
large-scale task list through train.suite: all runs' training tokens over the wall time of the
whole suite, start-up, compile, data loading and evaluation included). `run small` trains the
small-scale task list. `report` writes benchmarks/results/ablation_packing.json and the decision
report (benchmarks/results/ablation_decision/).
"""

from __future__ import annotations

RUN_ALL = False  # a driver with modes (prepare | run | report) for a GPU host, not a CPU ratio benchmark

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"
GRID = REPO / "mixes" / "ablations" / "decision_gpu.yaml"
ANCHOR_BATCH = 256


# --------------------------------------------------------------------------- prepare (factory side)

def _restated(recs: list[dict], kind: str) -> list[dict]:
    """Template-made documents from the summaries (a stand-in for teacher output): `synthetic` turns
    each extract into question-and-answer drills, `rewrite` restates it sentence by sentence."""
    import re

    from factory.core.schema import make_doc

    docs = []
    for r in recs:
        sents = [s for s in re.split(r"(?<=[.!?])\s+", r["extract"].strip()) if s]
        if kind == "synthetic":
            text = "\n".join(f"Question: What do we know about {r['title']}? Answer: {s}" for s in sents[:6])
        else:
            text = f"In other words, about {r['title']}: " + " ".join(reversed(sents[:6]))
        docs.append(make_doc(text, kind, "template", seed_id=f"wiki:{r['title']}", recipe=f"template_{kind}"))
    return docs


def write_corpus(prep: Path) -> None:
    """The three sources (web summaries, templated synthetic and rewrite text) under `prep`, tokenized
    into `prep/tokens` with a 4k vocabulary."""
    from factory.core.stage import StageDir
    from factory.mix import tokenize
    from factory.seeds.sources import load_wiki_summaries, wiki_rows

    recs = load_wiki_summaries()
    for name, kind, rows in (("web", "web", wiki_rows(records=recs)), ("synthetic", "synthetic", _restated(recs[::2], "synthetic")),
                             ("rewrite", "rewrite", _restated(recs[1::2], "rewrite"))):
        st = StageDir(str(prep / name), name, {"n": len(rows)})
        st.write_docs("part-0.parquet", rows)
        st.finish()
    tokenize.run(tokenize.TokenizeConfig(sources={n: {"path": str(prep / n)} for n in ("web", "synthetic", "rewrite")},
                                         tokenizer={"train": {"vocab_size": 4096}}, out=str(prep / "tokens")))


def prepare(prep: Path) -> None:
    import yaml

    from factory import ablate

    if prep.exists():
        shutil.rmtree(prep)
    prep.mkdir(parents=True)
    write_corpus(prep)
    g = yaml.safe_load(GRID.read_text())
    g["base_mix"] = str((GRID.parent / g["base_mix"]).resolve())
    (prep / "decision.yaml").write_text(yaml.safe_dump(g, sort_keys=False))
    for scale in g["scales"]:
        gp = prep / f"{scale}.yaml"
        gp.write_text(yaml.safe_dump({**g, "scales": {scale: g["scales"][scale]}}, sort_keys=False))
        r = ablate.run(gp, prep / scale, data_root=prep / "tokens", show=False, plan_only=True)
        print(f"{scale}: {r['to_run']} runs -> {r['tasks_file']}")


# --------------------------------------------------------------------------- run (torch side)

def _env() -> dict:
    from train.launch import child_env

    return child_env({"PYTHONUNBUFFERED": "1"})


def anchor(prep: Path, work: Path, steps: int) -> dict:
    """One large-batch run of the large-scale model on the first large-scale run's plan."""
    task = json.loads((prep / "large" / "tasks.json").read_text())["tasks"][0]
    from train.suite import Mover

    move = Mover(json.loads((prep / "large" / "tasks.json").read_text())["root"])
    cfg = move(task["config"])
    move.file(cfg["data"]["plan"])
    cfg["run_dir"] = str(work / f"anchor_{time.time_ns()}")
    cfg["train"] = {**cfg["train"], "steps": steps, "global_batch": ANCHOR_BATCH, "micro_batch": ANCHOR_BATCH}
    cfg["eval"] = {"batches": 0}
    if cfg["train"].get("device") == "cpu":  # the microscopic CPU check
        cfg["train"]["global_batch"] = cfg["train"]["micro_batch"] = 8
    from train.launch import run as launch

    t0 = time.time()
    run_dir = launch(cfg, nproc=1, echo=None)
    wall = time.time() - t0
    recs = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    tps = [r["tokens_per_s"] for r in recs if r.get("tokens_per_s")][steps // 4:]
    return {"tokens_per_s": statistics.median(tps), "steps": steps, "wall_s": round(wall, 1),
            "tokens": steps * ANCHOR_BATCH * 512, "mfu": statistics.median([r["mfu"] for r in recs if r.get("mfu")][steps // 4:] or [0])}


def run_suite(tasks_file: Path, lanes: list[str], limit_s: float, env: dict) -> tuple[int | str, float, list[dict]]:
    """The task list through train.suite in a fresh process (start-up included), stopped after
    limit_s: (exit code or "timeout", wall seconds, the finished runs' eval.json records)."""
    import signal

    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "train.suite", str(tasks_file), *lanes], env=env, start_new_session=True)
    try:
        rc: int | str = proc.wait(timeout=max(1.0, limit_s))
    except subprocess.TimeoutExpired:  # the runner and its lanes: one process group
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = "timeout"
    wall = time.time() - t0
    return rc, wall, [json.loads(p.read_text()) for p in sorted(tasks_file.parent.glob("cells/*/seed*/eval.json"))]


def suite(tasks_file: Path, per_gpu: str, limit_s: float) -> dict:
    """All finished runs' training tokens over the suite's wall time."""
    rc, wall, recs = run_suite(tasks_file, ["--per-gpu", per_gpu], limit_s, _env())
    tokens = sum(r["tokens"] for r in recs)
    return {"rc": rc, "runs": len(recs), "planned_runs": len(json.loads(tasks_file.read_text())["tasks"]), "tokens": tokens,
            "wall_s": round(wall, 1), "tokens_per_s": round(tokens / wall, 1), "recs": recs}


def _override(prep: Path, items: list[str]) -> None:
    """Run-config overrides (section.key=value) on every task of both task lists: a microscopic CPU check."""
    from train.config import _merge, parse_overrides

    over = parse_overrides(items)
    for name in ("small", "large"):
        tf = prep / name / "tasks.json"
        spec = json.loads(tf.read_text())
        for t in spec["tasks"]:
            t["config"] = _merge(t["config"], over)
        tf.write_text(json.dumps(spec, indent=1))


def run(scale: str, prep: Path, out: Path, anchor_steps: int, per_gpu: str, limit_s: float, sets: list[str]) -> None:
    import torch

    if sets:
        _override(prep, sets)
    out.mkdir(parents=True, exist_ok=True)
    work = prep / "work"
    work.mkdir(exist_ok=True)
    info = {"card": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "gpus": torch.cuda.device_count(), "torch": torch.__version__, "cpus": os.cpu_count()}
    print(f"machine: {info}", flush=True)
    res: dict = {"machine": info, "scale": scale, "date": time.strftime("%Y-%m-%d", time.gmtime())}
    t0 = time.time()
    if scale == "large":
        res["anchor"] = anchor(prep, work, anchor_steps)
        print(f"anchor: {json.dumps(res['anchor'])}", flush=True)
    s = suite(prep / scale / "tasks.json", per_gpu, limit_s - (time.time() - t0))
    recs = s.pop("recs")
    res["ours"] = {**s, "per_gpu": per_gpu}
    print(f"ours ({scale}): {json.dumps(s)}", flush=True)
    (out / f"{scale}_results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (out / f"{scale}_summary.json").write_text(json.dumps(res, indent=1))
    for r in recs:
        print(f"  {r['cell'][:70]} s{r['seed']}: train {r['train_s']}s eval {r['eval_s']}s loss {r['final_loss']:.3f} "
              f"wiki_mc {r['scores'].get('wiki_mc', {}).get('score', float('nan')):.3f}", flush=True)


def probe(prep: Path, out: Path, lanes: list[int], steps: int, anchor_steps: int) -> None:
    """Where a packed suite's time goes: for each lane count, that many copies of the first
    large-scale runs cut to `steps` steps through train.suite (one shared compile cache, so the
    first count compiles cold and the others warm); per lane the first step (compile), the median
    tokens/s of the middle half of its steps, and the suite's wall time; then the anchor."""
    import copy

    spec = json.loads((prep / "large" / "tasks.json").read_text())
    work = (prep / "probe").resolve()
    shutil.rmtree(work, ignore_errors=True)
    cache = work / "compile_cache"
    cache.mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in lanes:
        d = work / f"lanes{n}"
        tasks = []
        for k in range(n):
            t = copy.deepcopy(spec["tasks"][k % len(spec["tasks"])])
            t["config"]["train"]["steps"] = steps
            t["config"]["run_dir"], t["eval_json"] = str(d / f"run{k}"), str(d / f"run{k}" / "eval.json")
            tasks.append(t)
        (d / "tasks").mkdir(parents=True)
        (d / "tasks" / "compile_cache").symlink_to(cache)
        (d / "tasks.json").write_text(json.dumps({**spec, "tasks": tasks}))
        t0 = time.time()
        rc = subprocess.run([sys.executable, "-m", "train.suite", str(d / "tasks.json"), "--lanes", str(n)], env=_env(),
                            stdout=subprocess.DEVNULL).returncode
        wall = time.time() - t0
        per = []
        for k in range(n):
            m = [json.loads(x) for x in (d / f"run{k}" / "metrics.jsonl").read_text().splitlines() if x.strip()]
            tps = [r["tokens_per_s"] for r in m if r.get("tokens_per_s")]
            ev = json.loads((d / f"run{k}" / "eval.json").read_text()) if (d / f"run{k}" / "eval.json").exists() else {}
            per.append({"first_step_s": m[0]["step_s"], "tok_s": statistics.median(tps[len(tps) // 4: 3 * len(tps) // 4]),
                        "eval_s": ev.get("eval_s"), "train_s": ev.get("train_s")})
        toks = n * steps * tasks[0]["config"]["train"]["global_batch"] * 512
        rows.append({"lanes": n, "rc": rc, "wall_s": round(wall, 1), "steady_tok_s": round(sum(p["tok_s"] for p in per)),
                     "suite_tok_s": round(toks / wall), "first_step_s": [round(p["first_step_s"], 1) for p in per],
                     "eval_s": [p["eval_s"] for p in per], "train_s": [p["train_s"] for p in per]})
        print(json.dumps(rows[-1]), flush=True)
        for log in sorted((d / "tasks" / "lanes").glob("*.log")):
            shutil.copy(log, out / f"lanes{n}_{log.name}")
    a = anchor(prep, work, anchor_steps) if anchor_steps else {}
    (out / "probe.json").write_text(json.dumps({"rows": rows, "anchor": a}, indent=1))
    print(f"anchor: {json.dumps(a)}")
    print(f"{'lanes':>5} {'steady tok/s':>13} {'vs anchor':>9} {'suite tok/s':>12} {'wall s':>7}  first step s / eval s")
    for r in rows:
        print(f"{r['lanes']:>5} {r['steady_tok_s']:>13,} {r['steady_tok_s'] / a.get('tokens_per_s', float('nan')):>9.3f} "
              f"{r['suite_tok_s']:>12,} {r['wall_s']:>7}  {r['first_step_s']} / {r['eval_s']}")


# --------------------------------------------------------------------------- report (factory side)

def time_split(summary: dict, folder: Path, auto_lanes: int = 1) -> dict:
    """One round's suite wall time split from its runs' own records: optimizer steps, the rest of
    each run (set-up phases), scoring, and what lies outside the runs (process start); the first run
    (cold: CUDA, compile) apart from the median later run. `auto_lanes`: the lanes of `--per-gpu auto`."""
    recs = [json.loads(x) for x in (folder / "large_results.jsonl").read_text().splitlines() if x.strip()]
    timed = [r for r in recs if r.get("time")]
    wall, anchor_tps = summary["ours"]["wall_s"], summary["anchor"]["tokens_per_s"]
    per_gpu = str(summary["ours"].get("per_gpu") or 1)
    lanes = int(per_gpu) if per_gpu.isdigit() else auto_lanes
    out = {"lanes_per_gpu": per_gpu if per_gpu.isdigit() else f"auto ({auto_lanes})", "suite_wall_s": wall}
    if not timed:
        return out
    steps = [r["time"]["steps_s"] for r in timed]
    later = timed[1:] if lanes == 1 else timed[lanes:]
    med = lambda xs: round(statistics.median(xs), 2) if xs else None  # noqa: E731
    out.update({
        "steps_s": round(sum(steps), 1), "other_s": round(sum(r["time"]["other_s"] for r in timed), 1),
        "score_s": round(sum(r["time"]["score_s"] for r in timed), 1),
        "outside_runs_s": round(wall - sum(r["train_s"] + r["eval_s"] for r in timed) / lanes, 1),
        "first_run": {k: timed[0]["time"].get(k) for k in ("steps_s", "other_s", "score_s", "phases_s")},
        "later_run_median": {"steps_s": med([r["time"]["steps_s"] for r in later]),
                             "other_s": med([r["time"]["other_s"] for r in later]),
                             "score_s": med([r["time"]["score_s"] for r in later]),
                             "model_build_s": med([r["time"]["phases_s"]["model"] for r in later if r["time"].get("phases_s")])},
        "steps_only_vs_anchor": round(sum(r["tokens"] for r in later) / sum(r["time"]["steps_s"] for r in later) * lanes / anchor_tps, 3),
    })
    return out


def report(outs: list[Path], prep: Path, also: list[Path] | None = None) -> None:
    """`outs`: the folders whose runs make the decision report; `also`: more `run large` rounds (other
    lane counts), recorded in the result JSON beside the first."""
    import yaml

    from factory.ablate.run import finish, plan_tasks

    more = [json.loads((d / "large_summary.json").read_text()) for d in also or []]
    summ = {}
    for o in outs:
        for f in o.glob("*_summary.json"):
            summ[json.loads(f.read_text())["scale"]] = json.loads(f.read_text())
    if "large" in summ and "anchor" in summ["large"]:
        rounds = [summ["large"], *more]
        for r in rounds:
            r["ratio"] = r["ours"]["tokens_per_s"] / r["anchor"]["tokens_per_s"]
        mid = sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2]  # the median round
        auto_lanes = int(json.loads((prep / "large" / "tasks.json").read_text()).get("per_gpu_auto") or 1)
        o, a = mid["ours"]["tokens_per_s"], mid["anchor"]["tokens_per_s"]
        ratios = [round(r["ratio"], 3) for r in rounds]
        res = {"ours": round(o, 1), "anchor": round(a, 1), "ratio": round(o / a, 3), "unit": "training tokens/s",
               "target": 0.8, "machine": f"{mid['machine']['card']} ({mid['machine']['cpus']} CPU cores)", "date": mid["date"],
               "ratio_median": statistics.median(ratios), "ratio_spread": [min(ratios), max(ratios)],
               "rounds": [{"lanes_per_gpu": r["ours"].get("per_gpu"), "ours": r["ours"]["tokens_per_s"],
                           "anchor": r["anchor"]["tokens_per_s"], "ratio": round(r["ratio"], 3),
                           "suite_wall_s": r["ours"]["wall_s"], "runs": r["ours"]["runs"],
                           "complete": r["ours"]["runs"] == r["ours"]["planned_runs"]} for r in rounds],
               "where_the_time_goes": [time_split(r, d, auto_lanes) for r, d in zip(rounds, [outs[0], *(also or [])])],
               "what": "ours: the large-scale task list of mixes/ablations/decision_gpu.yaml through train.suite "
                       "(lanes_per_gpu lanes on the GPU), all finished runs' training tokens over the suite's wall time "
                       "(start-up, compile, data, evaluation included); anchor: one run of the same model on the same "
                       f"card in the same command at {ANCHOR_BATCH} sequences a step, median tokens/s of its steps after "
                       "the first quarter; each round is one command (anchor, then ours); the headline is the median round"}
        (RESULTS / "ablation_packing.json").write_text(json.dumps(res, indent=1))
        print(json.dumps({k: res[k] for k in ("ours", "anchor", "ratio", "ratio_spread", "machine")}))
    dest = prep / "decision"
    lines = []
    for o in outs:
        for f in sorted(o.glob("*_results.jsonl")):
            lines += f.read_text().splitlines()
    for line in lines:
        r = json.loads(line)
        p = dest / "cells" / r["cell"] / f"seed{r['seed']}" / "eval.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(r, indent=1))
    if not lines:
        return
    g = yaml.safe_load((prep / "decision.yaml").read_text())
    runs = len(lines)
    wall = sum(s["ours"]["wall_s"] for s in summ.values())
    card = next(iter(summ.values()))["machine"]["card"]
    toks = sum(json.loads(x)["tokens"] for x in lines)
    g["report"]["notes"] = (f"{g['description']} Trained on one {card} with train.suite (runs packed several to the GPU): "
                            f"{runs} runs, {toks / 1e6:.0f}M training tokens in {wall:.0f} s of suite wall time "
                            f"({runs / (wall / 3600):.0f} runs per GPU-hour). The teacher-made sources here are template-made "
                            "restatements of the Wikipedia summaries (benchmarks/ablation_packing.py), standing in for teacher output.")
    (prep / "decision.yaml").write_text(yaml.safe_dump(g, sort_keys=False))
    p = plan_tasks(prep / "decision.yaml", dest, data_root=prep / "tokens")
    r = finish(p, show=False)
    final = RESULTS / "ablation_decision"
    shutil.rmtree(final, ignore_errors=True)
    shutil.copytree(Path(r["report"]["report_md"]).parent, final)
    (final / "results.jsonl").write_text("\n".join(lines) + "\n")
    (final / "run_summary.json").write_text(json.dumps({"runs": runs, "planned_runs": runs + len(p["tasks"]), "wall_s": wall,
                                                        "tokens": toks, "runs_per_gpu_hour": round(runs / (wall / 3600), 1),
                                                        "scales": summ}, indent=1))
    print(f"decision report: {final / 'report.md'} ({runs} runs, {len(p['tasks'])} not run)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--prep", type=Path, default=Path("tmp/abl_gpu"))
    r = sub.add_parser("run")
    r.add_argument("scale", choices=["small", "large"])
    r.add_argument("--prep", type=Path, default=Path("tmp/abl_gpu"))
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--anchor-steps", type=int, default=60)
    r.add_argument("--per-gpu", default="auto")
    r.add_argument("--limit-s", type=float, default=540, help="stop the suite after this many seconds in all")
    r.add_argument("--set", action="append", default=[], help="run-config override for every run, e.g. model.preset=tiny")
    b = sub.add_parser("probe", help="GPU host: steady-state tokens/s of 1..N lanes of short runs, compile and eval times")
    b.add_argument("--prep", type=Path, default=Path("tmp/abl_gpu"))
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--lanes", type=int, nargs="+", default=[1, 2, 3, 7])
    b.add_argument("--steps", type=int, default=150)
    b.add_argument("--anchor-steps", type=int, default=40)
    b.add_argument("--set", action="append", default=[], help="run-config override for every run")
    q = sub.add_parser("report")
    q.add_argument("outs", type=Path, nargs="+")
    q.add_argument("--prep", type=Path, default=Path("tmp/abl_gpu"))
    q.add_argument("--also", type=Path, action="append", default=[], help="another `run large` round's folder")
    a = ap.parse_args(argv)
    if a.mode == "prepare":
        prepare(a.prep)
    elif a.mode == "probe":
        if a.set:
            _override(a.prep, a.set)
        probe(a.prep, a.out, a.lanes, a.steps, a.anchor_steps)
    elif a.mode == "run":
        run(a.scale, a.prep, a.out, a.anchor_steps, a.per_gpu, a.limit_s, a.set)
    else:
        report(a.outs, a.prep, a.also)


if __name__ == "__main__":
    main()
