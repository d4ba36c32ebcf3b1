"""The README's "Walk through the stages" block, run as written.

The bash block between `<!-- stages-walkthrough -->` and `<!-- /stages-walkthrough -->` runs with
bash in a fresh folder that holds only the repository's `seeds/` and `mixes/` (no `make demo`
output, no earlier `runs/`), in a user's environment (HOME a temp folder, no Ray address, token or
S3 setting of the caller). The harness adds only `set -e -o pipefail` and `set -x`; the commands,
their flags and their sizes are the README's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.readme_blocks import ROOT, readme_blocks, run_bash, user_env

pytestmark = pytest.mark.slow

START, END = "<!-- stages-walkthrough -->", "<!-- /stages-walkthrough -->"


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_readme_stages_walkthrough(tmp_path):
    blocks = readme_blocks(START, END)
    assert len(blocks) == 1, "the stages walk-through is one bash block"
    work = tmp_path / "work"
    work.mkdir()
    for name in ("seeds", "mixes"):  # what the commands read from the repository
        (work / name).symlink_to(ROOT / name)
    (tmp_path / "home").mkdir()
    log = tmp_path / "walkthrough.log"
    rc, _ = run_bash("set -e -o pipefail\nPS4='+ [$SECONDS s] '\nset -x\n" + blocks[0], user_env(tmp_path / "home"),
                     log, timeout_s=1500, cwd=work)
    out = log.read_text()
    print(out[-6000:])
    assert rc == 0, f"the walk-through failed (exit {rc}):\n{out[-8000:]}"
    assert "Traceback" not in out and "has 0 documents" not in out, out[-8000:]

    runs = work / "runs"
    for stage in ("seeds", "seeds_curated", "generate", "curated", "tokens"):
        assert manifest(runs / stage)["status"] == "done", stage
    gen = manifest(runs / "generate")
    assert gen["counts"]["docs"] > 0 and gen["counts"]["shards_done"] == gen["counts"]["shards"]
    tokens = manifest(runs / "tokens")["sources"]
    assert set(tokens) == {"web", "synthetic", "rewrite"} and all(v["docs"] > 0 for v in tokens.values()), tokens
    plan = json.loads((runs / "phi4/plan.json").read_text())
    assert {s["name"] for ph in plan["phases"] for s in ph["sources"]} == {"web", "synthetic", "rewrite"}
    run = json.loads((runs / "train/run.json").read_text())
    assert run["steps"] > 0 and run["world_size"] == 2 and run["hf_dir"], run
    scores = json.loads((runs / "train/eval.json").read_text())
    assert scores["wiki_mc"]["n"] > 0 and 0 <= scores["wiki_mc"]["score"] <= 1, scores
