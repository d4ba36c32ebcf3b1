"""Curation scaling: the factory's curation on Ray with 1, 2, 4, ... workers (weak scaling).

Each point gets `--per-worker` documents per worker (same recipe of lessons, near and exact copies,
seed copies, refusals and benchmark leaks as curation_vs_datatrove.py), a fresh local Ray session
limited to that many CPUs, and `executor.tasks = workers`. The clock covers `factory.curate.run`
(all five datatrove jobs, finalize, report, card), not Ray's start. `--repeats` runs that many
rounds over all the points (so a slow spell of a shared host hits each point) and each point's
median counts; results are saved after every round.

ours     = docs/s at W workers
anchor   = W x docs/s at 1 worker (perfect scaling)
ratio    = scaling efficiency; target >= 0.8 at 16 workers.
Beside it, datatrove's LocalPipelineExecutor alone runs the smallest and the largest point with
the same steps (its efficiency is the plain tool's on this host), and ours / it at the largest
point compares the two. `host_ceiling` runs W plain processes of fixed
stdlib work at once (no Ray, no datatrove): the efficiency the host itself gives CPU-bound Python.

    python benchmarks/curation_scaling.py [--workers 1,2,4,8,16] [--per-worker 2000] [--repeats 3] [--corpus DIR]
    python benchmarks/curation_scaling.py --corpus DIR --build-only   # corpora for a host without the wiki package

The host that runs the points needs ray, datatrove, spacy and pydantic (not the teacher or the
corpus extras): copy DIR there and pass it with --corpus.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from curation_vs_datatrove import anchor, config, corpus  # noqa: E402


def cores() -> str:
    """Physical cores and threads per core, from /proc/cpuinfo (hyperthreads cap CPU-bound scaling)."""
    try:
        blocks = Path("/proc/cpuinfo").read_text().strip().split("\n\n")
    except OSError:
        return "topology unknown"
    ids = set()
    for b in blocks:
        f = dict((k.strip(), v.strip()) for k, v in (line.split(":", 1) for line in b.splitlines() if ":" in line))
        ids.add((f.get("physical id"), f.get("core id")))
    return f"{len(ids)} physical cores, {len(blocks) / max(1, len(ids)):.0f} threads per core"


def _busy(text: str, rounds: int) -> float:
    """Single-process CPU work shaped like curation (split, regex, hash over text); its seconds."""
    import hashlib
    import re

    t0 = time.perf_counter()
    for i in range(rounds):
        words = re.findall(r"\w+", text)
        hashlib.blake2b(" ".join(sorted(set(words[i % 7:]))).encode()).digest()
    return time.perf_counter() - t0


def host_ceiling(workers: list[int], rounds: int = 4000) -> dict[str, float]:
    """What the host allows: W processes doing the same fixed work at once, no Ray, no datatrove.
    Efficiency = seconds alone / mean seconds with W at once (frequency, shared caches, vCPUs)."""
    from concurrent.futures import ProcessPoolExecutor

    text = " ".join(f"word{i % 97} token{i % 13}" for i in range(2000))
    alone = None
    out = {}
    for w in workers:
        with ProcessPoolExecutor(w) as ex:
            list(ex.map(_busy, [text] * w, [10] * w))  # start the processes first
            secs = statistics.mean(ex.map(_busy, [text] * w, [rounds] * w))
        alone = alone or secs
        out[str(w)] = round(alone / secs, 3)
    return out


def ensure_corpus(root: Path, name: str, n_docs: int, shards: int) -> tuple[str, str, str, int]:
    """One corpus, built once under root/name (reused when its marker says the same size)."""
    d = root / name
    marker = d / "corpus.json"
    if marker.exists() and json.loads(marker.read_text())["docs"] == n_docs:
        return str(d / "gen"), str(d / "seeds"), str(d / "bench.jsonl"), n_docs
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    gen, ref, bench, n = corpus(d, n_docs, shards=shards)
    marker.write_text(json.dumps({"docs": n}))
    return gen, ref, bench, n


def curate_on_ray(paths: tuple[str, str, str, int], out: Path, workers: int) -> tuple[float, dict]:
    import ray

    from factory.curate import run
    from factory.curate.raysession import init

    gen, ref, bench, _ = paths
    cfg = config(gen, ref, bench, str(out), True, workers)
    cfg.executor.workers = workers
    init(num_cpus=workers)
    try:
        t0 = time.time()
        m = run(cfg)
        return time.time() - t0, m
    finally:
        ray.shutdown()


def points(ws: list[int], runs: dict[int, list[float]], corpora: dict, last: dict[int, dict]) -> dict:
    """Median seconds per point, docs/s and efficiency against the first point."""
    rows = []
    for w in ws:
        secs, n = statistics.median(runs[w]), corpora[w][3]
        rows.append({"workers": w, "docs": n, "seconds": round(secs, 2), "runs_s": runs[w], "docs_per_s": round(n / secs, 2),
                     "kept": last[w]["counts"]["kept"], "timings": last[w]["timings"]})
    base = rows[0]["docs_per_s"] / rows[0]["workers"]
    for r in rows:
        r["efficiency"] = round(r["docs_per_s"] / (r["workers"] * base), 3)
    return {"points": rows, "efficiency": rows[-1]["efficiency"], "workers_max": rows[-1]["workers"]}


def save(res: dict, out: str) -> None:
    res["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(res, indent=2))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    cpus = os.cpu_count() or 1
    ap.add_argument("--workers", default=",".join(str(1 << k) for k in range(5) if 1 << k <= min(16, cpus)))
    ap.add_argument("--per-worker", type=int, default=2000, help="documents per worker (past about 600 at 16 workers the distinct summaries run out: rewrites of them fill the rest)")
    ap.add_argument("--corpus", default="", help="folder of prebuilt corpora (built there if missing)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds over all points; each point's median counts")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--no-anchor", action="store_true", help="skip datatrove local at the two ends")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/curation_scaling.json"))
    ap.add_argument("--host-only", action="store_true", help="only the host's own ceiling (stdlib, no corpus)")
    args = ap.parse_args(argv)
    if args.host_only:
        print(json.dumps({"host_ceiling": host_ceiling(sorted({int(w) for w in args.workers.split(",")}))}))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ws = sorted({int(w) for w in args.workers.split(",")})
    tmp = Path(tempfile.mkdtemp(prefix="curscale-"))
    root = Path(args.corpus) if args.corpus else tmp / "corpus"
    try:
        corpora = {w: ensure_corpus(root, f"w{w}", args.per_worker * w, max(8, w)) for w in ws}
        warm = ensure_corpus(root, "warmup", 200, 8)
        if args.build_only:
            print(f"corpora for workers {ws} under {root}")
            return 0
        curate_on_ray(warm, tmp / "warmup", 1)  # page cache and first imports, untimed
        last: dict[int, dict] = {}
        runs: dict[int, list[float]] = {w: [] for w in ws}
        res: dict = {"unit": "docs/s", "mode": "weak scaling", "per_worker": args.per_worker, "target": 0.8}
        for i in range(max(1, args.repeats)):  # rounds over all points: a slow spell of the host hits every point
            for w in ws:
                t, m = curate_on_ray(corpora[w], tmp / f"ours-{w}-{i}", w)
                runs[w].append(round(t, 2))
                last[w] = m
                print(f"round {i + 1}, workers {w:>2}: {corpora[w][3]} docs in {t:.1f} s", flush=True)
            res.update(points(ws, runs, corpora, last))
            save(res, args.out)  # after each round: a run cut short still leaves its numbers
        res["host_ceiling"] = host_ceiling(ws)  # same host, same moment: what plain processes get
        import torch

        from train.metrics import device_name

        res["machine"] = f"{platform.node()} {device_name(torch.device('cpu'))}, {cpus} CPUs ({cores()}), Python {platform.python_version()}"
        save(res, args.out)
        if not args.no_anchor:  # datatrove alone, same steps and corpora, at the ends of the range
            local = {}
            for w in (ws[0], ws[-1]):
                cfg = config(*corpora[w][:3], str(tmp / f"anchor-{w}"), False, w)
                cfg.executor.workers = w
                secs = anchor(cfg, str(tmp / f"anchor-{w}"))
                local[w] = corpora[w][3] / secs
                print(f"datatrove local, workers {w:>2}: {corpora[w][3]} docs in {secs:.1f} s = {local[w]:.1f} docs/s", flush=True)
            eff = local[ws[-1]] / (ws[-1] / ws[0] * local[ws[0]])
            res["datatrove_local"] = {"docs_per_s": {str(w): round(v, 2) for w, v in local.items()}, "efficiency": round(eff, 3),
                                      "ours_over_it_at_max": round(res["points"][-1]["docs_per_s"] / local[ws[-1]], 3)}
            save(res, args.out)
        rows = res["points"]
        print(f"{'workers':>7} {'docs':>6} {'s':>7} {'docs/s':>8} {'efficiency':>10}")
        for r in rows:
            print(f"{r['workers']:>7} {r['docs']:>6} {r['seconds']:>7.1f} {r['docs_per_s']:>8.1f} {r['efficiency']:>10.3f}")
        if "datatrove_local" in res:
            a = res["datatrove_local"]
            print(f"datatrove LocalPipelineExecutor alone, {ws[0]} -> {ws[-1]} workers: efficiency {a['efficiency']:.3f}; "
                  f"factory on Ray / it at {ws[-1]}: {a['ours_over_it_at_max']:.3f}")
        print(f"host ceiling (plain processes, stdlib work) at {ws[-1]}: {res['host_ceiling'][str(ws[-1])]:.3f}")
        print(f"curation scaling efficiency 1 -> {ws[-1]} workers: {res['efficiency']:.3f} (target 0.8)")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
