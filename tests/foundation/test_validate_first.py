"""Validation before any expensive start: each bad input below is refused in one line naming the
file, the field and the fix, before torchrun, a teacher or a benchmark build starts, and the
refused command writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

from tests.clihelp import cli, one_error


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_mix_phase_with_no_sources_is_refused_at_plan(tmp_path):
    mix = tmp_path / "m.yaml"
    mix.write_text("name: m\ntotal_tokens: 1000\nsources:\n  - {name: web, path: web, share: 1.0}\n"
                   "phases:\n  - {name: main, fraction: 0.9}\n  - {name: anneal, fraction: 0.1, shares: {}}\n")
    one_error(cli("mix", "plan", str(mix), "--data", str(tmp_path), "--out", str(tmp_path / "plan.json")),
              str(mix), "field 'phases[1].shares'", "draws from no source", "web")
    assert listing(tmp_path) == ["m.yaml"]


def train_config(tmp_path: Path, **extra: str) -> Path:
    lines = [f"run_dir: {tmp_path / 'run'}", f"scratch_dir: {tmp_path / 'scratch'}"] + [f"{k}: {v}" for k, v in extra.items()]
    (tmp_path / "t.yaml").write_text("\n".join(lines) + "\n")
    return tmp_path / "t.yaml"


def test_unknown_model_preset_is_refused_before_torchrun(tmp_path):
    cfg = train_config(tmp_path, model="{preset: huge}")
    r = cli("train", str(cfg), "--nproc", "1")
    one_error(r, str(cfg), "field model.preset", "'huge'", "tiny")
    assert "torchrun" not in r.stdout + r.stderr and listing(tmp_path) == ["t.yaml"]


def plan_config(tmp_path: Path) -> Path:
    plan = tmp_path / "plan.json"  # 100 samples of 8 tokens: 6 steps of 16 sequences
    plan.write_text(json.dumps({"seq_len": 8, "seed": 0, "vocab_size": 300, "total_tokens": 800, "phases": [
        {"name": "main", "tokens": 800, "sources": [{"name": "web", "tokens": 800, "path": str(tmp_path)}]}]}))
    return train_config(tmp_path, data=f"{{source: plan, plan: {plan}}}")


def test_train_steps_beyond_the_plan_is_one_line(tmp_path):
    cfg = plan_config(tmp_path)
    r = cli("train", str(cfg), "--nproc", "1", "--set", "train.steps=100")
    one_error(r, str(cfg), "field train.steps", "exceed the 6 the plan holds", "at most 6")
    assert "torchrun" not in r.stdout + r.stderr and listing(tmp_path) == ["plan.json", "t.yaml"]


def test_train_on_an_unknown_phase_is_one_line(tmp_path):
    cfg = plan_config(tmp_path)
    r = cli("train", str(cfg), "--nproc", "1", "--set", "data.phase=anneal")
    one_error(r, str(cfg), "field data.phase", "'anneal'", "main")
    assert "torchrun" not in r.stdout + r.stderr and listing(tmp_path) == ["plan.json", "t.yaml"]


def test_eval_on_a_missing_run_writes_nothing(tmp_path):
    one_error(cli("eval", str(tmp_path / "nope"), cwd=tmp_path), str(tmp_path / "nope"), "hf/ export")
    assert listing(tmp_path) == []


def test_unknown_recipe_names_the_config_file_and_field(tmp_path):
    (tmp_path / "s.jsonl").write_text(json.dumps({"text": "A seed.", "id": "a"}) + "\n")
    gen = tmp_path / "gen.yaml"
    gen.write_text(f"seeds: {tmp_path / 's.jsonl'}\nrecipes: [distill, textbok]\nout: {tmp_path / 'gen'}\n"
                   "teacher: {endpoints: [{base_url: 'http://127.0.0.1:9/v1', model: m}]}\n")
    one_error(cli("generate", str(gen)), str(gen), "field 'recipes[1]'", "no recipe named 'textbok'", "textbook")
    assert listing(tmp_path) == ["gen.yaml", "s.jsonl"]


def test_a_max_tokens_that_holds_no_length_the_recipe_asks_for_is_one_line(tmp_path):
    (tmp_path / "s.jsonl").write_text(json.dumps({"text": "A seed.", "id": "a"}) + "\n")
    gen = tmp_path / "gen.yaml"
    gen.write_text(f"seeds: {tmp_path / 's.jsonl'}\nrecipes: [distill, textbook]\nout: {tmp_path / 'gen'}\n"
                   "recipe_sampling: {max_tokens: 128}\nteacher: {endpoints: [{base_url: 'http://127.0.0.1:9/v1', model: m}]}\n")
    one_error(cli("generate", str(gen)), str(gen), "field 'recipe_sampling.max_tokens'",
              "recipe textbook: max_tokens 128 cannot hold", "at least 203")
    assert listing(tmp_path) == ["gen.yaml", "s.jsonl"]


def test_curate_override_without_a_value_is_one_line(tmp_path):
    one_error(cli("curate", "--in", str(tmp_path), "--out", str(tmp_path / "c"), "--set", "filters.faithfulness"),
              "field '--set'", "key=value")
    assert listing(tmp_path) == []
