"""Ablation report: mean and 95% t-interval over seeds per cell and benchmark, signal-to-noise per
benchmark, a PNG plot (score against x, one line per group) and a markdown report.

A result is one trained model's evaluation:
`{"cell": str, "seed": int, "params": {name: value}, "scores": {bench: {score, n, stderr, ...}}}`.
`x` and `group` name keys of `params` (or of the result itself, e.g. "mix").

Signal-to-noise of a benchmark = the standard deviation of the cell means across cells divided by
the mean over cells of the seed-to-seed standard deviation. With one seed per cell the noise is
the mean item-sampling standard error instead (and intervals use it too, marked "item").
The report folder may be an fsspec URL (s3://, gs://): it is written locally, then uploaded.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(df: float) -> float:
    """The 0.975 quantile of Student's t (two-sided 95%): table to 30 df, Cornish-Fisher beyond."""
    if df < 1:
        return float("nan")
    if df <= 30:
        return _T975[int(math.floor(df + 1e-9)) - 1]  # conservative between table rows
    z = 1.959963984540054
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2) + \
        (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)


def interval(values: list[float]) -> dict[str, float]:
    """Mean, sample sd and the 95% t-interval half-width over seeds (nan half-width for n < 2)."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    mean = float(v.mean()) if n else float("nan")
    sd = float(v.std(ddof=1)) if n > 1 else float("nan")
    half = t975(n - 1) * sd / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "sd": sd, "n": n, "half": half, "lo": mean - half, "hi": mean + half}


def welch(a: dict, b: dict) -> tuple[float, float]:
    """Difference b - a of two interval() summaries and its 95% half-width (Welch)."""
    va, vb = a["sd"] ** 2 / a["n"], b["sd"] ** 2 / b["n"]
    if not (va + vb) > 0:
        return b["mean"] - a["mean"], float("nan")
    df = (va + vb) ** 2 / (va**2 / (a["n"] - 1) + vb**2 / (b["n"] - 1))
    return b["mean"] - a["mean"], t975(df) * math.sqrt(va + vb)


def _get(r: dict, key: str) -> Any:
    return (r.get("params") or {}).get(key, r.get(key))


def _cell_key(r: dict) -> str:
    return r.get("cell") or json.dumps(r.get("params") or {}, sort_keys=True)


def summarise(results: list[dict]) -> dict[str, Any]:
    """{"cells": [{cell, params, seeds, stats: {bench: interval + item_se + higher_is_better}}], "snr": {...}}."""
    by_cell: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_cell[_cell_key(r)].append(r)
    benches = sorted({b for r in results for b in r.get("scores", {})})
    cells = []
    for key, rs in by_cell.items():
        rs = sorted(rs, key=lambda r: r.get("seed", 0))
        stats = {}
        for b in benches:
            got = [r["scores"][b] for r in rs if b in r.get("scores", {})]
            if not got:
                continue
            s = interval([g["score"] for g in got])
            s["item_se"] = float(np.nanmean([g.get("stderr", float("nan")) for g in got]))
            s["higher_is_better"] = got[0].get("higher_is_better", True)
            s["kind"] = "seeds"
            if s["n"] == 1 and not math.isnan(s["item_se"]):
                s.update(half=1.96 * s["item_se"], kind="item")
                s.update(lo=s["mean"] - s["half"], hi=s["mean"] + s["half"])
            stats[b] = s
        cells.append({"cell": key, "params": rs[0].get("params") or {}, "seeds": [r.get("seed") for r in rs], "stats": stats})
    snr = {}
    for b in benches:
        st = [c["stats"][b] for c in cells if b in c["stats"]]
        means = [s["mean"] for s in st]
        sds = [s["sd"] for s in st if s["n"] > 1]
        noise = float(np.mean(sds)) if sds else float(np.nanmean([s["item_se"] for s in st]))
        spread = float(np.std(means, ddof=1)) if len(means) > 1 else float("nan")
        snr[b] = {"spread": spread, "noise": noise, "snr": spread / noise if noise > 0 else float("nan"),
                  "noise_kind": "seed sd" if sds else "item se"}
    return {"benches": benches, "cells": cells, "snr": snr}


def _fmt(s: dict, pct: bool) -> str:
    k = 100 if pct else 1
    dig = 1 if pct else 3
    if math.isnan(s["half"]):
        return f"{s['mean'] * k:.{dig}f}"
    return f"{s['mean'] * k:.{dig}f} ± {s['half'] * k:.{dig}f}"


def _is_pct(summary: dict, b: str) -> bool:
    return all(c["stats"][b]["higher_is_better"] for c in summary["cells"] if b in c["stats"])


def table_md(summary: dict, x: str, group: str | None) -> str:
    keys = [k for k in ([group] if group else []) + [x] if k]
    others = sorted({k for c in summary["cells"] for k in c["params"]} - set(keys))
    cols = keys + others + ["seeds"] + summary["benches"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for c in _sorted_cells(summary, x, group):
        row = [str(c["params"].get(k, c["cell"] if k == x and k not in c["params"] else "")) for k in keys + others]
        row.append(str(len(c["seeds"])))
        row += [_fmt(c["stats"][b], _is_pct(summary, b)) if b in c["stats"] else "" for b in summary["benches"]]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _sortable(v: Any) -> tuple:
    return (0, float(v), "") if isinstance(v, (int, float)) else (1, 0.0, str(v))


def _sorted_cells(summary: dict, x: str, group: str | None) -> list[dict]:
    return sorted(summary["cells"], key=lambda c: (_sortable(c["params"].get(group)) if group else (0, 0.0, ""),
                                                   _sortable(c["params"].get(x, c["cell"]))))


def plot(summary: dict, x: str, group: str | None, path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = summary["benches"]
    ncol = min(3, len(benches))
    nrow = math.ceil(len(benches) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.3 * nrow), squeeze=False)
    cells = _sorted_cells(summary, x, group)
    xs_all = [c["params"].get(x, c["cell"]) for c in cells]
    numeric = all(isinstance(v, (int, float)) for v in xs_all)
    cats = list(dict.fromkeys(str(v) for v in xs_all))
    for ax, b in zip(axes.flat, benches):
        lines: dict[Any, list[dict]] = defaultdict(list)
        for c in cells:
            if b in c["stats"]:
                lines[c["params"].get(group) if group else None].append(c)
        pct = _is_pct(summary, b)
        for g, cs in lines.items():
            xv = [c["params"].get(x, c["cell"]) for c in cs]
            xv = xv if numeric else [cats.index(str(v)) for v in xv]
            k = 100 if pct else 1
            ys = [c["stats"][b]["mean"] * k for c in cs]
            err = [0 if math.isnan(c["stats"][b]["half"]) else c["stats"][b]["half"] * k for c in cs]
            ax.errorbar(xv, ys, yerr=err, marker="o", capsize=3, label=f"{group}={g}" if group else None)
        if not numeric:
            ax.set_xticks(range(len(cats)), cats, rotation=20)
        ax.set_title(b)
        ax.set_xlabel(x)
        ax.set_ylabel("accuracy (%)" if pct else "loss")
        ax.grid(alpha=0.3)
        if group:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(benches):]:
        ax.axis("off")
    fig.suptitle(title or "score vs " + x + " (95% interval over seeds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def findings(summary: dict, x: str, group: str | None) -> list[str]:
    """One line per benchmark and group: the change from the lowest to the highest x, with its interval."""
    out = []
    for b in summary["benches"]:
        pct = _is_pct(summary, b)
        k, unit = (100, " points") if pct else (1, "")
        groups: dict[Any, list[dict]] = defaultdict(list)
        for c in _sorted_cells(summary, x, group):
            if b in c["stats"]:
                groups[c["params"].get(group) if group else None].append(c)
        for g, cs in groups.items():
            if len(cs) < 2:
                continue
            a, z = cs[0], cs[-1]
            d, h = welch(a["stats"][b], z["stats"][b])
            lab = f" ({group}={g})" if group else ""
            xa, xz = a["params"].get(x, a["cell"]), z["params"].get(x, z["cell"])
            if math.isnan(h):
                out.append(f"- {b}{lab}: {x} {xa} -> {xz}: {d * k:+.2f}{unit} (one seed: no interval)")
                continue
            better = d > 0 if z["stats"][b]["higher_is_better"] else d < 0
            verdict = ("better" if better else "worse") if abs(d) > h else "no significant difference"
            out.append(f"- {b}{lab}: {x} {xa} -> {xz}: {d * k:+.2f}{unit} [{(d - h) * k:+.2f}, {(d + h) * k:+.2f}] : {verdict}")
    return out


def write(results: list[dict], out_dir: str | Path, x: str = "synthetic_share", group: str | None = None,
          title: str = "", notes: str = "", scales: list[str] | None = None) -> dict[str, str]:
    """Write table.md, summary.json, plot.png and report.md under out_dir (a path or a URL);
    returns their paths (URLs for a URL). With two or more `scales` (the `scale` param of each
    result, smallest first) the report adds decision accuracy and the effect of x per scale."""
    import tempfile

    from train import storage

    if not results:
        raise ValueError("report.write: no results to report")
    if storage.is_url(out_dir):
        with tempfile.TemporaryDirectory(prefix="report-") as tmp:
            local = write(results, tmp, x, group, title, notes, scales)
            storage.put_dir(tmp, str(out_dir), last="report.md")
        return {k: storage.join(out_dir, Path(v).name) for k, v in local.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(results)
    tbl = table_md(summary, x, group)
    two = bool(scales) and len(scales) > 1
    snr_lines = ["| benchmark | spread of cell means | noise | noise kind | signal/noise |", "|---|---|---|---|---|"]
    for sc in scales if two else [None]:
        part = summarise([r for r in results if (r.get("params") or {}).get("scale") == sc]) if sc else summary
        for b, s in part["snr"].items():
            snr_lines.append(f"| {b}{f' ({sc})' if sc else ''} | {s['spread']:.4f} | {s['noise']:.4f} | {s['noise_kind']} | {s['snr']:.2f} |")
    if two:  # one line per scale and group in the plot; decision accuracy instead of pooled findings
        from factory.ablate.decision import section

        line = f"scale/{group}" if group else "scale"
        lined = {**summary, "cells": [{**c, "params": {**c["params"], line: "/".join(str(c["params"].get(k)) for k in ["scale", group] if k)}}
                                      for c in summary["cells"]]}
        png = plot(lined, x, line, out / "plot.png", title)
        found = section(results, summary, scales, x, group)
    else:
        png = plot(summary, x, group, out / "plot.png", title)
        found = ["## Findings", "", *findings(summary, x, group), ""]
    (out / "table.md").write_text(tbl + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    seeds = sorted({len(c["seeds"]) for c in summary["cells"]})
    md = [f"# {title or 'Ablation report'}", "", notes, "",
          f"{len(summary['cells'])} cells, {'/'.join(map(str, seeds))} seed(s) each. Accuracies in %, losses in nats/token; "
          "± is the 95% t-interval over seeds (over items when a cell has one seed).", "",
          "## Results", "", tbl, "", *found,
          "## Signal-to-noise", "", "Spread of the cell means divided by the mean seed-to-seed standard deviation.", "",
          *snr_lines, "", "## Plot", "", "![plot](plot.png)", ""]
    (out / "report.md").write_text("\n".join(md))
    return {"table_md": str(out / "table.md"), "png": str(png), "report_md": str(out / "report.md"),
            "summary_json": str(out / "summary.json")}
