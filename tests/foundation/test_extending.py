"""The guide's Extending page (docs/guide/extending.md) names real places: every file it names exists, and every
registry it names (`FILTERS`, `BENCHMARKS`, `PRESETS`, ...) is defined in the file beside it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _section() -> str:
    return (ROOT / "docs" / "guide" / "extending.md").read_text()


def test_extending_names_files_that_exist():
    paths = [p for p in re.findall(r"`((?:factory|train|tests|mixes|seeds)/[^`\s]+)`", _section())]
    assert len(paths) >= 5, paths
    for p in paths:
        assert (ROOT / p).exists(), f"docs/guide/extending.md names {p}, which does not exist"


def test_extending_registries_live_where_it_says():
    section = _section()
    for symbol, where in (("FILTERS", "factory/curate/registry.py"), ("BENCHMARKS", "factory/evaluate/sets.py"),
                          ("PRESETS", "train/model.py")):
        row = next(line for line in section.splitlines() if f"`{symbol}`" in line)
        assert f"`{where}`" in row, row
        assert re.search(rf"^{symbol}\b.*=", (ROOT / where).read_text(), re.M), f"{symbol} is not defined in {where}"
    from factory.teacher.config import Endpoint

    assert {"base_url", "model", "api_key_env", "max_in_flight"} <= set(Endpoint.model_fields)


def test_benchmark_yaml_fields_are_the_ones_the_scorer_reads():
    section = _section()
    src = (ROOT / "train" / "eval.py").read_text()
    for field in ("type", "prompt", "choice_prefix", "normalisation", "data", "fields", "max_new_tokens", "stop",
                  "match", "seq_len", "windows", "higher_is_better", "ds"):
        assert f"`{field}`" in section, field
        assert f'spec.get("{field}"' in src or f'spec["{field}"]' in src, field
