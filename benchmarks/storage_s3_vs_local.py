"""Object storage vs local disk: the generate and curate stages with every input, output and the
request cache on an S3-compatible server on loopback (moto's standalone server), against the same
stages on local disk, same corpus, same run.

ours   = docs/s with the stage folders (and, for generate, the request cache) on s3://
anchor = docs/s of the same stage on a local folder
Targets: ours / anchor >= 0.9 for generate and curate, >= 0.85 for curate with its work folder on
the store (`curate_shared_work`).

Generate runs against a zero-latency OpenAI-compatible simulator (benchmarks/_stub_server.py), so
the teacher hides none of the storage cost: every completion goes through the cache (segments of
`cache_flush_every` completions on s3, an append log locally). Curate runs the default pipeline on
a Ray pool, reading its corpus from the same kind of storage it writes to. Ray is up before the
clocks start, as on a cluster. Local and s3 alternate over rounds (the order flips each round) and
the median per side is reported with the spread, so one slow spell on a shared machine cannot
decide the ratio.

Curate on one machine keeps datatrove's intermediates in local scratch (the default there); the
`curate_shared_work` figure puts them on the store too (`executor.work_dir`), as a run over several
nodes must (factory.curate.workfolder: a task's files go up together when it ends).

Before the timed rounds, one run of each stage on the store goes through a counting proxy
(benchmarks/_store_profile.py) in a process of its own: its requests by kind (PUT, GET, HEAD,
LIST, DELETE) and bytes, in total and per 1,000 documents, and what they were for, go to the
JSON's `profile` (the proxy's hop stays out of the timed rounds; `--no-profile` skips it).

    python benchmarks/storage_s3_vs_local.py [--seeds 4000] [--docs 3000] [--rounds 5]
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
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
TARGETS = {"generate": 0.9, "curate": 0.9, "curate_shared_work": 0.85}
RECIPE = """name: bench_stub
description: One short text per seed (the storage benchmark).
kind: synthetic
sampling: {temperature: 0.0, max_tokens: 32}
steps:
  - name: text
    user: "Write about {{ title }}."
