"""End to end on real parts: tokenize, plan, train (torchrun, 2 gloo ranks), evaluate, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from factory import ablate
from factory.errors import FactoryError

pytestmark = pytest.mark.slow


def _data(tmp: Path) -> Path:
    from factory import tokenize
    from factory.schema import make_doc
    from factory.seeds import load_wiki_summaries, wiki_rows
    from factory.stage import StageDir

    try:
        recs = load_wiki_summaries()[:400]
    except FactoryError:
        pytest.skip("the offline Wikipedia corpus package is not installed")
    web = StageDir(str(tmp / "web"), "web", {"n": 200})
    web.write_docs("part-0.parquet", wiki_rows(records=recs[:200]))
    web.finish()
    # a second source of another kind: restated facts, so the two cells see different text
    syn = StageDir(str(tmp / "syn"), "syn", {"n": 200})
    syn.write_docs("part-0.parquet", [make_doc(f"Here is a fact. {r['title']} is described as: {r['description']}. "
                                               f"{r['extract']}", "synthetic", "test", seed_id=f"wiki:{r['title']}")
                                      for r in recs[200:]])
    syn.finish()
    cfg = tokenize.TokenizeConfig(sources={"web": {"path": str(tmp / "web")}, "synthetic": {"path": str(tmp / "syn")}},
                                  tokenizer={"train": {"vocab_size": 512}}, out=str(tmp / "tokens"))
    tokenize.run(cfg)
    return tmp / "tokens"


def test_two_cell_grid_on_the_real_trainer(tmp_path):
    data = _data(tmp_path)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({
        "name": "base", "total_tokens": 4096, "seq_len": 64, "tokenizer": "tokenizer.json", "seed": 0,
        "sources": [{"name": "web", "path": "web", "kind": "web", "share": 0.5},
                    {"name": "synthetic", "path": "synthetic", "kind": "synthetic", "share": 0.5}]}))
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "e2e", "base_mix": "base.yaml", "data_root": str(data), "seeds": [0], "nproc": 2,
        "model": {"preset": "tiny", "dim": 64, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "ffn_dim": 128},
        "run_config": {"train": {"global_batch": 8, "micro_batch": 4, "tensorboard": False}, "optim": {"lr": 3e-3, "warmup_steps": 2}},
        "vary": [{"sources.synthetic.share": [0.0, 1.0], "sources.web.share": [1.0, 0.0]}],
        "benchmarks": {"builtin": ["wiki_mc", "arith_em"], "n": 16, "source_windows": 4},
        "parallel": "serial"}))
    out = tmp_path / "out"
    r = ablate.run(grid, out, show=False)
    assert r["ran"] == 2
    names = {"wiki_mc", "arith_em", "loss_web", "loss_synthetic"}
    for rec in r["results"]:
        assert set(rec["scores"]) == names
        assert 0 <= rec["scores"]["wiki_mc"]["score"] <= 1 and rec["scores"]["wiki_mc"]["n"] == 16
        assert (Path(rec["run_dir"]) / "hf" / "config.json").exists()
    by = {rec["params"]["synthetic_share"]: rec["scores"] for rec in r["results"]}
    # each model fits the source it was trained on better than the one it never saw
    assert by[0.0]["loss_web"]["score"] < by[1.0]["loss_web"]["score"]
    assert by[1.0]["loss_synthetic"]["score"] < by[0.0]["loss_synthetic"]["score"]
    plan = json.loads(next(out.glob("cells/synthetic_share=1.0*/plan.json")).read_text())
    assert [s["name"] for s in plan["phases"][0]["sources"]] == ["synthetic"]
    assert Path(r["report"]["png"]).exists() and "loss_web" in Path(r["report"]["report_md"]).read_text()
    again = ablate.run(grid, out, show=False)
    assert again["ran"] == 0 and again["skipped"] == 2
