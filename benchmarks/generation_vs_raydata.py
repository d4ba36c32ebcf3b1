"""The factory's generation against Ray Data LLM's HTTP request processor, same workload, same concurrency.

Workload and replicas as in generation_vs_inferencerunner.py (same seeds, recipe, greedy
sampling, max_tokens and per-request seeds; byte-identical chat payloads, checked by comparing
the completions). Both sides run on the same local Ray instance, started once.

Ours: completion tokens/s of `factory.generate.run` (Ray actors, cache, limits, recipe).
Anchor: Ray 2.60's `ray.data.llm.HttpRequestProcessorConfig` + `build_processor`, one processor
per replica (its `url` is a single endpoint), their datasets unioned into one execution. The
processor's stage sends the rows of a batch one after another, so its concurrency is the number
of batches in flight: `batch_size=1` (also the best balance over actors), a fixed pool of
`--in-flight` actors per replica, and Ray Data's async-UDF concurrency per actor set to 1:
exactly `--in-flight` requests per replica, as ours (a fixed window; `--adaptive`: ours adaptive).
Both are timed from their actors' start, Ray itself being up, to the last output; neither pays
Ray's stop. `--rounds K` rounds alternate the anchor and ours (ABAB...); the JSON holds
the medians, their spread and ratio = median(ours) / median(anchor) (compare_rounds.py); target >= 1.0.

If Ray Data LLM cannot run here, the script says why and writes the JSON with ratio null.

    python benchmarks/generation_vs_raydata.py --replicas 2 --seeds 24 --max-tokens 32
    python benchmarks/generation_vs_raydata.py --seeds 96 --out benchmarks/results/generation_vs_raydata_large.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# one batch at a time per actor (read when ray.data plans the stage): actors = requests in flight
os.environ.setdefault("RAY_DATA_DEFAULT_ASYNC_BATCH_UDF_MAX_CONCURRENCY", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_rounds import alternate, report  # noqa: E402
from generation_vs_inferencerunner import (  # noqa: E402
    common_args,
    machine,
    removed,
    run_ours,
    save,
    settings,
    teacher,
    warm_up,
    workload,
)


def raydata_available() -> str | None:
    """None when Ray Data LLM's HTTP processor can be built here, else the reason it cannot."""
    try:
        from ray.data.llm import HttpRequestProcessorConfig, build_processor  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure is the answer
        return f"ray.data.llm does not import: {type(e).__name__}: {e}"
    return None


def run_raydata(a: argparse.Namespace, w: dict[str, Any], endpoints: list[str], model: str) -> dict[str, Any]:
    import ray.data
    from ray.data._internal.planner import plan_udf_map_op
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    # the env var above only counts if ray.data was not imported before (run_all runs many scripts)
    plan_udf_map_op.DEFAULT_ASYNC_BATCH_UDF_MAX_CONCURRENCY = 1

    # defined here so cloudpickle ships them by value (this file is not importable on Ray workers)
    def pre(row: dict[str, Any]) -> dict[str, Any]:
        return {"seed_id": row["seed_id"], "payload": json.loads(row["payload"])}

    def post(row: dict[str, Any]) -> dict[str, Any]:
        resp = row["http_response"]
        return {"seed_id": row["seed_id"], "text": resp["choices"][0]["message"]["content"] or "",
                "completion_tokens": int(resp["usage"]["completion_tokens"])}

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    n = len(endpoints)
    parts = []
    for rank, url in enumerate(endpoints):
        items = [{"seed_id": row["meta"]["seed_id"], "payload": json.dumps({**p, "model": model})}
                 for i, (row, p) in enumerate(zip(w["rows"], w["payloads"])) if i % n == rank]
        cfg = HttpRequestProcessorConfig(url=f"{url}/chat/completions", batch_size=a.batch_size, concurrency=(a.in_flight, a.in_flight),
                                         http_request_stage={"num_cpus": a.actor_cpus})
        light = {"num_cpus": a.actor_cpus}
        proc = build_processor(cfg, preprocess=pre, postprocess=post, preprocess_map_kwargs=light, postprocess_map_kwargs=light)
        parts.append(proc(ray.data.from_items(items, override_num_blocks=len(items))))
    ds = parts[0].union(*parts[1:]) if n > 1 else parts[0]
    t0 = time.perf_counter()
    rows = ds.take_all()
    wall = time.perf_counter() - t0
    toks = sum(r["completion_tokens"] for r in rows)
    return {"tok_s": toks / wall, "completion_tokens": toks, "wall_s": round(wall, 3), "requests": len(rows),
            "texts": {r["seed_id"]: r["text"] for r in rows}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    common_args(ap)
    ap.add_argument("--actor-cpus", type=float, default=0.25, help="CPUs reserved per Ray Data HTTP actor (ours: worker_cpus 0.25)")
    ap.add_argument("--batch-size", type=int, default=1, help="rows per Ray Data batch (sent one after another; 1 balances best)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "generation_vs_raydata.json"))
    a = ap.parse_args(argv)
    load0 = os.getloadavg()

    why = raydata_available()
    if why:
        print(f"generation vs Ray Data LLM: cannot run the anchor: {why}")
        save({"ours": None, "anchor": None, "ratio": None, "unit": "completion tokens/s", "target": 1.0,
              "machine": machine(a), "date": datetime.date.today().isoformat(), "details": {"unavailable": why}}, a.out)
        return 0

    import ray

    from factory.cluster import init_ray

    tmp = Path(tempfile.mkdtemp(prefix="bench-raydata-"))
    with teacher(a) as t, removed(tmp):  # the teacher first: with --teacher-cores, Ray starts on the clients' cores
        init_ray(None, num_cpus=os.cpu_count() or 2, object_store_memory=200 * 1024**2)  # as generate.run starts it
        try:
            w = workload(a, tmp, t.endpoints, t.model)
            warm_up(t.endpoints, t.model, w["payloads"][0])
            runs = alternate(a.rounds, lambda k: run_raydata(a, w, t.endpoints, t.model),
                             lambda k: run_ours(a, w, tmp / f"ours{k}", timed="workers_start"))
        finally:
            ray.shutdown()
    report("Ray Data LLM", machine(a), a.out, runs, anchor_name=f"Ray {ray.__version__} ray.data.llm HttpRequestProcessorConfig + "
           "build_processor, one processor per replica, unioned", **settings(a), actor_cpus=a.actor_cpus, batch_size=a.batch_size,
           loadavg_before=[round(x, 2) for x in load0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
