"""The factory's generation against datatrove's InferenceRunner, same workload, same concurrency.

Workload: N seeds x one single-step recipe (the saturation benchmark's paragraph recipe), greedy
(temperature 0), the same max_tokens and the same per-request seed, against the same local
llama.cpp replicas (`LocalTeacher`), which check an API key as real endpoints do: both sides send
it (InferenceRunner through its openai client: its raw path for localhost sends no key, so the
replicas listen on 127.0.0.2). Both sides send byte-for-byte the same chat requests: the
payloads for datatrove are built with the factory's own recipe rendering, sampling merge and
request-seed derivation, and the completion tokens of both runs are checked to match.

Ours: completion tokens/s of `factory.generate.run` (Ray workers, cache, limits, recipe) with a
fixed window of `--in-flight` requests per replica (its adaptive window off: exactly the anchor's
concurrency; `--adaptive` runs it with the adaptive window instead). Anchor: datatrove 0.10.1
`InferenceRunner` with `server_type="endpoint"`, one runner (rank) per replica as datatrove
scales out (one server per rank), `max_concurrent_generations` = the same requests in flight per
replica; all ranks run concurrently in one event loop.

Both are timed the same way: from the first contact with the teacher to the last output. The
anchor from its runners' start (their server handshake) to the last rank's end; ours is its probe
(the handshake with every endpoint) plus the time from its first shard's start to its last
shard's end. Neither pays its process start-up: the anchor's is this Python process and its
imports, ours is Ray and its worker processes (the actors' start, `timeline.to_first_shard_s`),
reported beside as `ratio_with_worker_start`, and end to end (`generate.run` whole: Ray's start
and stop, probe, manifest) as `ratio_end_to_end`. Ray's stop is in no figure but the last.
`--rounds K` rounds alternate the anchor and ours (ABAB...), each with a fresh output directory
and cache; the JSON holds the medians, their spread (min..max) and ratio = median(ours) /
median(anchor) (compare_rounds.py); target >= 1.0.

    python benchmarks/generation_vs_inferencerunner.py --replicas 2 --seeds 24 --max-tokens 32
    python benchmarks/generation_vs_inferencerunner.py --seeds 96 --out benchmarks/results/generation_vs_inferencerunner_large.json
    python benchmarks/generation_vs_inferencerunner.py --teacher-cores 0 --out benchmarks/results/generation_vs_inferencerunner_pinned.json
    python benchmarks/generation_vs_inferencerunner.py --workers 1 --seeds 96 --out benchmarks/results/generation_vs_inferencerunner_large_one_worker.json
    python benchmarks/generation_vs_inferencerunner.py --stub-delay 0.2 --rounds 5 --out benchmarks/results/generation_vs_inferencerunner_cpu.json

Each run also records this process's CPU per request (`cpu_ms_per_request`, medians in the
details): the clients' own cost, which on a machine whose CPU is also the teacher slows it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_rounds import alternate, report  # noqa: E402

KEY_ENV = "FACTORY_TEACHER_KEY"  # the local replicas check this key, as real endpoints do: both sides send it
HOST = "127.0.0.2"  # a loopback address datatrove does not treat as localhost (whose raw path sends no key)
from generation_saturation import write_workload  # noqa: E402 - the same workload as the saturation benchmark


def workload(a: argparse.Namespace, tmp: Path, endpoints: list[str], model: str) -> dict[str, Any]:
    """Seeds file, recipe file, teacher config, and the exact chat payload of every request."""
    from factory.recipes import seed_context
    from factory.teacher.client import TeacherClient
    from factory.teacher.config import local_config

    rows, rec = write_workload(tmp, a.seeds, a.max_tokens)
    tcfg = local_config(endpoints, model, api_key_env=None if a.stub_delay is not None else KEY_ENV,
                        max_in_flight=a.in_flight, sampling={"temperature": 0.0},
                        adaptive={"enabled": a.adaptive})
    tc = TeacherClient(tcfg)  # not started: used only for its sampling merge and request seeds
    payloads = []
    for r in rows:
        ctx = seed_context(r)
        msgs = rec.messages(0, {**ctx, **rec.sample_variables(ctx["seed_id"], 0, ctx)})
        samp = tc.sampling_for(rec.step_sampling(rec.spec.steps[0]))
        payloads.append({"messages": msgs, **samp, "seed": tc.request_seed(tc.key(msgs, samp, 0))})
    return {"rows": rows, "tcfg": tcfg, "payloads": payloads, "seeds": str(tmp / "seeds.jsonl"),
            "recipe": str(tmp / "bench_paragraph.yaml")}


@contextlib.contextmanager
def removed(tmp: Path) -> Iterator[Path]:
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cpu_s() -> float:
    """This process's CPU seconds so far, all its threads (the replicas, child processes, are not in it)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def warm_up(endpoints: list[str], model: str, payload: dict[str, Any]) -> None:
    import httpx

    key = {"Authorization": f"Bearer {os.environ[KEY_ENV]}"} if KEY_ENV in os.environ else {}
    for u in endpoints:
        httpx.post(f"{u}/chat/completions", json={**payload, "model": model, "max_tokens": 4}, headers=key,
                   timeout=300).raise_for_status()


