"""Every benchmark result the README or the guide (docs/guide/*.md) cites exists and names its machine
and date; a comparison (one with a ratio) carries ours, anchor, ratio, unit and target too."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.readme_blocks import doc_text

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
PRODUCT_FILES = {"manifest.json", "eval.json", "run.json", "meta.json", "config.json", "forecast.json", "tasks.json", "calibration.json"}
ALWAYS = {"machine", "date"}
COMPARISON = ALWAYS | {"ours", "anchor", "ratio", "unit", "target"}


def cited() -> set[str]:
    names = set(re.findall(r"`([A-Za-z0-9_]+\.json)`", doc_text()))
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


def test_each_cited_ratio_is_in_a_row_that_cites_it():
    """A comparison's ratio appears (to 1-3 decimals) in a line of the README or the guide that cites its
    JSON: the text says what the committed result says."""
    lines = doc_text().splitlines()
    problems = []
    for name in sorted(cited()):
        path = RESULTS / name
        r = json.loads(path.read_text()).get("ratio") if path.exists() else None
        if not isinstance(r, (int, float)):
            continue
        forms = {f"{r:.1f}", f"{r:.2f}", f"{r:.3f}", f"{r:,.0f}x"}
        if not any(f"`{name}`" in ln and any(f in ln for f in forms) for ln in lines):
            problems.append(f"{name}: ratio {r} in no line that cites it")
    assert not problems, problems


def test_the_suite_times_in_the_readme_are_the_measured_ones():
    t = json.loads((RESULTS / "test_suite.json").read_text())
    text = " ".join((ROOT / "README.md").read_text().split())  # beside `make test` at the top
    over = f", over its {t['budget_min']}-minute budget" if not t["budget_met"] else ""
    said = f"`make test` {t['make_test_min']} min for {t['tests']} tests{over}, `make test-fast` {t['test_fast_min']} min"
    assert said in text, said


def test_the_demo_tables_are_the_committed_run():
    """The README's demo tables and its loss gap are `benchmarks/demo_summary.py`'s rendering of demo.json."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_summary", ROOT / "benchmarks" / "demo_summary.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    d = json.loads((RESULTS / "demo.json").read_text())
    readme = (ROOT / "README.md").read_text()
    assert mod.table(d) in readme
    gap = d["mixes"]["phi4"]["wiki_val"][0] - d["mixes"]["web_only"]["wiki_val"][0]
    assert f"worse on web knowledge by {gap:.2f} nats/token" in " ".join(readme.split())
    assert f"curation kept {d['curate']['kept']} of the {d['curate']['in']} documents" in " ".join(readme.split())
    ph = d["plans"]["phi4"]  # the demo's plans stay inside their caps, and the README says what that leaves
    assert ph["capped"] and ph["drawn"] <= ph["asked"]
    assert f"asks for {ph['asked']:.0%} teacher-made text" in " ".join(readme.split())
    assert f"the phi4 model draws {ph['drawn']:.1%} teacher-made text" in " ".join(readme.split())
