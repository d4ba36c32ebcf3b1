"""The pilot's forecast vs the run it forecasts: `factory generate CONFIG --pilot N`, then the
full generate and curate of the same config, on the local llama.cpp teacher.

Default: the demo's generation (`seeds/generate_demo.yaml`, 16 wiki seeds, three recipes, two
local replicas) with a pilot of 4. ours = the forecast of completion tokens, anchor = what the
full run paid, ratio = ours / anchor (target: within 15%, 0.85 - 1.15); documents generated and
kept and the wall time are compared the same way, each with the forecast's 95% interval.

    python benchmarks/generation_forecast.py [--config seeds/generate_demo.yaml] [--pilot 4]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from generation_stub import cpu_model  # noqa: E402


def factory(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-c", "from factory.cli import main; main()", *args], cwd=cwd, check=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "seeds" / "generate_demo.yaml"))
    ap.add_argument("--seeds-config", default=str(ROOT / "seeds" / "wiki.yaml"))
    ap.add_argument("--pilot", type=int, default=4)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "generation_forecast.json"))
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-forecast-"))
    factory("seeds", a.seeds_config, "--out", "runs/seeds", cwd=work)
    factory("generate", a.config, "--out", "runs/generate", "--pilot", str(a.pilot), cwd=work)
    fc = json.loads((work / "runs" / "generate-pilot" / "forecast.json").read_text())
    factory("generate", a.config, "--out", "runs/generate", cwd=work)
    factory("curate", "--in", "runs/generate", "--out", "runs/curated", cwd=work)
    gen = json.loads((work / "runs" / "generate" / "manifest.json").read_text())
    cur = json.loads((work / "runs" / "curated" / "manifest.json").read_text())
    actual = {"completion_tokens": gen["accounting"]["completion_tokens"], "documents_generated": gen["counts"]["docs"],
              "documents_kept": cur["counts"]["kept"], "wall_hours": gen["timings"]["wall_s"] / 3600}
    compared = {}
    for k, v in actual.items():
        e = fc[k]
        compared[k] = {"forecast": round(e["total"], 4), "low": round(e["low"], 4), "high": round(e["high"], 4),
                       "actual": round(v, 4), "ratio": round(e["total"] / v, 3) if v else None,
                       "inside": e["low"] <= v <= e["high"]}
    c = compared["completion_tokens"]
    result = {"ours": c["forecast"], "anchor": c["actual"], "ratio": c["ratio"],
              "unit": "completion tokens: the pilot's forecast / the full run", "target": "0.85 - 1.15",
              "pilot_seeds": fc["pilot_seeds"], "seeds": fc["seeds"], "compared": compared, "config": Path(a.config).name,
              "machine": f"{platform.machine()} {os.cpu_count()} cores, {cpu_model()}; local llama.cpp replicas",
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