def run_ours(a: argparse.Namespace, w: dict[str, Any], out: Path, timed: str = "first_request") -> dict[str, Any]:
    """One run of generate.run; `timed` picks the window of tok_s: "first_request" (from the probe, the
    handshake with the teacher, and the first shard's start to the last shard's end: the Ray worker
    processes' start left out, like the anchor's process start) or "workers_start" (from the
    workers' creation, as Ray Data's actors are timed). Ray's tear-down is in neither."""
    from factory.core.stage import read_docs
    from factory.generate import GenerateConfig, run

    cfg = GenerateConfig(seeds=w["seeds"], recipes=[w["recipe"]], shards=a.shards, teacher=w["tcfg"], out=str(out),
                         workers=a.workers, concurrency=a.concurrency)
    t0, c0 = time.perf_counter(), cpu_s()
    m = run(cfg, show_progress=False)
    total, cpu = time.perf_counter() - t0, cpu_s() - c0
    tr = m["this_run"]
    tl = tr["timeline"]
    windows = {"first_request": tr["probe_s"] + tr["wall_s"] - min(tl["to_first_shard_s"]),
               "workers_start": tr["wall_s"] + tl["workers_started_before_s"]}
    texts = {d["meta"]["seed_id"]: d["text"] for d in read_docs(str(out)).to_pylist()}
    busy: dict[int, float] = {}  # each worker's time inside its shards (the rest: its start and shard hand-offs)
    for f in out.rglob("shard-*.json"):
        st = json.loads(f.read_text())
        busy[st["pid"]] = busy.get(st["pid"], 0.0) + st["wall_s"]
    return {"tok_s": tr["completion_tokens"] / windows[timed], "completion_tokens": tr["completion_tokens"],
            "wall_s": round(windows[timed], 3), "timed": timed, **{f"{k}_s": round(v, 3) for k, v in windows.items()},
            "end_to_end_s": round(total, 3), "requests": tr["requests"],
            "cpu_ms_per_request": round(1000 * cpu / max(1, tr["requests"]), 2), "workers_in_shards_s": sorted(round(b, 2) for b in busy.values()),
            "probe_s": tr["probe_s"], "timeline": tl, "endpoints": tr.get("endpoints"), "texts": texts}


