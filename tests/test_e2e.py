"""The whole path on real parts at a small size: local Ray, the llama.cpp teacher over HTTP,
datatrove, BPE + .ds shards, two mix plans, 2-rank torchrun FSDP2 training, evaluation, report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from factory.core.stage import read_docs
from tests.ecosystem import loads_everywhere

REPO = Path(__file__).resolve().parent.parent
FACTORY = [sys.executable, "-m", "factory.cli"]


def factory(*args, timeout=1500):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([*FACTORY, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    small = ["--out", str(out), "--seeds", "5", "--web-docs", "120", "--replicas", "1", "--tokens", "16384", "--seq-len", "64", "--eval-items", "40"]
    r = factory("demo", *small)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    # every stage wrote its folder with a finished manifest
    for stage in ("web", "seeds", "generated", "curated", "tokens"):
        m = json.loads((out / stage / "manifest.json").read_text())
        assert m["status"] == "done", stage
        assert m["config_hash"] and m["versions"]["python"]

    # generated documents came from the teacher, with provenance kept through curation
    gen = json.loads((out / "generated" / "manifest.json").read_text())
    assert gen["counts"].get("requests", 0) > 0 or gen["counts"].get("docs", 0) > 0
    kept = pq.read_table(next((out / "curated" / "data").glob("*.parquet"))).to_pylist()
    assert kept, "curation kept no document"
    meta = kept[0]["meta"]
    assert meta["seed_id"].startswith("wiki:") and meta["recipe"] and meta["teacher_model"] and meta["prompt_sha"]
    # each folder of documents loads in pyarrow, datasets and the Hub's card parser, with the seeds' licence
    for stage in ("web", "seeds", "generated", "curated"):
        loads_everywhere(str(out / stage), len(read_docs(str(out / stage))), "cc-by-sa-3.0")

    # two plans, two trained models, one report with a table and a PNG plot
    for mix in ("web_only", "phi4"):
        plan = json.loads((out / "mixes" / mix / "plan.json").read_text())
        assert plan["phases"][0]["sources"]
        assert (out / "train" / mix / "hf" / "config.json").exists()
    results = [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines()]
    assert {r["cell"] for r in results} == {"web_only", "phi4"}
    assert all("wiki_mc" in r["scores"] for r in results)
    table = (out / "report" / "table.md").read_text()
    assert "web_only" in table and "phi4" in table
    assert (out / "report" / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "stage wall times" in r.stderr + r.stdout

    # a rerun finds every stage finished and does not call the teacher again
    r2 = factory("demo", *small)
    assert r2.returncode == 0, r2.stderr[-3000:]
    gen2 = json.loads((out / "generated" / "manifest.json").read_text())
    assert gen2["counts"] == gen["counts"]

    # a mix naming an unknown source: one clear error, finished outputs intact
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "mixes" / "phi4.yaml").read_text().replace("path: rewrite", "path: no_such_source"))
    r3 = factory("demo", *small, "--mix", str(bad))
    assert r3.returncode == 2
    err = r3.stderr
    assert "bad.yaml" in err and "no_such_source" in err and "Traceback" not in err
    assert (out / "report" / "plot.png").exists() and (out / "curated" / "manifest.json").exists()