"""


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def gen_once(tmp: Path, where: str, seeds: str, url: str, model: str, shards: int) -> float:
    """docs/s of one generate run into `where` (a fresh folder; the cache inside it)."""
    from factory.generate import GenerateConfig, run
    from factory.teacher.config import local_config

    tcfg = local_config([url], model, max_in_flight=64, sampling={"temperature": 0.0})
    cfg = GenerateConfig(seeds=seeds, recipes=[str(tmp / "bench_stub.yaml")], out=where, teacher=tcfg, workers=2,
                         concurrency=32, shards=shards)
    t0 = time.perf_counter()
    m = run(cfg, show_progress=False)
    return m["counts"]["docs"] / (time.perf_counter() - t0)


def cur_once(gen: str, ref: str, bench: str, out: str, work_dir: str | None = None) -> float:
    from curation_vs_datatrove import config

    from factory.curate import run

    cfg = config(gen, ref, bench, out, True, os.cpu_count() or 1)
    cfg.executor.work_dir = work_dir
    t0 = time.perf_counter()
    m = run(cfg)
    return m["counts"]["in"] / (time.perf_counter() - t0)


def summary(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 2), "min": round(min(xs), 2), "max": round(max(xs), 2),
            "runs": [round(x, 2) for x in xs]}


def counted(a: argparse.Namespace) -> dict:
    """Requests and bytes per stage on the store, from one run of each through a counting proxy
    (benchmarks/_store_profile.py), in a process of its own: its hop stays out of the timed rounds."""
    import subprocess

    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([sys.executable, __file__, "--seeds", str(a.seeds), "--shards", str(a.shards), "--docs", str(a.docs),
                        "--profile-only", f.name], check=True)
        prof = json.loads(Path(f.name).read_text())
    for stage, p in prof.items():
        print(f"{stage}: per 1,000 docs {p['per_1000_docs']}", flush=True)
    return prof


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=4000, help="seeds (one request, one document each) per generate run")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--docs", type=int, default=3000, help="documents per curate run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/storage_s3_vs_local.json"))
    ap.add_argument("--no-profile", action="store_true", help="skip the counted run (requests per 1,000 documents)")
    ap.add_argument("--profile-only", metavar="JSON", help=argparse.SUPPRESS)  # the counted run, in a process of its own
    a = ap.parse_args(argv)
    profile = None
    if not a.no_profile and not a.profile_only:
        profile = counted(a)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import fsspec
    import ray
    from _stub_server import MODEL, StubServer
    from curation_vs_datatrove import corpus

    from factory.cluster import init_ray
    from factory.core.schema import make_doc
    from tests.s3server import S3Server

    load0 = round(os.getloadavg()[0], 2)  # a shared machine: how busy it was, beside the figures
    tmp = Path(tempfile.mkdtemp(prefix="storebench-"))
    s3 = S3Server().start()
    proxy = None
    if a.profile_only:  # every request of every process through the counting proxy
        from _store_profile import CountingStore

        proxy = CountingStore(s3.endpoint).start()
        s3.export(proxy.endpoint)
    os.environ["FACTORY_SPOOL_DIR"] = str(tmp / "spool")
    try:
        bucket = s3.bucket("bench")
        s3fs = fsspec.filesystem("s3")
        (tmp / "bench_stub.yaml").write_text(RECIPE)
        seeds = tmp / "seeds.jsonl"
        seeds.write_text("".join(json.dumps(make_doc(f"Item {i} is a topic with a short description, number {i}.", "web",
                                                     "bench", seed_id=f"bench:{i}", extra={"title": f"Topic {i}"})) + "\n"
                                 for i in range(a.seeds)))
        s3fs.put(str(seeds), f"{bucket}/in/seeds.jsonl")
        gen, ref, bench, n = corpus(tmp / "corpus", a.docs)
        s3fs.put(gen, f"{bucket}/in/gen", recursive=True)
        s3fs.put(ref, f"{bucket}/in/seeds", recursive=True)
        s3fs.put(bench, f"{bucket}/in/bench.jsonl")
        init_ray(None, num_cpus=os.cpu_count(), object_store_memory=300 * 1024**2)
        res = {"generate": {"local": [], "s3": []}, "curate": {"local": [], "s3": []},
               "curate_shared_work": {"local": [], "s3": []}}
        if proxy is not None:
            with StubServer(completion_tokens=32) as stub:
                out = {}
                proxy.phase = "generate"
                gen_once(tmp, f"{bucket}/g", f"{bucket}/in/seeds.jsonl", stub.url, MODEL, a.shards)
                out["generate"] = proxy.report("generate", a.seeds)
                s3_in = (f"{bucket}/in/gen", f"{bucket}/in/seeds", f"{bucket}/in/bench.jsonl")
                proxy.phase = "curate"
                cur_once(*s3_in, f"{bucket}/c")
                out["curate"] = proxy.report("curate", n)
                proxy.phase = "curate_shared_work"
                cur_once(*s3_in, f"{bucket}/w", f"{bucket}/w/_work")
                out["curate_shared_work"] = proxy.report("curate_shared_work", n)
            ray.shutdown()
            Path(a.profile_only).write_text(json.dumps(out, indent=1))
            return
        with StubServer(completion_tokens=32) as stub:
            for r in range(a.rounds):
                order = ("local", "s3") if r % 2 == 0 else ("s3", "local")
                for side in order:
                    out = str(tmp / f"g{r}") if side == "local" else f"{bucket}/g{r}"
                    src = str(seeds) if side == "local" else f"{bucket}/in/seeds.jsonl"
                    res["generate"][side].append(gen_once(tmp, out, src, stub.url, MODEL, a.shards))
                for side in order:
                    if side == "local":
                        res["curate"][side].append(cur_once(gen, ref, bench, str(tmp / f"c{r}")))
                        continue
                    s3_in = (f"{bucket}/in/gen", f"{bucket}/in/seeds", f"{bucket}/in/bench.jsonl")
                    res["curate"][side].append(cur_once(*s3_in, f"{bucket}/c{r}"))
                    res["curate_shared_work"][side].append(cur_once(*s3_in, f"{bucket}/w{r}", f"{bucket}/work/w{r}"))
                res["curate_shared_work"]["local"] = res["curate"]["local"]
                print(f"round {r + 1}: generate local {res['generate']['local'][-1]:.1f} / s3 {res['generate']['s3'][-1]:.1f} "
                      f"docs/s; curate local {res['curate']['local'][-1]:.1f} / s3 {res['curate']['s3'][-1]:.1f} "
                      f"(work on the store {res['curate_shared_work']['s3'][-1]:.1f}) docs/s", flush=True)
        ray.shutdown()
        out = {}
        for stage, sides in res.items():
            loc, rem = summary(sides["local"]), summary(sides["s3"])
            per_round = [round(x / y, 3) for x, y in zip(sides["s3"], sides["local"])]
            out[stage] = {"ours": rem["median"], "anchor": loc["median"], "ratio": round(rem["median"] / loc["median"], 3),
                          "target": TARGETS[stage], "ratio_per_round": per_round, "ours_runs": rem, "anchor_runs": loc}
        worst = min(out, key=lambda st: out[st]["ratio"] / TARGETS[st])  # the stage furthest below (or least above) its target
        result = {"ours": out[worst]["ours"], "anchor": out[worst]["anchor"], "ratio": out[worst]["ratio"],
                  "unit": "docs/s (s3 / local)", "target": TARGETS[worst], "stage": worst,
                  "note": "ours/anchor/ratio/target: the stage furthest from its target; every stage in `stages`. "
                          "curate: intermediates in local scratch (one machine); curate_shared_work: on the store, "
                          "as on several nodes",
                  "stages": out, "rounds": a.rounds, "generate_seeds": a.seeds, "curate_docs": n,
                  "profile": profile,
                  "storage": "moto_server (S3-compatible HTTP server) on loopback",
                  "machine": f"{cpu_model()}, {os.cpu_count()} CPUs",
                  "load_avg_1min": {"start": load0, "end": round(os.getloadavg()[0], 2)},
                  "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
        for stage, v in out.items():
            print(f"{stage}: s3 {v['ours']} / local {v['anchor']} docs/s = {v['ratio']} (target {v['target']}; "
                  f"per round {v['ratio_per_round']})")
    finally:
        if proxy is not None:
            proxy.stop()
        s3.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
