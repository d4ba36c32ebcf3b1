"""What `make demo` made, from its own files: `benchmarks/results/demo.json` and the README's table.

    python benchmarks/demo_summary.py runs/demo            # writes benchmarks/results/demo.json, prints the table

The figures come from the run's manifests (generated, curated, tokens), `timings.json` and
`results.jsonl`; the README's demo tables are `table(json)` as printed, and a test fails when the
two differ.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from factory.mix.plan import teacher_share

OUT = Path(__file__).parent / "results" / "demo.json"
RUN_ALL = False  # reads a finished `make demo`; run_all.py does not run it
BENCHES = ("arith_mc", "wiki_cloze_mc", "wiki_mc")


def summarize(run: Path) -> dict:
    m = {s: json.loads((run / s / "manifest.json").read_text()) for s in ("generated", "curated", "tokens")}
    g, c, t = m["generated"], m["curated"], m["tokens"]
    mixes = [json.loads(ln) for ln in (run / "results.jsonl").read_text().splitlines() if ln.strip()]
    return {
        "generate": {"requests": g["accounting"]["requests"], "docs": g["counts"]["docs"], "rejected": g["dropped"],
                     "completion_tokens": g["accounting"]["completion_tokens"]},
        "curate": {"in": c["counts"]["in"], "kept": c["counts"]["kept"], "rejected": c["dropped"]},
        "tokenize": {k.split(".")[0]: v for k, v in t["counts"].items() if k.endswith(".tokens")},
        "timings_s": json.loads((run / "timings.json").read_text()),
        "mixes": {r["cell"]: {"synthetic_share": r["params"].get("synthetic_share"),
                              **{b: [round(100 * r["scores"][b]["score"], 1), round(196 * r["scores"][b]["stderr"], 1)]
                                 for b in BENCHES},
                              "wiki_val": [round(r["scores"]["wiki_val"]["score"], 3),
                                           round(1.96 * r["scores"]["wiki_val"]["stderr"], 3)]} for r in mixes},
        "plans": {p.parent.name: teacher_share(json.loads(p.read_text())) for p in sorted((run / "mixes").glob("*/plan.json"))},
        "machine": f"{platform.machine()} {platform.processor() or ''} 2-core VM".replace("  ", " "),
        "date": time.strftime("%Y-%m-%d"),
    }


def reasons(d: dict) -> str:
    return ", ".join(f"{n} {r.replace('_', ' ')}" for r, n in sorted(d.items(), key=lambda x: (-x[1], x[0])))


def table(s: dict) -> str:
    """The README's two demo tables, from demo.json."""
    g, c, tk, tm = s["generate"], s["curate"], s["tokenize"], s["timings_s"]
    train = [v for k, v in tm.items() if k.startswith("train ")]
    ev = [v for k, v in tm.items() if k.startswith("eval ")]
    rows = ["| stage | result | wall time |", "|---|---|---|",
            f"| generate | {g['requests']} requests, {g['docs']} documents ({sum(g['rejected'].values())} rejected by the "
            f"recipes: {reasons(g['rejected'])}), {g['completion_tokens'] / 1000:.1f}k completion tokens | {tm['generate']:.0f} s |",
            f"| curate | {c['kept']} kept of {c['in']}: {reasons(c['rejected'])} | {tm['curate']:.0f} s |",
            "| tokenize | " + ", ".join(f"{k} {v / 1000:.1f}k tokens" for k, v in tk.items()) + f" | {tm['tokenize']:.0f} s |",
            f"| train | one model per mix | {' and '.join(f'{v:.0f} s' for v in train)} |",
            f"| eval | the knowledge benchmarks | {' and '.join(f'{v:.0f} s' for v in ev)} |",
            f"| total | | {sum(tm.values()):.0f} s |", "",
            "| mix | synthetic share | " + " | ".join(BENCHES) + " | wiki_val (loss, held out) |",
            "|---|---|" + "---|" * (len(BENCHES) + 1)]
    for name, r in s["mixes"].items():
        rows.append(f"| {name} | {r['synthetic_share']} | " + " | ".join(f"{r[b][0]} ± {r[b][1]}" for b in BENCHES)
                    + f" | {r['wiki_val'][0]} ± {r['wiki_val'][1]} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default="runs/demo")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--note", default="", help="how the run was made, e.g. that the machine was shared")
    a = ap.parse_args(argv)
    s = summarize(Path(a.run))
    if a.note:
        s["note"] = a.note
    Path(a.out).write_text(json.dumps(s, indent=2) + "\n")
    print(table(s))


if __name__ == "__main__":
    main()
