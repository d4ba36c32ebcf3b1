"""Fixtures for the ablation tests: a small tokenized folder (web and a restated-facts source) built
once per session from the offline Wikipedia corpus, and a base mix over it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from factory.core.errors import FactoryError

TINY_MODEL = {"preset": "tiny", "dim": 64, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "ffn_dim": 128}


@pytest.fixture(scope="session")
def tokens(tmp_path_factory) -> Path:
    from factory.core.schema import make_doc
    from factory.core.stage import StageDir
    from factory.mix import tokenize
    from factory.seeds.sources import load_wiki_summaries, wiki_rows

    tmp = tmp_path_factory.mktemp("ablate_data")
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


def base_mix(folder: Path, total_tokens: int = 4096) -> Path:
    p = folder / "base.yaml"
    p.write_text(yaml.safe_dump({
        "name": "base", "total_tokens": total_tokens, "seq_len": 64, "tokenizer": "tokenizer.json", "seed": 0,
        "sources": [{"name": "web", "path": "web", "kind": "web", "share": 0.5},
                    {"name": "synthetic", "path": "synthetic", "kind": "synthetic", "share": 0.5}]}))
    return p