def run_datatrove(a: argparse.Namespace, w: dict[str, Any], endpoints: list[str], model: str, out: Path) -> dict[str, Any]:
    from datatrove.data import Document
    from datatrove.pipeline.inference.run_inference import InferenceConfig, InferenceRunner
    from datatrove.pipeline.writers import JsonlWriter
    from loguru import logger

    logger.disable("datatrove")
    results: dict[str, dict[str, Any]] = {}
    if a.stub_delay is None:
        keyed_readiness()

    async def rollout(doc: Document, generate: Any) -> dict[str, Any]:
        r = await generate(dict(doc.metadata["payload"]))  # datatrove adds `model` to the dict it is given
        res = {"text": r.text, "finish_reason": r.finish_reason, "completion_tokens": int(r.usage.get("completion_tokens") or 0)}
        results[doc.id] = res
        return res

    n = len(endpoints)
    runners, docs = [], []
    for rank, url in enumerate(endpoints):
        # the replicas check a key: InferenceRunner sends one only through its openai client, which it uses for
        # hosts other than localhost / 127.0.0.1 (the replicas listen on 127.0.0.2), with the URL ending in /v1
        keyed = a.stub_delay is None
        cfg = InferenceConfig(server_type="endpoint", model_name_or_path=model,
                              endpoint_url=url if keyed else url.removesuffix("/v1"),
                              api_key=os.environ[KEY_ENV] if keyed else None,
                              max_concurrent_generations=a.in_flight, metric_interval=10**6, request_timeout=600)
        runners.append(InferenceRunner(rollout, cfg, JsonlWriter(str(out / f"rank{rank}"))))
        docs.append([Document(text=row["text"], id=row["meta"]["seed_id"], metadata={"payload": p})
                     for i, (row, p) in enumerate(zip(w["rows"], w["payloads"])) if i % n == rank])

    async def all_ranks() -> None:
        await asyncio.gather(*(r.run_async(d, rank=k) for k, (r, d) in enumerate(zip(runners, docs))))

    t0, c0 = time.perf_counter(), cpu_s()
    asyncio.run(all_ranks())
    wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    toks = sum(r["completion_tokens"] for r in results.values())
    per_rank = [sum(results[d.id]["completion_tokens"] for d in ds if d.id in results) for ds in docs]
    return {"tok_s": toks / wall, "completion_tokens": toks, "wall_s": round(wall, 3), "requests": len(results),
            "cpu_ms_per_request": round(1000 * cpu / max(1, len(results)), 2), "completion_tokens_per_rank": per_rank,
            "texts": {k: v["text"] for k, v in results.items()}}


def keyed_readiness() -> None:
    """datatrove 0.10.1's endpoint readiness check is a GET {endpoint_url}/v1/models without the key: a
    keyed endpoint answers 401 (and a URL ending in /v1, which its openai path needs, 404), so the runner
    waits for a server that never becomes ready. The anchor's check lists the models through its own
    openai client instead, with the key; its requests are untouched."""
    from datatrove.pipeline.inference.servers.endpoint_server import EndpointServer

    async def is_ready(self: Any) -> bool:
        try:
            await self.client.models.list()
            return True
        except Exception:  # noqa: BLE001 - not ready yet, as datatrove's own check says
            return False

    EndpointServer.is_ready = is_ready


