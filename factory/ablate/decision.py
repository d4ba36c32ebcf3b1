"""Decision accuracy between two scales of one grid, and the effect of the grid's x at each scale.

Pairwise decision accuracy of a benchmark (as in DataDecide): over every pair of mixes whose
large-scale means differ, the share that one small-scale seed orders the same way (a tie at the
small scale counts half); its mean and 95% t-interval are over the small scale's seeds. The same
figure for each large-scale seed against the mean of the other large seeds is the noise ceiling:
how often the large scale agrees with itself. A mix trained once and reported in several cells
(`same_as`) counts once.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from typing import Any

import numpy as np

from factory.ablate.report import interval, welch


def _mix(cell: str) -> str:
    return cell.split("__", 1)[1] if cell.startswith("scale=") and "__" in cell else cell


def _scores(results: list[dict], scale: str, bench: str) -> dict[str, dict[int, float]]:
    """{mix: {seed: score}} of one scale (higher is better: losses and bpb are negated)."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for r in results:
        s = r.get("scores", {}).get(bench)
        if r.get("same_as") or (r.get("params") or {}).get("scale") != scale or s is None:
            continue
        out[_mix(r["cell"])][int(r.get("seed", 0))] = s["score"] if s.get("higher_is_better", True) else -s["score"]
    return out


def _agreement(a: dict[str, float], b: dict[str, float]) -> float | None:
    hits = n = 0.0
    for m1, m2 in itertools.combinations(sorted(set(a) & set(b)), 2):
        t = b[m1] - b[m2]
        if t == 0:
            continue
        d = a[m1] - a[m2]
        hits += 0.5 if d == 0 else float((d > 0) == (t > 0))
        n += 1
    return hits / n if n else None


def decision_accuracy(results: list[dict], small: str, large: str) -> dict[str, dict[str, Any]]:
    """{bench: {"accuracy": interval over small seeds, "ceiling": interval over large seeds, "pairs", "mixes"}}."""
    benches = sorted({b for r in results for b in r.get("scores", {})})
    out = {}
    for b in benches:
        lo, hi = _scores(results, small, b), _scores(results, large, b)
        mixes = sorted(set(lo) & set(hi))
        if len(mixes) < 2:
            continue
        target = {m: float(np.mean(list(hi[m].values()))) for m in mixes}
        seeds = sorted({s for m in mixes for s in lo[m]})
        acc = [a for s in seeds if (a := _agreement({m: lo[m][s] for m in mixes if s in lo[m]}, target)) is not None]
        ceil = []
        for s in sorted({s for m in mixes for s in hi[m]}):
            rest = {m: float(np.mean([v for k, v in hi[m].items() if k != s])) for m in mixes if len(hi[m]) > 1 and s in hi[m]}
            if (c := _agreement({m: hi[m][s] for m in rest}, rest)) is not None:
                ceil.append(c)
        if acc:
            out[b] = {"accuracy": interval(acc), "ceiling": interval(ceil) if ceil else None, "mixes": len(mixes),
                      "pairs": sum(1 for m1, m2 in itertools.combinations(mixes, 2) if target[m1] != target[m2])}
    return out


def effects(summary: dict, scales: list[str], x: str, group: str | None) -> list[dict[str, Any]]:
    """Per benchmark, scale and group: the change from the lowest to the highest x (Welch 95%)."""
    rows = []
    for b in summary["benches"]:
        for sc in scales:
            groups: dict[Any, list[dict]] = defaultdict(list)
            for c in summary["cells"]:
                if c["params"].get("scale") == sc and b in c["stats"] and x in c["params"]:
                    groups[c["params"].get(group) if group else None].append(c)
            for g, cs in groups.items():
                cs = sorted(cs, key=lambda c: float(c["params"][x]))
                if len(cs) < 2 or cs[0]["params"][x] == cs[-1]["params"][x]:
                    continue
                d, h = welch(cs[0]["stats"][b], cs[-1]["stats"][b])
                rows.append({"bench": b, "scale": sc, "group": g, "from": cs[0]["params"][x], "to": cs[-1]["params"][x],
                             "effect": d, "half": h, "excludes_zero": bool(not math.isnan(h) and abs(d) > h),
                             "pct": all(c["stats"][b]["higher_is_better"] for c in cs)})
    return rows


def section(results: list[dict], summary: dict, scales: list[str], x: str, group: str | None) -> list[str]:
    """Markdown lines: the decision-accuracy table and the effect table."""
    small, large = scales[0], scales[-1]
    acc = decision_accuracy(results, small, large)
    lines = ["## Decision accuracy", "",
             f"Share of pairs of mixes that the {small} scale orders as the {large} scale does (mean over {large} seeds "
             f"is the target), mean ± 95% interval over {small} seeds; the ceiling is each {large} seed against the "
             f"mean of the other {large} seeds. 50% is a coin toss.", "",
             "| benchmark | mixes | pairs | decision accuracy | ceiling |", "|---|---|---|---|---|"]
    for b, a in acc.items():
        c = a["ceiling"]
        ceil = "" if not c else f"{100 * c['mean']:.0f}%" + ("" if math.isnan(c["half"]) else f" ± {100 * c['half']:.0f}")
        ac = a["accuracy"]
        lines.append(f"| {b} | {a['mixes']} | {a['pairs']} | {100 * ac['mean']:.0f}%"
                     + ("" if math.isnan(ac["half"]) else f" ± {100 * ac['half']:.0f}") + f" | {ceil} |")
    lines += ["", f"## Effect of {x} at each scale", "",
              f"Change from the lowest to the highest {x} (Welch 95% interval over seeds); accuracies in points.", "",
              f"| benchmark | scale | {group or 'group'} | {x} | change | 95% interval | excludes 0 |", "|---|---|---|---|---|---|---|"]
    for e in effects(summary, scales, x, group):
        k = 100 if e["pct"] else 1
        iv = "" if math.isnan(e["half"]) else f"[{(e['effect'] - e['half']) * k:+.2f}, {(e['effect'] + e['half']) * k:+.2f}]"
        lines.append(f"| {e['bench']} | {e['scale']} | {e['group']} | {e['from']} -> {e['to']} | {e['effect'] * k:+.2f} | {iv} | "
                     f"{'yes' if e['excludes_zero'] else 'no'} |")
    return lines + [""]
