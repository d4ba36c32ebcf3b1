"""The filter registry: filters run in the declared order, any datatrove filter is named by class
path with its arguments (and runs, its rejects under its class name), and a wrong class path or
argument is one error naming the field."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from factory.core.errors import FactoryError
from factory.curate import load, run
from factory.curate.pipeline import filter_steps
from factory.curate.registry import DATATROVE, FILTERS

from .corpus import syn, write_stage

C4 = "datatrove.pipeline.filters.C4QualityFilter"


def test_steps_run_in_the_declared_order(tmp_path):
    on = {n: {"enabled": True} for n in FILTERS if n not in (DATATROVE, "quality", "judge", "language")}
    cfg = load(None, out=str(tmp_path / "o"), filters={**on, C4: {"filter_no_terminal_punct": False}},
               dedup={"reference": [str(tmp_path / "seeds")]})
    names = [getattr(s, "reason", None) for s in filter_steps(cfg, str(tmp_path / "rej"), None)]
    expected = ["empty"] + [{"faithfulness": "unfaithful", DATATROVE: "C4QualityFilter"}.get(n, n) for n in on] \
        + ["C4QualityFilter"]
    order = {n: i for i, n in enumerate(["empty", *FILTERS])}
    order.update(unfaithful=order["faithfulness"], C4QualityFilter=order[DATATROVE])
    assert sorted(set(expected), key=order.get) == names


def test_a_datatrove_filter_by_class_path_runs_with_its_arguments(tmp_path):
    # three lines without end punctuation and one proper sentence: C4 keeps only lines that end in one
    short = "\n".join(["a line of plain words that never ends in any stop mark at all"] * 3)
    rows = [syn(short, 0), syn(short + "\nThe last line of this document does end with a full stop.", 1)]
    gen = write_stage(tmp_path / "gen", rows, shards=1)
    off = {n: {"enabled": False} for n in ("gopher_quality", "gopher_repetition", "faithfulness", "length")}
    nodedup = {"exact": False, "minhash": {"enabled": False}}
    m = run(load(None, inputs=[gen], out=str(tmp_path / "c4"), filters={**off, C4: {"min_num_sentences": 1}},
                 dedup=nodedup))
    assert m["dropped"] == {"C4QualityFilter": 1}
    kept = pq.read_table(next((tmp_path / "c4" / "data").glob("*.parquet"))).to_pylist()
    assert [r["text"] for r in kept] == ["The last line of this document does end with a full stop."]
    # the same filter with its other argument: lines without end punctuation are kept
    m2 = run(load(None, inputs=[gen], out=str(tmp_path / "c4b"),
                  filters={**off, DATATROVE: {C4: {"filter_no_terminal_punct": False, "min_num_sentences": -1}}},
                  dedup=nodedup))
    assert m2["dropped"] == {} and m2["counts"]["kept"] == 2


@pytest.mark.parametrize("filters,field,words", [
    ({C4: {"min_num_sentencez": 1}}, f"filters.datatrove[{C4}].min_num_sentencez", ["min_num_sentences"]),
    ({"datatrove.pipeline.filters.NoSuchFilter": {}}, "filters.datatrove[datatrove.pipeline.filters.NoSuchFilter]",
     ["no class 'NoSuchFilter'"]),
    ({DATATROVE: {"nowhere.Thing": None}}, "filters.datatrove[nowhere.Thing]", ["cannot import module 'nowhere'"]),
    ({DATATROVE: {"datatrove.pipeline.readers.JsonlReader": {}}}, "JsonlReader]", ["not a datatrove filter"]),
    ({C4: [1, 2]}, "filters.datatrove", ["expected a mapping of keyword arguments"]),
])
def test_a_wrong_class_path_or_argument_is_one_error_naming_the_field(tmp_path, filters, field, words):
    p = tmp_path / "c.yaml"
    import yaml

    p.write_text(yaml.safe_dump({"inputs": ["x"], "filters": filters}))
    with pytest.raises(FactoryError) as e:
        load(p)
    msg = str(e.value)
    assert str(p) in msg and field in msg and "fix:" in msg and all(w in msg for w in words), msg
