"""Orchestration cost at scale: the generate stage against 32 simulated replicas (the fleet
simulator at a fast token rate behind its fast HTTP layer, so the teacher costs next to
nothing), several Ray workers.

The stage runs in a child process; this one samples, every few seconds, the RSS and CPU of the
driver and of each Ray worker running GenWorker, and the requests the fleet has served. At half
the requests the child is killed (SIGKILL, with its Ray) and the same command is run again: the
resume time (start to the first new request, and to the end), the requests paid twice, the
cache and manifest sizes are recorded. Anchor: a plain `openai.AsyncOpenAI` loop on the same
fleet (one process, the same prompts and concurrency), before and after ours, with the client's
default transport and (`anchor_aiohttp`) with openai's aiohttp one, which the factory uses.
ratio = ours' requests per CPU-second (driver + workers) once requests flow / the anchor's
(target >= 1.0): the CPU before the first request (Ray, imports, the endpoint probes) is a
start-up cost, paid once however many requests follow; `whole_run_*` keys count it too. The
marginal cost per request is read from the CPU samples between 10% of a run and its end.
Both sides keep the same requests in flight: the anchor's `--concurrency`, split over the
workers as the stage's `concurrency` (`--uncapped` leaves the stage's adaptive windows alone).

`over_the_run` gives the CPU-s per request and the peak RSS over five equal spans of each run.
`--no-kill` runs the stage once, uninterrupted (a point of the flatness curve: CPU-s per
request and peak RSS at that size); `--sizes FILE...` puts such runs' figures into this run's
JSON under `per_size` (`--merge-sizes` adds them to an existing JSON). `--lock FILE` takes an
exclusive flock on FILE for each part (anchors and the first run; the resume; the anchors
again), not across the pauses between them, so a long run never holds a shared machine's
benchmark lock for long.

    python benchmarks/generation_scale.py --requests 1000000 --lock /tmp/bench.lock --sizes results/generation_scale_30k.json
    python benchmarks/generation_scale.py --requests 30000 --no-kill --out results/generation_scale_30k.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import fcntl
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from fleet_simulator import MODEL, FleetSimulator  # noqa: E402
from generation_stub import RECIPE, cpu_model, cpu_s, descendants, rss_mib  # noqa: E402


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def served(fleet: FleetSimulator) -> int:
    for attempt in range(5):  # a simulator busy with a full fleet may answer late: ask again
        try:
            return sum(s.get("served", 0) for s in fleet.stats())
        except Exception:  # noqa: BLE001 - httpx timeouts and resets
            if attempt == 4:
                raise
            time.sleep(2)
    return 0


def child(cfg_json: str) -> int:
    from factory.generate import GenerateConfig, run

    m = run(GenerateConfig.model_validate_json(Path(cfg_json).read_text()), show_progress=False)
    print("RESULT " + json.dumps({"this_run": {k: v for k, v in m["this_run"].items() if k != "shards_run"},
                                  "counts": m["counts"]}), flush=True)
    return 0


def sample(driver: int) -> dict[str, Any]:
    workers = []
    for pid in descendants(driver):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().startswith(b"ray::GenWorker"):
                    workers.append(pid)
        except OSError:
            pass
    out = {"t": time.perf_counter(), "driver_rss_mib": rss_mib(driver), "driver_cpu_s": cpu_s(driver), "workers": {}}
    for pid in workers:
        try:
            out["workers"][pid] = (rss_mib(pid), cpu_s(pid))
        except OSError:
            pass
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the stage's child and everything below it (its local Ray)."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def run_stage(cfg_path: Path, fleet: FleetSimulator, kill_at: int | None, every_s: float) -> dict[str, Any]:
    """Run the stage in a child; kill it (and its Ray) once the fleet has served `kill_at` more requests."""
    base, sim_cpu0 = served(fleet), cpu_s(fleet.proc.pid)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(cfg_path)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    samples, first_request, result = [], None, None
    last_cpu: dict[int, float] = {}
    try:
        while proc.poll() is None:
            time.sleep(every_s)
            try:
                s = sample(proc.pid)
            except OSError:
                break
            n = served(fleet) - base
            s["requests"] = n
            samples.append(s)
            for pid, (_, c) in s["workers"].items():
                last_cpu[pid] = c
            s["cpu_s"] = s["driver_cpu_s"] + sum(last_cpu.values())
            if first_request is None and n > 0:
                first_request = time.perf_counter() - t0
            if kill_at is not None and n >= kill_at:
                kill_tree(proc)
                break
    except BaseException:  # this process failing must not leave the stage and its Ray running
        kill_tree(proc)
        raise
    out_text = proc.stdout.read() if proc.stdout else ""
    for line in out_text.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[7:])
    wall = time.perf_counter() - t0
    n = served(fleet) - base
    sim_cpu = cpu_s(fleet.proc.pid) - sim_cpu0
    cpu = (samples[-1]["driver_cpu_s"] if samples else 0.0) + sum(last_cpu.values())
    busy = [x for x in samples if x["requests"] > 0]  # start-up (Ray, imports, probes) left out: the cost per request
    start_cpu = busy[0]["cpu_s"] if busy else cpu
    busy = busy[len(busy) // 10:]
    steady = ((busy[-1]["cpu_s"] - busy[0]["cpu_s"]) / (busy[-1]["requests"] - busy[0]["requests"])
              if len(busy) >= 2 and busy[-1]["requests"] > busy[0]["requests"] else None)
    return {"requests_served": n, "wall_s": round(wall, 2), "first_request_s": round(first_request or 0, 2),
            "killed": kill_at is not None, "cpu_s_driver_plus_workers": round(cpu, 2),
            "cpu_s_per_request": round(cpu / n, 6) if n else None,
            "steady_cpu_s_per_request": round(steady, 6) if steady else None,
            "cpu_s_before_first_request": round(start_cpu, 2), "req_per_cpu_s": round(n / cpu, 1) if cpu else None,
            "driver_cpu_s": round(samples[-1]["driver_cpu_s"], 2) if samples else 0.0,
            "simulator_cpu_s_per_request": round(sim_cpu / n, 6) if n else None,
            "driver_cpu_s_per_request": round(samples[-1]["driver_cpu_s"] / n, 6) if samples and n else None,
            "req_per_s": round(n / wall, 1), "result": result,
            "rss_over_time": [{"t_s": round(s["t"] - t0, 1), "requests": s["requests"], "driver_mib": round(s["driver_rss_mib"], 1),
                               "workers_mib": [round(r, 1) for r, _ in s["workers"].values()], "cpu_s": round(s["cpu_s"], 2)}
                              for s in samples]}


async def anchor(urls: list[str], n: int, concurrency: int, max_tokens: int, aiohttp: bool = False) -> dict[str, Any]:
    """A plain loop of `openai.AsyncOpenAI` calls as its docs show them (default transport, or its
    aiohttp one with a pool as large as the concurrency: the transport the factory uses)."""
    import openai

    def http() -> Any:
        if not aiohttp:
            return None
        from factory.teacher.http import _httpx

        lim = _httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        return openai.DefaultAioHttpClient(timeout=60, limits=lim)

    clients = [openai.AsyncOpenAI(base_url=u, api_key="none", max_retries=0, timeout=60, http_client=http()) for u in urls]
    nxt = 0

    async def loop() -> None:
        nonlocal nxt
        while nxt < n:
            i, nxt = nxt, nxt + 1
            await clients[i % len(clients)].chat.completions.create(
                model=MODEL, temperature=0.0, max_tokens=max_tokens,
                messages=[{"role": "user", "content": f"Write a short paragraph about Topic {i}. Facts: Item {i} is a topic."}])

    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    for c in clients:
        await c.close()
    return {"requests": n, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "req_per_cpu_s": round(n / cpu, 1),
            "req_per_s": round(n / wall, 1)}


@contextlib.contextmanager
def locked(path: str | None):
    """An exclusive flock on `path` (the flock(1) command's kind) while the block runs."""
    if not path:
        yield
        return
    with open(path, "a") as fh:
        t0 = time.perf_counter()
        fcntl.flock(fh, fcntl.LOCK_EX)
        print(f"lock {path} after {time.perf_counter() - t0:.0f} s", flush=True)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def size_point(path: str) -> dict[str, Any]:
    """The flatness figures of one uninterrupted run's JSON."""
    d = json.loads(Path(path).read_text())
    run = d["runs"]["run"]
    peak = [max(r["workers_mib"] or [0]) for r in run["rss_over_time"]]
    return {"requests": d["requests"], "shards": d["shards"], "workers": d["workers"],
            "steady_cpu_s_per_request": run["steady_cpu_s_per_request"], "cpu_s_per_request": run["cpu_s_per_request"],
            "driver_cpu_s_per_request": run.get("driver_cpu_s_per_request"), "ratio": d["ratio"],
            "worker_rss_peak_mib": max(peak or [0]), "driver_rss_peak_mib": max(r["driver_mib"] for r in run["rss_over_time"]),
            "worker_rss_growth_mib_per_100k_requests": d["worker_rss_max_of_workers"].get("growth_mib_per_100k_requests"),
            "cache_bytes_per_request": round(d["cache_bytes"] / d["requests"], 1), "file": Path(path).name}


def segments(run: dict[str, Any], parts: int = 5) -> list[dict[str, Any]]:
    """CPU-s per request (driver + workers) and peak worker RSS over `parts` equal spans of a run's
    requests once they flow: flat means the cost does not grow as the run goes on."""
    rows = [r for r in run["rss_over_time"] if r["requests"] > 0]
    if len(rows) < 2:
        return []
    n0, n1 = rows[0]["requests"], rows[-1]["requests"]
    out, start = [], rows[0]
    for i in range(1, parts + 1):
        goal = n0 + (n1 - n0) * i / parts
        end = next(r for r in rows if r["requests"] >= goal)
        if end["requests"] > start["requests"]:
            span = [r for r in rows if start["requests"] <= r["requests"] <= end["requests"]]
            out.append({"requests_from": start["requests"], "requests_to": end["requests"],
                        "cpu_s_per_request": round((end["cpu_s"] - start["cpu_s"]) / (end["requests"] - start["requests"]), 6),
                        "worker_rss_max_mib": max(max(r["workers_mib"] or [0]) for r in span),
                        "driver_rss_max_mib": max(r["driver_mib"] for r in span)})
        start = end
    return out


def flat(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    vals = [(r["requests"], r[key]) for r in rows if r[key]]
    vals = vals[len(vals) // 10:]  # after the warm-up
    if len(vals) < 2:
        return {}
    return {"start_mib": vals[0][1], "end_mib": vals[-1][1], "max_mib": max(v for _, v in vals),
            "growth_mib_per_100k_requests": round((vals[-1][1] - vals[0][1]) / max(1, vals[-1][0] - vals[0][0]) * 1e5, 2)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child")
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--replicas", type=int, default=32)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--shard-size", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=64, help="the anchor's requests in flight")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--speed", type=float, default=200.0)
    ap.add_argument("--http", choices=("fast", "aiohttp"), default="fast", help="the simulator's HTTP layer")
    ap.add_argument("--anchor-requests", type=int, default=10_000)
    ap.add_argument("--every-s", type=float, default=5.0)
    ap.add_argument("--uncapped", action="store_true", help="no `concurrency` cap: the adaptive windows alone")
    ap.add_argument("--no-kill", action="store_true", help="one uninterrupted run (a point of the flatness curve)")
    ap.add_argument("--sizes", nargs="*", default=[], help="JSONs of --no-kill runs, kept under per_size")
    ap.add_argument("--lock", help="flock this file around each part of the run")
    ap.add_argument("--merge-sizes", action="store_true", help="only put --sizes into the existing --out JSON")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "generation_scale.json"))
    a = ap.parse_args(argv)
    if a.child:
        raise SystemExit(child(a.child))
    if a.merge_sizes:  # size points measured after the large run
        done = json.loads(Path(a.out).read_text())
        done["per_size"] = sorted([size_point(p) for p in a.sizes], key=lambda x: x["requests"])
        Path(a.out).write_text(json.dumps(done, indent=2) + "\n")
        return done
    from factory.core.schema import make_doc
    from factory.generate import GenerateConfig
    from factory.teacher.config import local_config

    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    (tmp / "bench_stub.yaml").write_text(RECIPE % a.max_tokens)
    with open(tmp / "seeds.jsonl", "w") as f:
        for i in range(a.requests):
            f.write(json.dumps(make_doc(f"Item {i} is a topic with a short description, number {i} of the set.", "web",
                                        "bench", seed_id=f"bench:{i}", extra={"title": f"Topic {i}"})) + "\n")
    runs: dict[str, Any] = {}
    with FleetSimulator(replicas=a.replicas, speed=a.speed, http=a.http) as fleet:
        tcfg = local_config(fleet.urls, MODEL, sampling={"temperature": 0.0}, seed=None)
        cfg = GenerateConfig(seeds=str(tmp / "seeds.jsonl"), recipes=[str(tmp / "bench_stub.yaml")], out=str(tmp / "out"),
                             teacher=tcfg, workers=a.workers, shards=max(1, a.requests // a.shard_size),
                             concurrency=None if a.uncapped else math.ceil(a.concurrency / a.workers))
        cfg_path = tmp / "cfg.json"
        cfg_path.write_text(cfg.model_dump_json())
        with locked(a.lock):
            runs["anchor_before"] = asyncio.run(anchor(fleet.urls, a.anchor_requests, a.concurrency, a.max_tokens))
            runs["anchor_aiohttp_before"] = asyncio.run(anchor(fleet.urls, a.anchor_requests, a.concurrency, a.max_tokens, True))
            print("anchor", runs["anchor_before"], runs["anchor_aiohttp_before"], flush=True)
            first_key = "run" if a.no_kill else "first_run_killed_at_half"
            runs[first_key] = run_stage(cfg_path, fleet, None if a.no_kill else a.requests // 2, a.every_s)
            print("first", {k: v for k, v in runs[first_key].items() if k not in ("rss_over_time", "result")}, flush=True)
            if a.no_kill:
                runs["anchor_after"] = asyncio.run(anchor(fleet.urls, a.anchor_requests, a.concurrency, a.max_tokens))
                runs["anchor_aiohttp_after"] = asyncio.run(anchor(fleet.urls, a.anchor_requests, a.concurrency, a.max_tokens, True))
        if not a.no_kill:
            with locked(a.lock):
                runs["resume"] = run_stage(cfg_path, fleet, None, a.every_s)
                print("resumed", {k: v for k, v in runs["resume"].items() if k not in ("rss_over_time", "result")}, flush=True)
            with locked(a.lock):
                runs["anchor_after"] = asyncio.run(anchor(fleet.urls, a.anchor_requests, a.concurrency, a.max_tokens))
                runs["anchor_aiohttp_after"] = asyncio.run(anchor(fleet.urls, a.anchor_requests, a.concurrency, a.max_tokens, True))
        print("anchor", runs["anchor_after"], runs["anchor_aiohttp_after"], flush=True)
        total_served = served(fleet) - 4 * a.anchor_requests
    first, resume = (runs["run"], None) if a.no_kill else (runs["first_run_killed_at_half"], runs["resume"])
    stage_runs = [r for r in (first, resume) if r]
    docs = (stage_runs[-1]["result"] or {}).get("counts", {}).get("docs")
    cpu = sum(r["cpu_s_driver_plus_workers"] for r in stage_runs)
    driver_cpu = sum(r["driver_cpu_s"] for r in stage_runs)
    marginal = [r["steady_cpu_s_per_request"] for r in stage_runs if r["steady_cpu_s_per_request"]]
    ours_rate = round(len(marginal) / sum(marginal), 1) if marginal else 0.0  # requests per CPU-s once running
    anchor_rate = round((runs["anchor_before"]["req_per_cpu_s"] + runs["anchor_after"]["req_per_cpu_s"]) / 2, 1)
    aio_rate = round((runs["anchor_aiohttp_before"]["req_per_cpu_s"] + runs["anchor_aiohttp_after"]["req_per_cpu_s"]) / 2, 1)
    rows = first["rss_over_time"] + ([{**r, "requests": r["requests"] + first["requests_served"]}
                                      for r in resume["rss_over_time"]] if resume else [])
    worker_rows = [{"requests": r["requests"], "w": max(r["workers_mib"] or [0])} for r in rows]
    result = {
        "ours": ours_rate, "anchor": anchor_rate, "ratio": round(ours_rate / anchor_rate, 3) if anchor_rate else None,
        "unit": "requests per CPU-second once running (generate stage: driver + Ray workers, start-up left out: "
                "whole_run_* counts it; anchor: a plain AsyncOpenAI loop, default "
                "transport; anchor_aiohttp: the same loop on openai's aiohttp transport)",
        "target": ">= 1.0", "anchor_aiohttp": aio_rate, "ratio_vs_anchor_aiohttp": round(ours_rate / aio_rate, 3) if aio_rate else None,
        "whole_run_req_per_cpu_s": round(total_served / cpu, 1) if cpu else None,
        "whole_run_ratio": round(total_served / cpu / anchor_rate, 3) if cpu and anchor_rate else None,
        "cpu_s_per_request_all_in": round(cpu / total_served, 6) if total_served else None,
        "driver_req_per_cpu_s": round(total_served / driver_cpu, 1) if driver_cpu else None,
        "cpu_s_start_up": [r["cpu_s_before_first_request"] for r in stage_runs],
        "cpu_s_per_request_first_run": first["cpu_s_per_request"],
        "cpu_s_per_request_resume": resume["cpu_s_per_request"] if resume else None,
        "concurrency": {"anchor": a.concurrency, "ours_per_worker": cfg.concurrency,
                        "ours_total": cfg.concurrency * a.workers if cfg.concurrency else "adaptive windows"},
        "requests": a.requests, "requests_served": total_served, "documents": docs,
        "paid_twice": total_served - a.requests, "replicas": a.replicas, "workers": a.workers, "shards": cfg.shards,
        "cache_bytes": du(tmp / "out" / "cache"), "manifest_bytes": (tmp / "out" / "manifest.json").stat().st_size
        if (tmp / "out" / "manifest.json").exists() else None, "output_bytes": du(tmp / "out"),
        "driver_rss": flat(rows, "driver_mib"), "worker_rss_max_of_workers": flat(worker_rows, "w"),
        "wall_s": [r["wall_s"] for r in stage_runs],
        "resume_s_to_first_request": resume["first_request_s"] if resume else None,
        "resume_wall_s": resume["wall_s"] if resume else None,
        "per_size": [size_point(p) for p in a.sizes],
        "over_the_run": {name: segments(r) for name, r in (("first", first), ("resume", resume)) if r}, "runs": runs,
        "simulator": {"replicas": a.replicas, "speed": a.speed, "http": a.http, "max_tokens": a.max_tokens}, "machine": f"{platform.machine()} {os.cpu_count()} cores, {cpu_model()}; simulator in its own process",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
