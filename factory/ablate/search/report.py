"""The search's report: `report.json`, `report.md` and `fit.png` (held-out predicted vs observed,
and the fitted target over the region of the first two varied sources)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def markdown(rep: dict[str, Any]) -> str:
    p = rep["predicted"]
    lines = [f"# Mix search: {rep['name']}", "",
             f"Target: {' + '.join(f'{w:g} x {b}' for b, w in rep['target'].items())} "
             f"({'higher' if rep['maximize'] else 'lower'} is better), {rep['proxies']} proxy runs.", "",
             "| fit | held-out Spearman | held-out RMSE |", "|---|---|---|"]
    lines += [f"| {k}{' (chosen)' if k == rep['chosen'] else ''} | {v['spearman']:.3f} | {v['rmse']:.4f} |"
              for k, v in rep["fit"].items()]
    lines += ["", f"Proposal ({rep['mix_file']}): " + ", ".join(f"{k} {v:.3f}" for k, v in rep["proposal"].items()),
              f"predicted {p['score']:.4f} (95% interval {p['low']:.4f} .. {p['high']:.4f}); best proxy observed "
              f"{rep['best_proxy']['score']:.4f} at " + ", ".join(f"{k} {v:.3f}" for k, v in rep["best_proxy"]["shares"].items()), ""]
    val = rep.get("validation")
    if val:
        lines += [f"## Validation at {val['scale']['tokens']:,} tokens, {len(val['scale']['seeds'])} seeds", "",
                  "| mix | shares | target | 95% interval |", "|---|---|---|---|"]
        for n, r in val["mixes"].items():
            shares = ", ".join(f"{k} {v:.2f}" for k, v in r["shares"].items())
            lines.append(f"| {n} | {shares} | {r['mean']:.4f} | {r['lo']:.4f} .. {r['hi']:.4f} |")
        lines += [""]
        for n, d in val["versus"].items():
            verdict = ("wins" if d["wins"] else "loses") + (" (interval excludes 0)" if d["significant"] else
                                                             " (within noise: the interval includes 0)")
            pair = d.get("paired")
            more = (f"; paired by seed (same initialisation and data order): {pair['difference']:+.4f} ± {pair['half']:.4f}, "
                    f"{'excludes' if pair['significant'] else 'includes'} 0") if pair else ""
            lines.append(f"- proposal vs {n}: {d['difference']:+.4f} ± {d['half']:.4f} (Welch), {verdict}{more}")
    return "\n".join(lines) + "\n"


def plot(rep: dict[str, Any], names: list[str], model, sign: float, region, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obs = np.array([r["score"] for r in rep["observed"]])
    pred = np.array(rep["heldout_pred"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    ax = axes[0]
    ax.scatter(obs, pred, s=18)
    lo, hi = float(min(obs.min(), pred.min())), float(max(obs.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("observed target")
    ax.set_ylabel(f"held-out prediction ({rep['chosen']})")
    ax.set_title(f"fit: Spearman {rep['fit'][rep['chosen']]['spearman']:.2f}")
    ax = axes[1]
    from factory.ablate.search.design import sample

    cand = sample(region.lo, region.hi, region.mass, 4000, np.random.default_rng(0))
    sc = ax.scatter(cand[:, 0], cand[:, 1], c=sign * model.predict(cand), s=6, cmap="viridis")
    X = np.array([[r["shares"][n] for n in names] for r in rep["observed"]])
    ax.scatter(X[:, 0], X[:, 1], c="white", edgecolors="k", s=22, label="proxies")
    ax.scatter([rep["proposal"][names[0]]], [rep["proposal"][names[1]]], marker="*", c="red", s=160, label="proposal")
    ax.set_xlabel(f"{names[0]} share")
    ax.set_ylabel(f"{names[1]} share")
    ax.set_title("fitted target over the feasible region")
    ax.legend(fontsize=7)
    fig.colorbar(sc, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(rep: dict[str, Any], out: Path, names: list[str], model, sign: float, region) -> None:
    (out / "report.json").write_text(json.dumps(rep, indent=1, default=float))
    (out / "report.md").write_text(markdown(rep))
    plot(rep, names, model, sign, region, out / "fit.png")
