"""Curation throughput: the whole factory pipeline on Ray against datatrove's LocalPipelineExecutor
alone running the same compiled steps on the same corpus.

ours   = docs/s of `factory.curate.run` with `executor.ray: true` (config, stage folder, all five
         datatrove jobs on RayPipelineExecutor, finalize, report, card); the Ray session is up
         before the clock starts, as on a cluster.
anchor = docs/s of the same five jobs (same steps, same tasks) on LocalPipelineExecutor with as
         many workers as CPUs, plus the decontamination index build, and nothing else.
Target: ours / anchor >= 0.9.

    python benchmarks/curation_vs_datatrove.py [--docs 4000] [--out benchmarks/results/curation_vs_datatrove.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def corpus(tmp: Path, n_docs: int, seed: int = 0, shards: int = 8) -> tuple[str, str, str, int]:
    """A synthetic-looking corpus from the offline Wikipedia summaries: lessons, near and exact
    copies, copies of seeds, a few refusals/truncations, and benchmark items taken from it."""
    from factory.core.schema import make_doc
    from factory.core.stage import StageDir
    from factory.seeds.sources import load_wiki_summaries, wiki_rows

    rng = random.Random(seed)
    recs = [r for r in load_wiki_summaries() if len(r["extract"].split()) >= 40]
    rng.shuffle(recs)
    n_seed = min(max(100, n_docs // 10), len(recs) // 5)
    n_base = min(int(n_docs * 0.8), len(recs) - n_seed)  # past the summaries' count, more rewrites of each
    base, seeds = recs[:n_base], recs[n_base: n_base + n_seed]

    def lesson(r):
        return f"{r['title']}\n\n{r['extract']}\n\nIn short, {r['title']} is {(r['description'] or 'notable').lower()}."

    def doc(text, i, **kw):
        return make_doc(text, "synthetic", "gen", sample=i, seed_id=f"wiki:{i}", recipe=kw.get("recipe", "textbook"),
                        finish_reason=kw.get("finish", "stop"), teacher_model="smollm2", extra={"audience": "kids"})

    def edit(t, rate):
        return " ".join(w for w in t.split() if rng.random() > rate)

    rows = [doc(lesson(r), i) for i, r in enumerate(base)]
    while len(rows) < n_docs:
        i, r = len(rows), rng.choice(base)
        kind = rng.random()
        if kind < 0.5:
            rows.append(doc(edit(lesson(r), 0.1), i, recipe="rewrite"))
        elif kind < 0.7:
            rows.append(doc(lesson(r), i, recipe="distill"))
        elif kind < 0.9:
            s = rng.choice(seeds)
            rows.append(doc(edit(f"{s['title']}\n{s['description']}\n\n{s['extract']}", 0.05), i, recipe="rewrite"))
        else:
            rows.append(doc("Sure! Here is a lesson.\n\n" + lesson(r), i, finish="length" if i % 2 else "stop"))
    rng.shuffle(rows)
    gen = StageDir(str(tmp / "gen"), "generate", {"bench": n_docs})
    for k in range(shards):
        gen.write_docs(f"part-{k:05d}.parquet", rows[k::shards])
    gen.finish()
    ref = StageDir(str(tmp / "seeds"), "seeds", {"bench": n_seed})
    ref.write_docs("part-00000.parquet", wiki_rows(records=seeds))
    ref.finish()
    bench = tmp / "bench.jsonl"
    bench.write_text("".join(json.dumps({"question": " ".join(r["extract"].split()[:20]), "choices": [],
                                         "answer_text": r["title"]}) + "\n" for r in rng.sample(base, min(200, len(base)))))
    return str(tmp / "gen"), str(tmp / "seeds"), str(bench), len(rows)


def config(gen: str, ref: str, bench: str, out: str, ray: bool, tasks: int):
    from factory.curate import load

    cfg = load(None, inputs=[gen], out=out)
    cfg.dedup.reference = [ref]
    cfg.decont.benchmarks = [bench]
    cfg.executor.ray = ray
    cfg.executor.tasks = tasks
    cfg.executor.workers = os.cpu_count() or 1
    return cfg


def anchor(cfg, out: str) -> float:
    """Seconds for datatrove alone: the same jobs, LocalPipelineExecutor, no factory around them."""
    from datatrove.executor.local import LocalPipelineExecutor

    from factory.curate.decont import benchmark_files, build_index
    from factory.curate.io import shard_files
    from factory.curate.pipeline import compile_jobs

    t0 = time.time()
    idx = f"{out}/_work/decont_index"
    build_index(benchmark_files(cfg.decont.benchmarks), idx, cfg.decont.text_fields, cfg.decont.n_grams,
                cfg.decont.min_words)
    jobs = compile_jobs(cfg, [shard_files(u) for u in cfg.inputs], [shard_files(u) for u in cfg.dedup.reference],
                        f"{out}/_work", idx)
    for job in jobs:
        if not job.skip:
            LocalPipelineExecutor(job.steps, tasks=job.tasks, workers=min(cfg.executor.workers, job.tasks),
                                  logging_dir=f"{out}/_work/logs/{job.name}").run()
    return time.time() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=4000)
    ap.add_argument("--tasks", type=int, default=0, help="datatrove tasks per job (default: CPUs)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/curation_vs_datatrove.json"))
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tasks = args.tasks or (os.cpu_count() or 1)
    tmp = Path(tempfile.mkdtemp(prefix="curbench-"))
    try:
        gen, ref, bench, n = corpus(tmp, args.docs)
        # warm the page cache and imports for both sides alike
        from factory.curate import run
        from factory.curate.raysession import init

        t_anchor = anchor(config(gen, ref, bench, str(tmp / "anchor"), False, tasks), str(tmp / "anchor"))
        import ray

        init(num_cpus=os.cpu_count())
        try:
            t0 = time.time()
            m = run(config(gen, ref, bench, str(tmp / "ours"), True, tasks))
            t_ours = time.time() - t0
        finally:
            ray.shutdown()
        ours, anc = n / t_ours, n / t_anchor
        res = {"ours": round(ours, 2), "anchor": round(anc, 2), "ratio": round(ours / anc, 3), "unit": "docs/s",
               "target": 0.9, "docs": n, "tasks": tasks, "kept": m["counts"]["kept"], "dropped": m["dropped"],
               "seconds": {"ours": round(t_ours, 2), "anchor": round(t_anchor, 2)}, "ours_timings": m["timings"],
               "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, {platform.python_version()}",
               "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2))
        print(json.dumps(res, indent=2))
        print(f"curation docs/s: factory on Ray {ours:.1f} / datatrove local {anc:.1f} = {ours / anc:.3f} (target 0.9)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