def save(result: dict[str, Any], out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")


def machine(a: argparse.Namespace) -> str:
    if a.stub_delay is not None:
        return f"{platform.machine()} {os.cpu_count()} cores, {platform.system()}, {a.replicas} stub replicas answering in {a.stub_delay} s"
    pinned = f", replicas pinned to cores {a.teacher_cores}, clients to the rest" if a.teacher_cores else ""
    return (f"{platform.machine()} {os.cpu_count()} cores, {platform.system()}, CPU llama.cpp SmolLM2-135M Q4_1, "
            f"{a.replicas} replicas x {a.threads} thread{pinned}")


@contextlib.contextmanager
def teacher(a: argparse.Namespace) -> Iterator[Any]:
    """The local replicas; with --teacher-cores they run on those cores and this process (both clients,
    Ray and its workers, which inherit it) on the others, as a fleet on its own machines would: the
    clients' CPU then no longer slows the teacher, and only how they keep it busy is measured.
    With --stub-delay, stub replicas that answer after that many seconds instead (the clients' own
    CPU a request is then the measure)."""
    from factory.teacher.server import LocalTeacher

    if a.stub_delay is not None:
        from _stub_server import MODEL, StubServer

        with contextlib.ExitStack() as stack:
            stubs = [stack.enter_context(StubServer(completion_tokens=a.max_tokens, delay_s=a.stub_delay))
                     for _ in range(a.replicas)]
            yield argparse.Namespace(endpoints=[st.url for st in stubs], model=MODEL)
        return
    every = os.sched_getaffinity(0)
    cores = {int(c) for c in a.teacher_cores.split(",")} if a.teacher_cores else set()
    if cores and not (cores < every):
        raise SystemExit(f"--teacher-cores {a.teacher_cores}: name some, not all, of the cores {sorted(every)}")
    if cores:
        os.sched_setaffinity(0, cores)  # the replicas' processes inherit it
    try:
        with LocalTeacher(replicas=a.replicas, threads=a.threads, host=HOST) as t:
            if cores:
                os.sched_setaffinity(0, every - cores)
            yield t
    finally:
        os.sched_setaffinity(0, every)


def common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--workers", type=int, default=-1, help="factory workers (default -1, the stage's: on one machine with a "
                    "few replicas, the driver's event loop without Ray; N: N Ray actors)")
    ap.add_argument("--concurrency", type=int, default=8, help="factory items in flight per worker")
    ap.add_argument("--shards", type=int, default=8, help="factory shards (the stage's default: more than workers, so a "
                    "worker that starts late or draws slower items takes fewer)")
    ap.add_argument("--in-flight", type=int, default=2, help="requests in flight per replica, both sides")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of anchor then ours (ABAB...)")
    ap.add_argument("--teacher-cores", default="", help="comma-separated cores for the replicas alone (the clients get the "
                    "others), e.g. 0: a fleet apart from the clients")
    ap.add_argument("--stub-delay", type=float, default=None, help="seconds: stub replicas answering after that long "
                    "instead of llama.cpp: the clients' own CPU a request is the measure (here the headline: the anchor's over ours)")
    ap.add_argument("--adaptive", action="store_true", help="ours with its adaptive window starting at --in-flight "
                    "(default: fixed at --in-flight per replica, exactly the anchor's concurrency)")


def settings(a: argparse.Namespace) -> dict[str, Any]:
    """The workload and concurrency both comparisons record."""
    return {"seeds": a.seeds, "max_tokens": a.max_tokens, "in_flight_per_replica": a.in_flight, "workers": a.workers, "shards": a.shards,
            "concurrency": a.concurrency, "teacher_cores": a.teacher_cores or "shared with the clients",
            **({"stub_delay_s": a.stub_delay} if a.stub_delay is not None else {}),
            "ours_window": f"adaptive from {a.in_flight} per replica" if a.adaptive else f"fixed {a.in_flight} per replica (adaptive off)"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    common_args(ap)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "generation_vs_inferencerunner.json"))
    a = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-dt-"))
    load0 = os.getloadavg()
    with teacher(a) as t, removed(tmp):
        w = workload(a, tmp, t.endpoints, t.model)
        warm_up(t.endpoints, t.model, w["payloads"][0])
        runs = alternate(a.rounds, lambda k: run_datatrove(a, w, t.endpoints, t.model, tmp / f"dt{k}"),
                         lambda k: run_ours(a, w, tmp / f"ours{k}"))
    result = report("InferenceRunner", machine(a), a.out, runs, anchor_name="datatrove 0.10.1 InferenceRunner (server_type=endpoint, "
                    "one rank per replica)", **settings(a), loadavg_before=[round(x, 2) for x in load0])
    if a.stub_delay is not None:  # the headline is the clients' CPU a request; tokens/s stay in the details
        cpu = result["details"]["cpu_ms_per_request"]
        result["details"]["tok_s"] = {k: result.pop(k) for k in ("ours", "anchor", "ratio", "unit")}
        result = {"ours": cpu["ours"], "anchor": cpu["anchor"], "ratio": round(cpu["anchor"] / cpu["ours"], 3),
                  "unit": "client CPU ms a request (this process, whole call; ratio: the anchor's over ours)", **result}
        save(result, a.out)
        print(f"client CPU a request: ours {cpu['ours']} ms / anchor {cpu['anchor']} ms -> ratio {result['ratio']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
