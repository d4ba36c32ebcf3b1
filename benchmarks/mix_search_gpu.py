"""The GPU mix search of mixes/ablations/search_gpu.yaml in two trainer calls, for a GPU host that has
torch but not the factory (no Ray, pydantic or datatrove there).

    python benchmarks/mix_search_gpu.py prepare                      # here: data, proxies' task list
    python benchmarks/mix_search_gpu.py gpu proxies --out DIR        # GPU host (torch only): train, collect
    python benchmarks/mix_search_gpu.py next DIR/proxies.jsonl       # here: import, fit, validation task list
    python benchmarks/mix_search_gpu.py gpu validate --out DIR       # GPU host
    python benchmarks/mix_search_gpu.py report DIR/validate.jsonl    # here: import, report

`prepare` builds the corpus (web: the offline Wikipedia summaries; `synthetic` and `rewrite`:
template-made restatements of them, as in benchmarks/ablation_packing.py, standing in for teacher
output) under tmp/mix_search/, keeps a copy of the committed `train` package beside it (the trainer
the GPU host runs; see `gpu`), and plans the proxies with `factory mix search --plan-only`.
`gpu STEP` runs `python -m train.suite` on that step's task list, every run of it side by side on
the card, and writes to DIR the runs' eval.json records (STEP.jsonl), a summary (machine, wall
time, tokens/s: STEP_summary.json) and the lane logs' tails. `next` and `report` are the same
`factory mix search` call with `--results`; `report` writes benchmarks/results/mix_search/ and
benchmarks/results/mix_search.json.
"""

from __future__ import annotations

RUN_ALL = False  # a driver with modes for a GPU host, not a CPU ratio benchmark

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
SEARCH = Path("mixes/ablations/search_gpu.yaml")
PREP = Path("tmp/mix_search")
RESULTS = REPO / "benchmarks" / "results"


# --------------------------------------------------------------------------- here (factory side)

def prepare(search_file: Path, reuse: bool = False) -> None:
    from benchmarks.ablation_packing import write_corpus
    from factory.ablate.search import search

    if reuse and (PREP / "tokens" / "manifest.json").exists():  # the corpus as it is: a new search over it
        for d in ("out", "train_head"):
            shutil.rmtree(PREP / d, ignore_errors=True)
    else:
        if PREP.exists():
            shutil.rmtree(PREP)
        PREP.mkdir(parents=True)
        write_corpus(PREP)
    head = PREP / "train_head"  # the committed trainer, whatever the working tree holds
    head.mkdir()
    arch = subprocess.run(["git", "archive", "HEAD", "train"], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(head)], input=arch, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    (head / "COMMIT").write_text(commit + "\n")
    rep = search(search_file, validate=True, plan_only=True)
    print(f"{rep['step']}: {rep['to_run']} runs -> {rep['tasks_file']} (trainer of commit {commit[:10]})")


def step(search_file: Path, results: list[Path]) -> dict:
    from factory.ablate.search import search

    rep = search(search_file, validate=True, plan_only=True, results=results)
    print(f"{rep['imported']} runs imported; " + (f"{rep['step']}: {rep['to_run']} runs -> {rep['tasks_file']}"
                                                 if "tasks_file" in rep else "nothing left to train"))
    return rep


