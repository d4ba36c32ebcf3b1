"""Tokenization: real stage folders -> tokenizer.json + datatrove .ds shards per source."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from factory.core.errors import FactoryError
from factory.core.stage import read_docs
from factory.mix.tokenize import TokenizeConfig, file_sha, run


def read_ds_docs(folder: Path, token_size: int = 2) -> list[list[int]]:
    """Documents back from the .ds + .ds.index files, in file-name order (the documented format)."""
    out = []
    for f in sorted(folder.glob("*.ds")):
        toks = np.fromfile(f, dtype="<u2" if token_size == 2 else "<u4")
        ends = np.fromfile(f"{f}.index", dtype="<u8")
        ends = ends.astype(np.int64)
        starts = np.concatenate([[0], ends[:-1]])
        out += [toks[a:b].tolist() for a, b in zip(starts, ends)]
    return out


def test_round_trip(tokenized, stages):
    tok = Tokenizer.from_file(str(tokenized / "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")
    rows = read_docs(str(stages["curated"])).to_pylist()
    texts = [r["text"] for r in rows if r["kind"] == "synthetic"]
    got = read_ds_docs(tokenized / "synthetic")
    assert len(got) == len(texts) == 160
    for ids, text in zip(got, texts):
        assert ids[-1] == eos and eos not in ids[:-1]
        assert tok.decode(ids[:-1], skip_special_tokens=False) == unicodedata.normalize("NFC", text)


def test_manifest_and_metadata(tokenized):
    m = json.loads((tokenized / "manifest.json").read_text())
    assert m["status"] == "done" and m["stage"] == "tokenize"
    assert m["tokenizer"]["sha256"] == file_sha(tokenized / "tokenizer.json")
    assert {k: v["docs"] for k, v in m["sources"].items()} == {"web": 240, "synthetic": 160, "rewrite": 90}
    web = tokenized / "web"
    files = sorted(web.glob("*.ds"))
    assert [f.name for f in files] == [f"web_{r:05d}_unshuffled.ds" for r in range(3)]  # 100 docs a shard
    assert m["sources"]["web"]["tokens"] == sum(f.stat().st_size for f in files) // 2
    head = Path(f"{files[0]}.metadata").read_text().splitlines()
    assert head[0].endswith("tokenizer.json|2") and int(head[1]) == files[0].stat().st_size // 2


def test_rerun_skips_and_other_config_is_refused(stages, tmp_path):
    cfg = TokenizeConfig(sources={"web": {"path": str(stages["seeds"])}}, tokenizer={"train": {"vocab_size": 300}},
                         out=str(tmp_path / "t"))
    run(cfg)
    shard = tmp_path / "t/web/web_00000_unshuffled.ds"
    before = (shard.stat().st_mtime_ns, (tmp_path / "t/tokenizer.json").read_bytes())
    run(cfg)
    assert (shard.stat().st_mtime_ns, (tmp_path / "t/tokenizer.json").read_bytes()) == before
    with pytest.raises(FactoryError, match="another config"):
        run(cfg.model_copy(update={"eos": "</s>"}))


def test_given_tokenizer_with_a_big_vocabulary_writes_uint32(stages, tokenized, tmp_path):
    tok = Tokenizer.from_file(str(tokenized / "tokenizer.json"))
    tok.add_tokens([f"<extra_{i}>" for i in range(70_000)])
    big = tmp_path / "big.json"
    tok.save(str(big))
    m = run(TokenizeConfig(sources={"web": {"path": str(stages["seeds"])}}, tokenizer={"path": str(big)},
                           out=str(tmp_path / "t")))
    assert m["sources"]["web"]["token_size"] == 4 and m["tokenizer"]["vocab_size"] > 65536
    docs = read_ds_docs(tmp_path / "t/web", token_size=4)
    texts = [r["text"] for r in read_docs(str(stages["seeds"])).to_pylist()]
    assert tok.decode(docs[3][:-1]) == unicodedata.normalize("NFC", texts[3])


def test_bad_tokenize_inputs(stages, tmp_path):
    with pytest.raises(FactoryError, match="no parquet shards") as e:
        run(TokenizeConfig(sources={"web": {"path": str(tmp_path / "nope")}}, out=str(tmp_path / "a")), "tok.yaml")
    assert e.value.field == "sources.web.path" and e.value.where == "tok.yaml"
    with pytest.raises(FactoryError, match="no tokenizer file") as e:
        run(TokenizeConfig(sources={"web": {"path": str(stages["seeds"])}}, tokenizer={"path": str(tmp_path / "x.json")},
                           out=str(tmp_path / "b")))
    assert e.value.field == "tokenizer.path"
    with pytest.raises(FactoryError, match="exactly one"):
        run(TokenizeConfig(sources={"web": {"path": str(stages["seeds"])}}, tokenizer={}, out=str(tmp_path / "c")))
