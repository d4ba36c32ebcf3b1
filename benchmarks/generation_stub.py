"""What does the factory's generation path cost per request, and does its memory stay flat?

Against a zero-latency OpenAI-compatible stub on loopback (benchmarks/_stub_server.py, its own
process), the teacher is free, so what is measured is the client side alone.

Ours: requests per second of CPU of the process sending them (one worker core), through the
factory's `TeacherClient.complete` (balancer, limits, retries, request keys and seeds). Anchor:
the raw `openai.AsyncOpenAI` client (made as the factory makes it) at the same concurrency with
the same prompts. They alternate in short rounds, so a shared machine's load hits both alike;
ratio = ours / anchor over all rounds; target >= 0.8 (the factory's bookkeeping may cost a
little, not a lot). Then a long memory run of ours (100k requests, or as many as fit in
--max-seconds; the count is printed) samples the process's RSS: start, middle, end and the
slope; flat means no leak. Last, the whole `generate.run` path with one Ray worker (recipe
rendering, documents, request cache, shard files), measured on the worker process (its CPU
and RSS read from /proc).

    python benchmarks/generation_stub.py --requests 100000 --max-seconds 90 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

RECIPE = """name: bench_stub
description: One short paragraph per seed (the stub benchmark workload).
kind: synthetic
sampling: {temperature: 0.0, max_tokens: %d}
steps:
  - name: para
    user: "Write a short paragraph about {{ title }}. Facts: {{ text | words(40) }}"
"""
CLK = os.sysconf("SC_CLK_TCK")


# /proc readers (Linux; no extra dependency) -------------------------------------------------------
def rss_mib(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "cpu")
    except OSError:
        return platform.processor() or "cpu"


def descendants(root: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [root]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def profile(samples: list[tuple[float, float]], skip: float = 0.1) -> dict[str, Any]:
    """RSS at start, middle and end of `samples` [(requests done, MiB)] after a warm-up fraction,
    and the least-squares slope in MiB per 10k requests."""
    s = samples[int(len(samples) * skip):] or samples
    if not s:
        return {}
    n = len(s)
    mx, my = sum(x for x, _ in s) / n, sum(y for _, y in s) / n
    var = sum((x - mx) ** 2 for x, _ in s)
    slope = sum((x - mx) * (y - my) for x, y in s) / var if var else 0.0
    return {"rss_start_mib": round(s[0][1], 1), "rss_mid_mib": round(s[n // 2][1], 1), "rss_end_mib": round(s[-1][1], 1),
            "rss_max_mib": round(max(y for _, y in s), 1), "slope_mib_per_10k_requests": round(slope * 1e4, 3),
            "from_request": int(s[0][0]), "to_request": int(s[-1][0]), "samples": n}


# drivers ----------------------------------------------------------------------------------------
def prompts(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write one sentence about item number {i} of the benchmark set."}]


async def drive(call: Callable[[int], Awaitable[Any]], n: int, concurrency: int, max_s: float, warmup: int = 500,
                sample_every: int = 1000) -> dict[str, Any]:
    """`concurrency` loops calling `call(i)` until n requests or max_s seconds; RSS sampled as it goes."""
    await asyncio.gather(*(call(-1 - i) for i in range(min(warmup, n))))  # pools, connections, allocator
    nxt = 0
    samples: list[tuple[float, float]] = [(0, rss_mib())]
    t0, c0 = time.perf_counter(), time.process_time()
    deadline = t0 + max_s

    async def loop() -> None:
        nonlocal nxt
        while nxt < n and time.perf_counter() < deadline:
            i, nxt = nxt, nxt + 1
            await call(i)
            if i % sample_every == 0:
                samples.append((i, rss_mib()))

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    samples.append((nxt, rss_mib()))
    return {"requests": nxt, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "req_s": round(nxt / wall, 1),
            "req_per_cpu_s": round(nxt / cpu, 1), "memory": profile(samples)}


async def anchor(url: str, model: str, a: argparse.Namespace, n: int, max_s: float) -> dict[str, Any]:
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=60)  # as a user (and ours) makes it

    async def call(i: int) -> None:
        await client.chat.completions.create(model=model, messages=prompts(i), temperature=0.0, max_tokens=a.max_tokens)

    try:
        return await drive(call, n, a.concurrency, max_s)
    finally:
        await client.close()


async def ours_client(url: str, model: str, a: argparse.Namespace, n: int, max_s: float) -> dict[str, Any]:
    from factory.teacher.client import TeacherClient
    from factory.teacher.config import local_config

    tcfg = local_config([url], model, max_in_flight=a.concurrency, sampling={"temperature": 0.0, "max_tokens": a.max_tokens})
    client = TeacherClient(tcfg, cache=None)
    await client.start(probe=True)

    async def call(i: int) -> None:
        await client.complete(prompts(i))

    try:
        res = await drive(call, n, a.concurrency, max_s)
    finally:
        await client.close()
    res["client_accounting"] = {k: v for k, v in client.accounting().items() if k in ("requests", "retries", "errors")}
    return res


class WorkerSampler(threading.Thread):
    """Polls this process's descendant Ray workers running GenWorker: RSS and CPU over time."""

    def __init__(self, every_s: float = 0.25):
        super().__init__(daemon=True)
        self.every_s, self.stop_flag = every_s, threading.Event()
        self.samples: list[tuple[float, int, float, float]] = []  # (t, pid, rss MiB, cpu s) while processing

    def run(self) -> None:
        me = os.getpid()
        while not self.stop_flag.is_set():
            for pid in descendants(me):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmd = f.read()
                    if cmd.startswith(b"ray::GenWorker.process"):
                        self.samples.append((time.perf_counter(), pid, rss_mib(pid), cpu_s(pid)))
                except OSError:
                    pass
            self.stop_flag.wait(self.every_s)