def report(search_file: Path, results: list[Path]) -> None:
    from factory.ablate.report import interval
    from factory.ablate.search import search

    rep = search(search_file, validate=True, results=results)
    o, dest = Path(rep["out"] if "out" in rep else PREP / "out"), RESULTS / "mix_search"
    dest.mkdir(parents=True, exist_ok=True)
    for f in ("report.md", "report.json", "fit.png", "scores.jsonl", f"{rep['name']}.yaml"):
        shutil.copy2(o / f, dest / f)
    summaries = {}
    for r in results:
        for f in sorted(Path(r).parent.glob("*_summary.json")):
            summaries[f.stem[:-len("_summary")]] = json.loads(f.read_text())
    (dest / "runs.json").write_text(json.dumps(summaries, indent=1))
    val = rep["validation"]
    runs = [json.loads(x) for x in (o / "validate" / "runs" / "results.jsonl").read_text().splitlines() if x.strip()]
    names = list(val["mixes"])
    benches = ["wiki_mc_bpb", "wiki_mc", "wiki_cloze_mc_bpb", "wiki_cloze_mc", "arith_mc", "loss_web", "loss_synthetic", "loss_rewrite"]
    lines = [f"# Validated mixes ({val['scale']['model']['preset']} preset, {val['scale']['tokens']:,} tokens, "
             f"seeds {val['scale']['seeds']})", "", "Mean ± 95% t-interval over seeds. Target: wiki_mc_bpb (lower is better).", "",
             "| mix | web | synthetic | rewrite | " + " | ".join(benches) + " |", "|---" * (4 + len(benches)) + "|"]
    for i, n in enumerate(names):
        rs = [r for r in runs if int(r["params"]["mix"]) == i]
        cells = []
        for b in benches:
            s = interval([r["scores"][b]["score"] for r in rs if b in r["scores"]])
            cells.append(f"{s['mean']:.3f} ± {s['half']:.3f}" if s["n"] else "")
        sh = val["mixes"][n]["shares"]
        lines.append(f"| {n} | {sh['web']:.3f} | {sh['synthetic']:.3f} | {sh['rewrite']:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "Verdict (lower is better):", ""]
    for n, d in val["versus"].items():
        b = val["mixes"][n]["mean"]
        pair = d.get("paired") or {}
        lines.append(f"- vs {n}: the proposal is {abs(d['difference']):.3f} bits per byte ({abs(d['difference']) / b:.1%}) "
                     f"{'lower (better)' if d['wins'] else 'higher (worse)'}; Welch 95% interval ±{d['half']:.3f} "
                     f"{'excludes' if d['significant'] else 'includes'} 0"
                     + (f", paired by seed ±{pair['half']:.3f} {'excludes' if pair['significant'] else 'includes'} 0" if pair else ""))
    won = all(d["wins"] and (d["significant"] or (d.get("paired") or {}).get("significant")) for d in val["versus"].values())
    lines.append(f"- {'The proposal won against every baseline.' if won else 'The proposal did not win against every baseline.'}")
    lines += ["", "Per seed (wiki_mc_bpb):", ""]
    for i, n in enumerate(names):
        vals = sorted(((r["seed"], r["scores"]["wiki_mc_bpb"]["score"]) for r in runs if int(r["params"]["mix"]) == i))
        lines.append(f"- {n}: " + ", ".join(f"seed {s} {v:.4f}" for s, v in vals))
    lines += ["", f"## Proxies ({rep['proxies']}, one seed each), sorted by the observed target", "",
              f"| mix | web | synthetic | rewrite | wiki_mc_bpb observed | held-out prediction ({rep['chosen']}) |",
              "|---|---|---|---|---|---|"]
    for r in sorted(rep["observed"], key=lambda r: r["score"]):
        sh = r["shares"]
        lines.append(f"| {r['index']} | {sh['web']:.3f} | {sh['synthetic']:.3f} | {sh['rewrite']:.3f} | {r['score']:.4f} | "
                     f"{rep['heldout_pred'][r['index']]:.4f} |")
    (dest / "table.md").write_text("\n".join(lines) + "\n")
    base = {n: val["mixes"][n] for n in names if n != "proposal"}
    best = min(base, key=lambda n: base[n]["mean"])
    machine = (summaries.get("validate") or {}).get("machine", {})
    out = {"ours": round(val["mixes"]["proposal"]["mean"], 4), "anchor": round(base[best]["mean"], 4),
           "ratio": round(val["mixes"]["proposal"]["mean"] / base[best]["mean"], 4),
           "unit": "wiki_mc_bpb (bits per byte of the right answer, lower is better), mean over 3 seeds",
           "target": "the proposal below every hand-written baseline, the 95% interval of the difference excluding 0",
           "anchor_mix": best, "machine": machine.get("card", "unknown"), "date": time.strftime("%Y-%m-%d", time.gmtime()),
           "spread": {n: round(r["half"], 4) for n, r in val["mixes"].items()},
           "versus": val["versus"], "proposal": rep["proposal"], "predicted": rep["predicted"],
           "fit": rep["fit"], "chosen": rep["chosen"], "proxies": rep["proxies"]}
    (RESULTS / "mix_search.json").write_text(json.dumps(out, indent=1) + "\n")
    print((dest / "report.md").read_text())
    print((dest / "table.md").read_text())


# --------------------------------------------------------------------------- GPU host (torch only)

def gpu(name: str, out: Path, per_gpu: str, limit_s: float) -> None:
    import torch

    from benchmarks.ablation_packing import run_suite

    tasks = PREP / "out" / name / "runs" / "tasks.json"
    n = len(json.loads(tasks.read_text())["tasks"])
    out.mkdir(parents=True, exist_ok=True)
    info = {"card": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "gpus": torch.cuda.device_count(),
            "torch": torch.__version__, "cpus": os.cpu_count(),
            "trainer_commit": (PREP / "train_head" / "COMMIT").read_text().strip() if (PREP / "train_head" / "COMMIT").exists() else None}
    print(f"machine: {info}; {n} runs", flush=True)
    lanes = ["--per-gpu", str(n) if per_gpu == "all" else per_gpu] if info["gpus"] else ["--lanes", "2"]
    rc, wall, recs = run_suite(tasks, lanes, limit_s, {**os.environ, "PYTHONUNBUFFERED": "1"})
    (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    tokens = sum(int(r.get("tokens", 0)) for r in recs)
    summ = {"machine": info, "step": name, "date": time.strftime("%Y-%m-%d", time.gmtime()), "rc": rc, "runs": len(recs),
            "planned_runs": n, "tokens": tokens, "wall_s": round(wall, 1), "tokens_per_s": round(tokens / wall, 1),
            "train_s": [r.get("train_s") for r in recs], "eval_s": [r.get("eval_s") for r in recs]}
    (out / f"{name}_summary.json").write_text(json.dumps(summ, indent=1))
    logs = sorted((tasks.parent / "tasks" / "lanes").glob("lane*.log"))
    (out / f"{name}_lanes.log").write_text("".join(f"== {p.name}\n" + "\n".join(p.read_text().splitlines()[-40:]) + "\n" for p in logs))
    print(json.dumps({k: v for k, v in summ.items() if k not in ("train_s", "eval_s")}), flush=True)
    for r in recs:
        print(f"  {r['cell'][:60]} s{r['seed']}: train {r['train_s']}s eval {r['eval_s']}s loss {r['final_loss']:.3f} "
              f"wiki_mc_bpb {r['scores']['wiki_mc_bpb']['score']:.4f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--search", type=Path, default=SEARCH)
    p.add_argument("--reuse", action="store_true", help="keep the corpus already in tmp/mix_search; plan afresh")
    p = sub.add_parser("gpu")
    p.add_argument("step", choices=["proxies", "validate"])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--per-gpu", default="8", help="lanes on the card, or `all` (every run side by side)")
    p.add_argument("--limit-s", type=float, default=540.0)
    for m in ("next", "report"):
        p = sub.add_parser(m)
        p.add_argument("results", type=Path, nargs="+")
        p.add_argument("--search", type=Path, default=SEARCH)
    a = ap.parse_args(argv)
    os.chdir(REPO)  # the search file's data_root and out are relative to the checkout
    if a.mode == "prepare":
        prepare(a.search, a.reuse)
    elif a.mode == "gpu":
        gpu(a.step, a.out, a.per_gpu, a.limit_s)
    elif a.mode == "next":
        step(a.search, a.results)
    else:
        report(a.search, a.results)


if __name__ == "__main__":
    main()
