"""Rounds that alternate the anchor and ours (ABAB...), summarised as medians with their spread.

Used by the generation comparisons (generation_vs_inferencerunner.py, generation_vs_raydata.py):
each round runs the anchor, then ours, on the same workload; a slow spell on a shared machine then
lands on both sides instead of deciding the ratio. The result JSON keeps ours / anchor as the
medians of their rounds, ratio = median(ours) / median(anchor), and the spread (min..max) of each
side and of the per-round ratios.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
from pathlib import Path
from typing import Any, Callable

Run = dict[str, Any]  # tok_s, completion_tokens, wall_s, requests, texts (+ side-specific fields)


def alternate(rounds: int, anchor: Callable[[int], Run], ours: Callable[[int], Run]) -> dict[str, list[Run]]:
    """Run anchor(k) then ours(k) for k in range(rounds); print each run as it ends."""
    runs: dict[str, list[Run]] = {"anchor": [], "ours": []}
    for k in range(rounds):
        for side, fn in (("anchor", anchor), ("ours", ours)):
            r = fn(k)
            runs[side].append(r)
            print(f"round {k + 1}/{rounds} {side}: {r['tok_s']:.1f} tok/s ({r['completion_tokens']} tokens, {r['wall_s']:.1f}s)",
                  flush=True)
    return runs


def same_outputs(ours: dict[str, str], theirs: dict[str, str]) -> int:
    return sum(1 for k, v in theirs.items() if ours.get(k, "").strip() == v.strip())


def summary(runs: dict[str, list[Run]]) -> dict[str, Any]:
    """Medians, spreads and per-round details (texts left out); warns when the workloads differ."""
    ours, anchor = runs["ours"], runs["anchor"]
    ref = anchor[0]
    for side, rs in runs.items():
        for k, r in enumerate(rs):
            if r["completion_tokens"] != ref["completion_tokens"]:
                print(f"warning: the workloads differ: {side} round {k + 1} has {r['completion_tokens']} completion tokens, "
                      f"anchor round 1 {ref['completion_tokens']}")
    o = [r["tok_s"] for r in ours]
    an = [r["tok_s"] for r in anchor]
    per_round = [x / y for x, y in zip(o, an)]
    e2e = [r["completion_tokens"] / r["end_to_end_s"] for r in ours if "end_to_end_s" in r]
    med_o, med_a = statistics.median(o), statistics.median(an)
    out = {"ours": round(med_o, 2), "anchor": round(med_a, 2), "ratio": round(med_o / med_a, 3), "rounds": len(o),
           "median": {"ours": round(med_o, 2), "anchor": round(med_a, 2), "ratio_per_round": round(statistics.median(per_round), 3)},
           "spread": {"ours": [round(min(o), 2), round(max(o), 2)], "anchor": [round(min(an), 2), round(max(an), 2)],
                      "ratio_per_round": [round(min(per_round), 3), round(max(per_round), 3)]},
           "identical_outputs": [f"{same_outputs(r['texts'], ref['texts'])}/{len(ref['texts'])}" for r in ours + anchor[1:]]}
    ws = [r["completion_tokens"] / r["workers_start_s"] for r in ours if r.get("timed") == "first_request"]
    if ws:  # ours timed from its Ray workers' creation too (their process start counted)
        out["ours_with_worker_start_tok_s"] = round(statistics.median(ws), 2)
        out["ratio_with_worker_start"] = round(statistics.median(ws) / med_a, 3)
    if e2e:  # ours timed over the whole generate.run call too (Ray start and stop, probe, manifest)
        out["ours_end_to_end_tok_s"] = round(statistics.median(e2e), 2)
        out["ratio_end_to_end"] = round(statistics.median(e2e) / med_a, 3)
    cpu = {side: [r["cpu_ms_per_request"] for r in rs if "cpu_ms_per_request" in r] for side, rs in runs.items()}
    if all(cpu.values()):  # this process's CPU over each run, per request: the client's own cost
        out["cpu_ms_per_request"] = {side: round(statistics.median(v), 2) for side, v in cpu.items()}
        out["cpu_ms_per_request_spread"] = {side: [round(min(v), 2), round(max(v), 2)] for side, v in cpu.items()}
    out["runs"] = {side: [{k: v for k, v in r.items() if k != "texts"} for r in rs] for side, rs in runs.items()}
    return out


def report(label: str, machine: str, out: str, runs: dict[str, list[Run]], **details: Any) -> dict[str, Any]:
    """Save the result JSON (ours, anchor, ratio, unit, target, machine, date, rounds, median, spread) and print it."""
    load0 = details.pop("loadavg_before", None)
    s = summary(runs)
    head = {k: s.pop(k) for k in ("ours", "anchor", "ratio")}
    result = {**head, "unit": "completion tokens/s", "target": 1.0, "machine": machine, "date": datetime.date.today().isoformat(),
              "rounds": s.pop("rounds"), "median": s.pop("median"), "spread": s.pop("spread"),
              "details": {**details, **s, "loadavg_before": load0, "loadavg_after": [round(x, 2) for x in os.getloadavg()]}}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    sp = result["spread"]
    print(f"generation vs {label}, {result['rounds']} rounds: ours {result['ours']:.1f} tok/s ({sp['ours'][0]:.1f}..{sp['ours'][1]:.1f}) / "
          f"anchor {result['anchor']:.1f} ({sp['anchor'][0]:.1f}..{sp['anchor'][1]:.1f}) = {result['ratio']:.3f} (per round "
          f"{sp['ratio_per_round'][0]:.2f}..{sp['ratio_per_round'][1]:.2f}; target >= 1.0); identical outputs "
          f"{', '.join(result['details']['identical_outputs'])} -> {out}")
    return result
