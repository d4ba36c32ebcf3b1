"""Every benchmark result the README cites exists and names its machine and date; a comparison
(one with a ratio) carries ours, anchor, ratio, unit and target too."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
PRODUCT_FILES = {"manifest.json", "eval.json", "run.json", "meta.json", "config.json", "forecast.json", "tasks.json"}
ALWAYS = {"machine", "date"}
COMPARISON = ALWAYS | {"ours", "anchor", "ratio", "unit", "target"}


def cited() -> set[str]:
    names = set(re.findall(r"`([A-Za-z0-9_]+\.json)`", (ROOT / "README.md").read_text()))
    return names - PRODUCT_FILES


def test_readme_cites_results():
    assert len(cited()) >= 20  # the benchmark table is there and read


def test_every_cited_result_exists_with_its_keys():
    problems = []
    for name in sorted(cited()):
        path = RESULTS / name
        if not path.exists():
            problems.append(f"{name}: not in benchmarks/results")
            continue
        keys = set(json.loads(path.read_text()))
        missing = (COMPARISON if "ratio" in keys else ALWAYS) - keys
        if missing:
            problems.append(f"{name}: lacks {sorted(missing)}")
    assert not problems, problems
