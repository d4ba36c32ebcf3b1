"""Adaptive concurrency vs fixed `max_in_flight`, on simulated continuous-batching replicas.

The fleet simulator (benchmarks/fleet_simulator.py, its own process) serves one replica with the
vLLM-calibrated defaults. For each workload (short: 32 output tokens, speed 2; long: 512, speed
20; mixed: 16..1024 log-uniform, speed 20), the factory's `TeacherClient` runs for `--seconds`
with far more requests waiting than any window takes, once with the adaptive window (starting
at the default 4, so its search is inside the measurement) and once per fixed `max_in_flight`
of a sweep. Completion tokens per second over the whole run are compared: ratio = adaptive /
the best fixed setting of the sweep (target >= 0.95 per workload), and adaptive / the default
fixed setting (4). Rounds alternate every setting, so a shared machine's load hits all alike;
the median over rounds is reported with the spread. The speeds (simulated time that many times
the wall clock) let a run of a few tens of seconds cover many request latencies at the best
window (12 s for a 512-token answer in a full batch at speed 5, 3 s at 20): a real run lasts
hours, and the window's search is paid once at its start.

    python benchmarks/generation_adaptive.py --seconds 40 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet_simulator import MODEL, FleetSimulator  # noqa: E402
from generation_stub import cpu_model  # noqa: E402

WORKLOADS = {"short": {"max_tokens": 32, "speed": 2.0, "output": "max"},
             "long": {"max_tokens": 512, "speed": 20.0, "output": "max"},
             "mixed": {"max_tokens": 1024, "speed": 20.0, "output": "mixed"}}
SWEEP = [4, 32, 128, 512]
DEFAULT_FIXED = 4


async def run_for(url: str, max_tokens: int, seconds: float, fixed: int | None, warmup: float = 0.0) -> dict[str, Any]:
    """Completion tokens/s of one client kept busy for `seconds` (fixed window, or adaptive if None),
    over the whole run and over what comes back after `warmup` seconds."""
    from factory.teacher.client import TeacherClient
    from factory.teacher.config import AdaptiveOptions, Endpoint, TeacherConfig

    cfg = TeacherConfig(endpoints=[Endpoint(base_url=url, model=MODEL)], sampling={"max_tokens": max_tokens},
                        max_in_flight=fixed or DEFAULT_FIXED, adaptive=AdaptiveOptions(enabled=fixed is None),
                        timeout_s=600, seed=None)
    tokens = steady = 0
    async with TeacherClient(cfg) as t:
        start = time.perf_counter()
        stop = start + seconds

        async def loop(j: int) -> None:
            nonlocal tokens, steady
            i = j
            while time.perf_counter() < stop:
                c = await t.complete([{"role": "user", "content": f"Write about item {i} of the benchmark. " * 12}])
                now = time.perf_counter()
                if now <= stop:
                    tokens += c.completion_tokens
                    steady += c.completion_tokens if now - start >= warmup else 0
                i += 4096

        loops = [asyncio.create_task(loop(j)) for j in range(2048 if fixed is None else max(2 * fixed, 8))]
        await asyncio.sleep(seconds)
        for x in loops:
            x.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        win = t.windows()[0]
    return {"tok_s": round(tokens / seconds, 1), "steady_tok_s": round(steady / (seconds - warmup), 1), "window": win["window"], "window_max": win.get("window_max"),
            "errors": {k: v for k, v in t.stats.items() if k.startswith("error_")}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warmup", type=float, default=15, help="seconds left out of the steady-state figure")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--sweep", default=",".join(map(str, SWEEP)))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "generation_adaptive.json"))
    a = ap.parse_args(argv)
    sweep = [int(x) for x in a.sweep.split(",")]
    per: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in range(a.rounds):
        for name in a.workloads.split(","):
            w = WORKLOADS[name]
            with FleetSimulator(replicas=1, speed=w["speed"], output=w["output"]) as fleet:
                order = ["adaptive", *sweep] if r % 2 == 0 else [*sweep[::-1], "adaptive"]
                for setting in order:
                    res = asyncio.run(run_for(fleet.urls[0], w["max_tokens"], a.seconds, None if setting == "adaptive" else setting,
                                              a.warmup))
                    per.setdefault(name, {}).setdefault(str(setting), []).append(res)
                    print(f"round {r} {name:6s} {setting!s:>8}: {res['tok_s']:9.1f} tok/s (steady {res['steady_tok_s']:9.1f})"
                          f"  window {res['window']}", flush=True)
    workloads = {}
    for name, settings in per.items():
        wl: dict[str, Any] = {"params": WORKLOADS[name], "adaptive_final_windows": [x["window"] for x in settings["adaptive"]]}
        for key, label in (("steady_tok_s", ""), ("tok_s", "whole_run_")):
            med = {s: statistics.median(x[key] for x in runs) for s, runs in settings.items()}
            best = max((s for s in med if s != "adaptive"), key=med.get)
            wl.update({f"{label}adaptive": med["adaptive"], f"{label}best_fixed": med[best],
                       f"{label}best_fixed_max_in_flight": int(best), f"{label}default_fixed": med[str(DEFAULT_FIXED)],
                       f"{label}ratio_vs_best": round(med["adaptive"] / med[best], 3),
                       f"{label}ratio_vs_default": round(med["adaptive"] / med[str(DEFAULT_FIXED)], 3),
                       f"{label}median_tok_s": med,
                       f"{label}spread": {s: [min(x[key] for x in runs), max(x[key] for x in runs)] for s, runs in settings.items()}})
        workloads[name] = wl
    worst = min(workloads.values(), key=lambda x: x["ratio_vs_best"])
    import os
    import platform

    result = {"ours": worst["adaptive"], "anchor": worst["best_fixed"], "ratio": worst["ratio_vs_best"],
              "unit": "completion tokens/s after the warm-up (adaptive window vs the best fixed max_in_flight; worst "
                      "workload); whole_run_* keys count from the first second",
              "target": ">= 0.95 per workload", "workloads": workloads, "seconds_per_run": a.seconds, "warmup_s": a.warmup, "rounds": a.rounds,
              "sweep": sweep, "machine": f"{platform.machine()} {os.cpu_count()} cores, {cpu_model()}",
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    for name, wl in workloads.items():
        print(f"{name}: adaptive {wl['adaptive']:.0f} tok/s, best fixed ({wl['best_fixed_max_in_flight']}) "
              f"{wl['best_fixed']:.0f} -> {wl['ratio_vs_best']} (whole run {wl['whole_run_ratio_vs_best']}); "
              f"vs default fixed {wl['ratio_vs_default']}")
    return result


if __name__ == "__main__":
    main()
