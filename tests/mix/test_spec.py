"""Mix YAML: the models, the JSON Schema, and one clear error per bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from factory.core.errors import FactoryError
from factory.mix.spec import MixConfig, json_schema, load_mix, mix_from_dict, phase_shares

ROOT = Path(__file__).parents[2]


def base(**over) -> dict:
    d = {"name": "m", "total_tokens": 10_000, "seq_len": 16, "sources": [
        {"name": "web", "path": "web", "kind": "web", "share": 0.5, "max_epochs": 4},
        {"name": "synthetic", "path": "synthetic", "kind": "synthetic", "share": 0.5}]}
    d.update(over)
    return d


def test_schema_file_is_up_to_date():
    on_disk = json.loads((ROOT / "mixes/schema.json").read_text())
    assert on_disk == json_schema(), "run `factory mix schema` to refresh mixes/schema.json"


@pytest.mark.parametrize("name", ["web_only", "phi4", "phi4_anneal", "synthetic_budget"])
def test_shipped_mixes_validate(name):
    cfg = load_mix(ROOT / f"mixes/{name}.yaml")
    assert isinstance(cfg, MixConfig) and cfg.name == name
    assert load_mix(ROOT / f"mixes/{name}.yaml", tokens=123_456).total_tokens == 123_456


def test_phi4_shares():
    cfg = load_mix(ROOT / "mixes/phi4.yaml")
    assert {s.name: s.share for s in cfg.sources} == {"synthetic": 0.4, "web": 0.3, "rewrite": 0.3}


def test_no_phases_means_one_main_phase():
    (name, tokens, _, shares, budgets), = phase_shares(mix_from_dict(base()))
    assert (name, tokens, shares, budgets) == ("main", 10_000, {"web": 0.5, "synthetic": 0.5}, {})


def test_phases_inherit_source_shares():
    cfg = mix_from_dict(base(phases=[{"name": "main", "fraction": 0.8},
                                     {"name": "anneal", "fraction": 0.2, "shares": {"web": 1.0}}]))
    assert [p[3] for p in phase_shares(cfg)] == [{"web": 0.5, "synthetic": 0.5}, {"web": 1.0}]


BAD = [
    ("shares not summing to 1", base(sources=[{"name": "web", "path": "w", "share": 0.5},
                                                {"name": "s", "path": "s", "share": 0.4}]), "sources[*].share", "sum to 0.9"),
    ("phase shares not summing to 1", base(phases=[{"name": "a", "fraction": 1.0, "shares": {"web": 0.7, "synthetic": 0.7}}]),
     "phases[0].shares", "sum to 1.4"),
    ("unknown source", base(phases=[{"name": "a", "fraction": 1.0, "shares": {"web": 0.5, "code": 0.5}}]),
     "phases[0].shares.code", "unknown source 'code'"),
    ("negative epochs", base(sources=[{"name": "web", "path": "w", "share": 1.0, "max_epochs": -1}]),
     "sources[0].max_epochs", "negative"),
    ("negative budget", base(sources=[{"name": "web", "path": "w", "tokens": -5}]), "sources[0].tokens", "negative"),
    ("share and tokens", base(sources=[{"name": "web", "path": "w", "share": 1.0, "tokens": 5}]), "sources[0]", "both"),
    ("no share", base(sources=[{"name": "web", "path": "w"}]), "sources[0].share", "neither share nor tokens"),
    ("duplicate source", base(sources=[{"name": "web", "path": "w", "share": 0.5}, {"name": "web", "path": "v", "share": 0.5}]),
     "sources[1].name", "twice"),
    ("fractions", base(phases=[{"name": "a", "fraction": 0.5}, {"name": "b", "fraction": 0.2}]), "phases[*].fraction", "sum to 0.7"),
    ("fraction and tokens", base(phases=[{"name": "a", "fraction": 0.5, "tokens": 100}]), "phases[0]", "exactly one"),
    ("missing total", {k: v for k, v in base().items() if k != "total_tokens"}, "total_tokens", "missing"),
    ("unknown field", base(sauces=[]), "sauces", "Extra inputs"),
    ("share above 1", base(sources=[{"name": "web", "path": "w", "share": 1.5}]), "sources[*].share.web", "outside"),
]


@pytest.mark.parametrize("case,d,field,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_mix_is_one_error_naming_file_and_field(case, d, field, msg, tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(d))
    with pytest.raises(FactoryError) as e:
        load_mix(f)
    assert e.value.where == str(f) and e.value.field == field, str(e.value)
    assert msg in str(e.value) and str(f) in str(e.value)
