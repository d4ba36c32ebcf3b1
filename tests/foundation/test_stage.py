"""The stage folder contract: atomic shards, manifest, skip-finished, config mismatch refused."""

import json

import datasets
import pytest

from factory.core.errors import FactoryError
from factory.core.schema import DOC_SCHEMA, doc_id, extra, make_doc
from factory.core.stage import StageDir, licences, read_docs, write_card
from tests.ecosystem import loads_everywhere


def rows(n, source="s"):
    return [make_doc(f"text {i}", "synthetic", source, seed_id=f"seed:{i}", recipe="r", extra={"i": i}) for i in range(n)]


def test_write_read_roundtrip_keeps_provenance(tmp_path):
    st = StageDir(str(tmp_path / "out"), "test", {"a": 1})
    assert st.write_docs("part-0.parquet", rows(3)) == 3
    t = read_docs(str(tmp_path / "out"))
    assert t.schema.equals(DOC_SCHEMA)
    got = t.to_pylist()
    assert [extra(r)["i"] for r in got] == [0, 1, 2]
    assert got[0]["meta"]["seed_id"] == "seed:0" and got[0]["meta"]["recipe"] == "r"
    assert not list((tmp_path / "out").glob(".tmp-*"))


def test_manifest_and_skip_and_config_mismatch(tmp_path):
    url = str(tmp_path / "out")
    st = StageDir(url, "test", {"a": 1}, inputs=["x"])
    st.write_docs("part-0.parquet", rows(2))
    st.counts["out"] = 2
    st.dropped["too_short"] = 1
    m = st.finish()
    assert m["status"] == "done" and m["counts"] == {"out": 2} and m["dropped"] == {"too_short": 1}
    assert m["inputs"] == ["x"] and "python" in m["versions"]
    again = StageDir(url, "test", {"a": 1})
    assert again.done("part-0.parquet") and not again.done("part-1.parquet")
    with pytest.raises(FactoryError) as e:
        StageDir(url, "test", {"a": 2})
    assert url in str(e.value) and "fix:" in str(e.value)


def test_partial_manifest_then_resume_to_done(tmp_path):
    url = str(tmp_path / "out")
    with pytest.raises(RuntimeError), StageDir(url, "test", {"a": 1}) as st:
        st.write_docs("part-0.parquet", rows(2))
        st.counts["out"] = 2
        m = st.partial(left=["part-1"])
        assert m["status"] == "incomplete" and m["counts"] == {"out": 2} and m["left"] == ["part-1"]
        raise RuntimeError("after its own final status, an error does not mark the folder failed")
    assert StageDir.read_manifest(url)["status"] == "incomplete"
    again = StageDir(url, "test", {"a": 1})  # a rerun with the same config resumes the folder
    assert again.status == "incomplete" and again.done("part-0.parquet")
    again.write_docs("part-1.parquet", rows(1))
    assert again.finish()["status"] == "done"


def test_doc_id_is_stable_and_sensitive():
    assert doc_id("t", "s", "a", "r") == doc_id("t", "s", "a", "r")
    assert doc_id("t", "s", "a", "r") != doc_id("t", "s", "a", "r", sample=1)
    assert doc_id("t", "s", "a", "r") != doc_id("u", "s", "a", "r")
    with pytest.raises(KeyError):
        make_doc("t", "web", "s", nonsense=1)


def test_loads_with_datasets_and_card(tmp_path):
    st = StageDir(str(tmp_path / "out"), "test", {})
    st.write_docs("part-0.parquet", rows(4))
    write_card(st, "Test set", {"rows": 4}, "cc-by-sa-3.0")
    ds = datasets.load_dataset("parquet", data_dir=str(tmp_path / "out"), split="train")
    assert len(ds) == 4 and json.loads(ds[0]["meta"]["extra"]) == {"i": 0}
    card = (tmp_path / "out" / "README.md").read_text()
    assert "license: cc-by-sa-3.0" in card and "| rows | 4 |" in card
    assert [p.name for p in (tmp_path / "out" / "data").iterdir()] == ["train-part-0.parquet"]
    loads_everywhere(str(tmp_path / "out"), 4, "cc-by-sa-3.0")


def test_card_licence_follows_the_inputs(tmp_path):
    for name, lic in (("a", "cc-by-sa-3.0"), ("b", "cc-by-sa-3.0"), ("c", "apache-2.0")):
        st = StageDir(str(tmp_path / name), "test", {})
        st.write_docs("part-0.parquet", rows(1))
        write_card(st, name, {}, lic)
        assert st.finish()["licence"] == lic
    plain = tmp_path / "plain.parquet"
    assert licences([str(tmp_path / "a"), str(tmp_path / "b")]) == ["cc-by-sa-3.0"]
    assert licences([str(tmp_path / "a"), str(tmp_path / "c")]) == ["apache-2.0", "cc-by-sa-3.0"]
    assert licences([str(tmp_path / "a"), str(plain)]) == ["cc-by-sa-3.0", "other"]
    st = StageDir(str(tmp_path / "mixed"), "test", {})
    st.write_docs("part-0.parquet", rows(2))
    write_card(st, "mixed", {}, licences([str(tmp_path / "a"), str(tmp_path / "c")]))
    loads_everywhere(str(tmp_path / "mixed"), 2, ["apache-2.0", "cc-by-sa-3.0"])