def full_path(url: str, model: str, a: argparse.Namespace) -> dict[str, Any]:
    from factory.core.schema import make_doc
    from factory.generate import GenerateConfig, run
    from factory.teacher.config import local_config

    tmp = Path(tempfile.mkdtemp(prefix="bench-stub-"))
    (tmp / "bench_stub.yaml").write_text(RECIPE % a.max_tokens)
    with open(tmp / "seeds.jsonl", "w") as f:
        for i in range(a.full_seeds):
            f.write(json.dumps(make_doc(f"Item {i} is a topic with a short description, number {i} of the set.", "web", "bench",
                                        seed_id=f"bench:{i}", extra={"title": f"Topic {i}"})) + "\n")
    tcfg = local_config([url], model, max_in_flight=a.concurrency, sampling={"temperature": 0.0})
    cfg = GenerateConfig(seeds=str(tmp / "seeds.jsonl"), recipes=[str(tmp / "bench_stub.yaml")], out=str(tmp / "out"),
                         teacher=tcfg, workers=1, concurrency=a.concurrency, shards=max(1, a.full_seeds // a.shard_size))
    sampler = WorkerSampler()
    sampler.start()
    t0 = time.perf_counter()
    try:
        m = run(cfg, show_progress=False)
    finally:
        sampler.stop_flag.set()
        sampler.join()
        shutil.rmtree(tmp, ignore_errors=True)
    total = time.perf_counter() - t0
    tr = m["this_run"]
    s = sampler.samples
    pids = {p for _, p, _, _ in s}
    out: dict[str, Any] = {"requests": tr["requests"], "docs": tr["docs"], "wall_s": tr["wall_s"], "end_to_end_s": round(total, 3),
                           "req_s": round(tr["requests"] / tr["wall_s"], 1), "shards": cfg.shards, "worker_pids": len(pids)}
    if len(s) >= 2 and len(pids) == 1:
        busy_cpu = s[-1][3] - s[0][3]
        busy_wall = s[-1][0] - s[0][0]
        rate = tr["requests"] / tr["wall_s"]
        out.update(worker_cpu_s=round(busy_cpu, 2), worker_busy_wall_s=round(busy_wall, 2),
                   req_per_cpu_s=round(rate * busy_wall / busy_cpu, 1) if busy_cpu else None,
                   memory=profile([((t - s[0][0]) * rate, r) for t, _, r, _ in s]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=100_000, help="requests of the memory run through TeacherClient")
    ap.add_argument("--max-seconds", type=float, default=90.0, help="end the memory run earlier than --requests after this long")
    ap.add_argument("--rounds", type=int, default=3, help="alternating anchor / ours rounds for the ratio")
    ap.add_argument("--round-requests", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--full-seeds", type=int, default=8000, help="seeds through generate.run with one worker (0: skip)")
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "generation_stub.json"))
    a = ap.parse_args(argv)

    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _stub_server import MODEL, StubServer

    load0 = os.getloadavg()
    with StubServer(completion_tokens=a.max_tokens) as stub:
        rounds = []  # anchor and ours alternate, so the load of a shared machine hits both alike
        for r in range(a.rounds):
            anc = asyncio.run(anchor(stub.url, MODEL, a, a.round_requests, 60))
            our = asyncio.run(ours_client(stub.url, MODEL, a, a.round_requests, 60))
            rounds.append({"anchor": anc, "ours": our})
            print(f"round {r + 1}: anchor (raw AsyncOpenAI) {anc['req_per_cpu_s']} / ours (TeacherClient) {our['req_per_cpu_s']} "
                  f"req per CPU-s ({anc['req_s']} / {our['req_s']} req/s wall)", flush=True)
        ours = asyncio.run(ours_client(stub.url, MODEL, a, a.requests, a.max_seconds))
        mem = ours["memory"]
        print(f"ours (TeacherClient), memory run: {ours['requests']} requests in {ours['wall_s']:.0f}s, {ours['req_s']} req/s, "
              f"{ours['req_per_cpu_s']} req per CPU-s; RSS start {mem['rss_start_mib']} / mid {mem['rss_mid_mib']} / end "
              f"{mem['rss_end_mib']} MiB, slope {mem['slope_mib_per_10k_requests']} MiB per 10k requests", flush=True)
        full = full_path(stub.url, MODEL, a) if a.full_seeds else None
        if full:
            fm = full.get("memory") or {}
            print(f"ours (generate.run, 1 worker): {full['requests']} requests, {full['req_s']} req/s wall, "
                  f"{full.get('req_per_cpu_s')} req per worker CPU-s; worker RSS {fm.get('rss_start_mib')} / {fm.get('rss_mid_mib')} / "
                  f"{fm.get('rss_end_mib')} MiB, slope {fm.get('slope_mib_per_10k_requests')} MiB per 10k requests", flush=True)
        served = stub.stats()

    def rate(side: str) -> float:
        return sum(x[side]["requests"] for x in rounds) / sum(x[side]["cpu_s"] for x in rounds)

    anc_rate, ours_rate = rate("anchor"), rate("ours")
    ratio = ours_rate / anc_rate
    result = {"ours": round(ours_rate, 1), "anchor": round(anc_rate, 1), "ratio": round(ratio, 3),
              "unit": "requests per worker-core second (zero-latency stub)", "target": 0.8,
              "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.system()}, {cpu_model()}; "
                         f"stub server in its own process on loopback",
              "date": datetime.date.today().isoformat(),
              "details": {"concurrency": a.concurrency, "max_tokens": a.max_tokens, "rounds": rounds,
                          "round_ratios": [round(x["ours"]["req_per_cpu_s"] / x["anchor"]["req_per_cpu_s"], 3) for x in rounds],
                          "ours_memory_run": ours, "ours_full_path": full,
                          "full_path_ratio": round(full["req_per_cpu_s"] / anc_rate, 3) if full and full.get("req_per_cpu_s") else None,
                          "memory_flat": abs(mem["slope_mib_per_10k_requests"]) < 1.0, "stub": served,
                          "loadavg_before": [round(x, 2) for x in load0], "loadavg_after": [round(x, 2) for x in os.getloadavg()]}}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"generation stub: ours {result['ours']:.0f} / anchor {result['anchor']:.0f} req per core-s = {result['ratio']:.3f} "
          f"(target >= 0.8); TeacherClient memory {'flat' if result['details']['memory_flat'] else 'GROWING'} over "
          f"{ours['requests']} requests (slope {mem['slope_mib_per_10k_requests']} MiB per 10k) -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
