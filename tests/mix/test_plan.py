"""`factory mix plan`: unique tokens, the table, plan.json, bad shards, and the loader drawing it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from tokenizers import Tokenizer

from factory.core.errors import FactoryError
from factory.mix.plan import plan
from train.loader import MixLoader

ROOT = Path(__file__).parents[2]


def mix_file(tmp_path: Path, **over) -> Path:
    d = {"name": "t", "total_tokens": 6000, "seq_len": 32, "tokenizer": "tokenizer.json", "seed": 3, "sources": [
        {"name": "synthetic", "path": "synthetic", "kind": "synthetic", "share": 0.4, "max_epochs": 20},
        {"name": "web", "path": "web", "kind": "web", "share": 0.3, "max_epochs": 4},
        {"name": "rewrite", "path": "rewrite", "kind": "rewrite", "share": 0.3, "max_epochs": 8}]}
    d.update(over)
    f = tmp_path / "mix.yaml"
    f.write_text(yaml.safe_dump(d, sort_keys=False))
    return f


def test_plan_shape_and_numbers(data, tmp_path):
    p = plan(mix_file(tmp_path), data, out=tmp_path / "plan.json")
    assert json.loads((tmp_path / "plan.json").read_text()) == p
    assert set(p) == {"mix", "seq_len", "seed", "tokenizer", "vocab_size", "total_tokens", "fit", "capped", "phases"}
    assert p["fit"] == "refuse" and p["capped"] == []
    assert Path(p["tokenizer"]).is_absolute() and p["vocab_size"] == Tokenizer.from_file(p["tokenizer"]).get_vocab_size()
    (ph,) = p["phases"]
    assert ph["name"] == "main" and ph["tokens"] == p["total_tokens"] == 6000 // 32 * 32
    manifest = json.loads((data / "manifest.json").read_text())
    for s in ph["sources"]:
        assert set(s) == {"name", "path", "kind", "share", "unique_tokens", "tokens", "epochs", "max_epochs"}
        assert Path(s["path"]).is_absolute() and s["tokens"] % 32 == 0
        assert s["unique_tokens"] == manifest["sources"][s["name"]]["tokens"]
        assert s["epochs"] == round(s["tokens"] / 32 / ((s["unique_tokens"] - 1) // 32), 4)
    assert sum(s["tokens"] for s in ph["sources"]) == ph["tokens"]
    assert [s["tokens"] // 32 for s in ph["sources"]] == [75, 56, 56]  # 187 samples, 0.4/0.3/0.3, largest remainder


def test_loader_draws_exactly_the_plan(data, tmp_path):
    f = mix_file(tmp_path, phases=[{"name": "main", "fraction": 0.75},
                                   {"name": "anneal", "fraction": 0.25, "shares": {"web": 0.6, "rewrite": 0.4}}])
    p = plan(f, data)
    ld = MixLoader(p, 0, 1, 1)
    rows = list(ld)
    assert len(rows) == sum(ph["tokens"] for ph in p["phases"]) // 32
    rep = ld.check_against_plan()
    assert all(ph["complete"] for ph in rep["phases"].values())
    for ph in p["phases"]:
        for s in ph["sources"]:
            assert rep["phases"][ph["name"]]["sources"][s["name"]]["drawn_tokens"] == s["tokens"]
    tot = {n: sum(s["epochs"] for ph in p["phases"] for s in ph["sources"] if s["name"] == n) for n in ld.names}
    assert ld.epochs_seen() == pytest.approx(tot, abs=1e-3)
    # the windows are real token spans of the shards
    web = np.concatenate([np.fromfile(x, dtype="<u2") for x in sorted((data / "web").glob("*.ds"))])
    g = next(i for i in range(len(ld.src)) if ld.src[i] == ld.names.index("web"))
    _, _, j = ld.window_of(g)
    assert rows[g][0].tolist() == web[j * 32:j * 32 + 33].tolist()


def test_over_max_epochs_is_refused_by_default_and_warned_when_asked(data, tmp_path):
    from factory.mix.plan import make_plan
    from factory.mix.spec import load_mix

    f = mix_file(tmp_path, total_tokens=150_000)
    with pytest.raises(FactoryError, match="'web' is drawn [0-9.]+ epochs, over its max_epochs 4") as e:
        plan(f, data)
    assert e.value.field == "sources[1].max_epochs" and "fit: cap" in e.value.fix
    p, warnings = make_plan(load_mix(f, fit="warn"), data, str(f))
    assert any("'web'" in w and "over its max_epochs 4" in w for w in warnings) and p["capped"] == []


def epochs(p) -> dict[str, float]:
    from factory.mix.plan import totals

    return {k: v["epochs"] for k, v in totals(p).items()}


def test_cap_lowers_a_share_to_its_max_epochs_and_gives_the_rest_to_the_others(data, tmp_path):
    from factory.mix.plan import make_plan
    from factory.mix.spec import load_mix

    f = mix_file(tmp_path, total_tokens=80_000, fit="cap")
    free, _ = make_plan(load_mix(f, fit="warn"), data, str(f))
    assert epochs(free)["rewrite"] > 8  # asked 0.3 of 80k: over rewrite's max_epochs 8
    p, warnings = make_plan(load_mix(f), data, str(f))
    ep, rows = epochs(p), {s["name"]: s for s in p["phases"][0]["sources"]}
    assert p["fit"] == "cap" and p["capped"] == ["rewrite"]
    assert ep["rewrite"] <= 8 and ep["rewrite"] > 7.9 and ep["web"] <= 4 and ep["synthetic"] <= 20
    assert rows["rewrite"]["asked_share"] == 0.3 and rows["rewrite"]["share"] < 0.3 and "asked_share" not in rows["web"]
    assert p["total_tokens"] == free["total_tokens"]  # the others fill the phase, in proportion 0.4 : 0.3
    assert rows["synthetic"]["tokens"] > 0.4 * 80_000 and rows["web"]["tokens"] > 0.3 * 80_000
    assert rows["synthetic"]["tokens"] / rows["web"]["tokens"] == pytest.approx(4 / 3, rel=0.01)
    assert [w for w in warnings if w.startswith("source 'rewrite' capped at its max_epochs 8: share 0.3 -> 0.2")]


def test_cap_in_phases_and_when_nothing_can_fill_the_phase(data, tmp_path):
    from factory.mix.plan import make_plan
    from factory.mix.spec import load_mix

    f = mix_file(tmp_path, total_tokens=80_000, fit="cap", phases=[
        {"name": "main", "fraction": 0.8}, {"name": "anneal", "fraction": 0.2, "shares": {"web": 0.3, "synthetic": 0.2, "rewrite": 0.5}}])
    p, _ = make_plan(load_mix(f), data, str(f))
    assert "rewrite" in p["capped"]
    assert all(e <= m for e, m in zip((epochs(p)[k] for k in ("web", "synthetic", "rewrite")), (4, 20, 8)))
    assert sum(s["tokens"] for ph in p["phases"] for s in ph["sources"]) == p["total_tokens"]
    with pytest.raises(FactoryError, match="at its max_epochs: the data cannot fill") as e:
        make_plan(load_mix(mix_file(tmp_path, total_tokens=2_000_000, fit="cap")), data, "m.yaml")
    assert e.value.field == "total_tokens" and "add data" in e.value.fix


def test_cli_plan_fit_option(data, tmp_path):
    f = mix_file(tmp_path, total_tokens=100_000)
    r = subprocess.run([sys.executable, "-m", "factory.cli", "mix", "plan", str(f), "--data", str(data)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "over its max_epochs" in r.stderr and "fit: cap" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run([sys.executable, "-m", "factory.cli", "mix", "plan", str(f), "--data", str(data), "--fit", "cap",
                        "--out", str(tmp_path / "plan.json")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "capped at its max_epochs" in r.stdout + r.stderr, r.stderr
    assert json.loads((tmp_path / "plan.json").read_text())["capped"]


def test_missing_shards(data, tmp_path):
    shutil.rmtree(data / "rewrite")
    with pytest.raises(FactoryError, match="no .ds shards") as e:
        plan(mix_file(tmp_path), data)
    assert e.value.field == "sources[2].path" and e.value.where.endswith("mix.yaml")


def test_unknown_source_folder(data, tmp_path):
    f = mix_file(tmp_path)
    d = yaml.safe_load(f.read_text())
    d["sources"][0]["path"] = "code"
    f.write_text(yaml.safe_dump(d))
    with pytest.raises(FactoryError, match="no .ds shards") as e:
        plan(f, data)
    assert e.value.field == "sources[0].path"


def test_empty_source_with_a_share(data, tmp_path):
    for x in (data / "rewrite").glob("*.ds*"):
        x.write_bytes(b"")
    with pytest.raises(FactoryError, match="too few for one window") as e:
        plan(mix_file(tmp_path), data)
    assert e.value.field == "sources[2].path"


def test_tokenizer_that_did_not_make_the_shards(data, tmp_path):
    other = Tokenizer.from_file(str(data / "tokenizer.json"))
    other.add_tokens(["<other>"])
    other.save(str(data / "other.json"))
    with pytest.raises(FactoryError, match="made with another tokenizer") as e:
        plan(mix_file(tmp_path, tokenizer="other.json"), data)
    assert e.value.field == "tokenizer"
    # shards without source.json: caught by token width and by token ids beyond the vocabulary
    for x in data.glob("*/source.json"):
        x.unlink()
    big = Tokenizer.from_file(str(data / "tokenizer.json"))
    big.add_tokens([f"<x{i}>" for i in range(70_000)])
    big.save(str(data / "big.json"))
    with pytest.raises(FactoryError, match="2-byte tokens, the tokenizer .* needs 4-byte"):
        plan(mix_file(tmp_path, tokenizer="big.json"), data)
    small = Tokenizer.from_file(str(data / "tokenizer.json"))
    from tokenizers import models
    small.model = models.BPE(vocab={"a": 0, "b": 1}, merges=[])
    small.save(str(data / "small.json"))
    with pytest.raises(FactoryError, match="holds token id"):
        plan(mix_file(tmp_path, tokenizer="small.json"), data)


def test_truncated_shard(data, tmp_path):
    f = sorted((data / "web").glob("*.ds"))[0]
    f.write_bytes(f.read_bytes()[:-4])
    with pytest.raises(FactoryError, match="truncated"):
        plan(mix_file(tmp_path), data)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from factory.cli import main; main()", *args], capture_output=True,
                          text=True, cwd=ROOT, env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"})


def test_cli_plan_table_and_errors(data, tmp_path):
    r = cli("mix", "plan", str(ROOT / "mixes/phi4_anneal.yaml"), "--data", str(data), "--tokens", "20000",
            "--out", str(tmp_path / "plan.json"))
    assert r.returncode == 0, r.stderr
    for word in ("mix phi4_anneal", "anneal", "synthetic", "rewrite", "epochs", "all"):
        assert word in r.stderr
    p = json.loads((tmp_path / "plan.json").read_text())
    assert [ph["name"] for ph in p["phases"]] == ["main", "anneal"] and p["total_tokens"] <= 20000
    r = cli("mix", "plan", str(ROOT / "mixes/phi4.yaml"), "--data", str(tmp_path / "nowhere"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "error:" in r.stderr and "field 'tokenizer'" in r.stderr


def test_cli_tokenize(stages, tmp_path):
    r = cli("tokenize", "--source", f"web={stages['seeds']}", "--source", f"syn={stages['curated']}:synthetic",
            "--vocab", "300", "--out", str(tmp_path / "t"))
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "t/manifest.json").read_text())
    assert m["sources"]["syn"]["docs"] == 160 and m["sources"]["web"]["docs"] == 240
