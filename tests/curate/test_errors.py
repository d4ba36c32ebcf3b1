"""Bad input: each case is one FactoryError naming the field, before any work starts."""

from __future__ import annotations

import pytest

from factory.core.errors import FactoryError
from factory.curate import load, run

from .corpus import syn, write_stage


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return write_stage(tmp_path_factory.mktemp("small") / "gen", [syn(f"word{i} " * 40, i) for i in range(3)], shards=1)


def test_missing_input_folder(tmp_path):
    with pytest.raises(FactoryError, match="inputs"):
        run(load(None, inputs=[str(tmp_path / "nope")], out=str(tmp_path / "out")))


def test_input_folder_without_shards(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FactoryError, match="no parquet shards"):
        run(load(None, inputs=[str(tmp_path / "empty")], out=str(tmp_path / "out")))


def test_no_output(small):
    with pytest.raises(FactoryError, match="field 'out'"):
        run(load(None, inputs=[small]))


def test_old_output_key_says_it_is_now_out(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("inputs: [x]\noutput: somewhere\n")
    with pytest.raises(FactoryError) as e:
        load(p)
    msg = str(e.value)
    assert str(p) in msg and "field 'output'" in msg and "`out`" in msg and "rename" in msg
    assert "\n" not in msg


def test_unknown_config_field(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("inputs: [x]\nfilters:\n  gopher_quality: {enabled: true, treshold: 3}\n")
    with pytest.raises(FactoryError, match="filters.gopher_quality.treshold"):
        load(p)


def test_wrong_type_config_field(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("dedup:\n  minhash: {num_buckets: many}\n")
    with pytest.raises(FactoryError, match="dedup.minhash.num_buckets"):
        load(p)


def test_min_above_max(tmp_path):
    with pytest.raises(FactoryError):
        load(None, filters={"length": {"min_chars": 10, "max_chars": 5}})


def test_bad_datatrove_filter_option(small, tmp_path):
    cfg = load(None, inputs=[small], out=str(tmp_path / "out"))
    cfg.filters.gopher_quality.options = {"min_doc_wordz": 5}
    with pytest.raises(FactoryError, match="filters.gopher_quality.options"):
        run(cfg)


def test_missing_benchmark_file(small, tmp_path):
    cfg = load(None, inputs=[small], out=str(tmp_path / "out"))
    cfg.decont.benchmarks = [str(tmp_path / "missing.jsonl")]
    with pytest.raises(FactoryError, match="decont.benchmarks"):
        run(cfg)


def test_output_made_with_another_config(small, tmp_path):
    out = str(tmp_path / "out")
    run(load(None, inputs=[small], out=out, filters={"gopher_quality": {"enabled": False}}))
    with pytest.raises(FactoryError, match="another config"):
        run(load(None, inputs=[small], out=out))
