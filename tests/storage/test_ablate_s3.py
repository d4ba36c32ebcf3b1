"""Ablations and reports on object storage, against a real S3-compatible server on loopback.

Every cell's mix, plan, run and eval.json, results.jsonl and the report go to the URL; a rerun on a
machine without the local copy skips the finished runs by what the store holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from factory import ablate
from tests.train.conftest import tiny_plan  # noqa: F401 - a fixture: two real tokenized sources
from train import storage

SHARES = {"sources.synthetic.share": [0.0, 0.5, 1.0], "sources.web.share": [1.0, 0.5, 0.0]}
REPORT = ("table.md", "summary.json", "report.md", "plot.png")


def _grid(tmp_path: Path, data_root: Path, **over) -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({
        "name": "base", "total_tokens": 4096, "seq_len": 64, "tokenizer": "tokenizer.json", "seed": 0,
        "sources": [{"name": "web", "path": "web", "kind": "web", "share": 0.5},
                    {"name": "synthetic", "path": "synthetic", "kind": "synthetic", "share": 0.5}]}))
    data_root.mkdir(exist_ok=True)
    g = {"name": "g", "base_mix": "base.yaml", "data_root": str(data_root), "seeds": [0, 1, 2], "vary": [SHARES],
         "parallel": "serial", "benchmarks": {"builtin": [], "source_loss": False}, **over}
    p = tmp_path / "grid.yaml"
    p.write_text(yaml.safe_dump(g, sort_keys=False))
    return p


def _fake_plan(mix_path, data_root):
    mix = yaml.safe_load(Path(mix_path).read_text())
    return {"mix": mix["name"], "seq_len": 64, "seed": 0, "tokenizer": "t.json", "vocab_size": 32,
            "total_tokens": mix["total_tokens"], "phases": []}


class FakeTrainer:
    """A fast stand-in for the trainer (dependency injection in this test only): it reads the plan
    from local disk, as the trainer does, and leaves a run.json on the store."""

    def __init__(self):
        self.calls = []

    def __call__(self, cfg: dict) -> str:
        self.calls.append(cfg)
        seed = json.loads(Path(cfg["data"]["plan"]).read_text())["seed"]
        storage.write_text(storage.join(cfg["run_dir"], "run.json"), json.dumps({"seed": seed}))
        return cfg["run_dir"]


def _fake_eval(run_dir, benches, max_items, batch_size):
    seed = json.loads(storage.read_text(storage.join(run_dir, "run.json")))["seed"]
    return {"acc": {"score": 0.25 + seed / 100, "n": 10, "stderr": 0.1, "higher_is_better": True}}


def test_grid_on_the_store_and_reruns_from_it(s3_bucket, tmp_path):
    grid, out = _grid(tmp_path, tmp_path / "data"), f"{s3_bucket}/abl"
    kw = dict(eval_fn=_fake_eval, plan_fn=_fake_plan, show=False)
    fake = FakeTrainer()
    r1 = ablate.run(grid, out, train_fn=fake, scratch=tmp_path / "m1", **kw)
    assert r1["ran"] == 9 and r1["out"] == out
    assert all(c["run_dir"].startswith(f"{out}/cells/") and c["run_dir"].endswith("/run") for c in fake.calls)
    assert len(storage.glob(f"{out}/cells/*/seed*/eval.json")) == 9
    assert len(storage.glob(f"{out}/cells/*/seed*/run/run.json")) == 9
    for cell in {r["cell"] for r in r1["results"]}:
        for name in ("mix.yaml", "plan.json", "seed0/plan.json"):
            assert storage.exists(f"{out}/cells/{cell}/{name}"), name
    assert len(storage.read_text(f"{out}/results.jsonl").splitlines()) == 9
    for name in REPORT:
        assert r1["report"][{"table.md": "table_md", "summary.json": "summary_json", "report.md": "report_md",
                             "plot.png": "png"}[name]] == f"{out}/report/{name}"
        assert storage.exists(f"{out}/report/{name}"), name
    assert "synthetic_share" in storage.read_text(f"{out}/report/table.md")
    assert storage.read_bytes(f"{out}/report/plot.png")[:4] == b"\x89PNG"

    # another machine: no local copy; the store says what is done
    fake2 = FakeTrainer()
    r2 = ablate.run(grid, out, train_fn=fake2, scratch=tmp_path / "m2", **kw)
    assert r2["ran"] == 0 and r2["skipped"] == 9 and fake2.calls == []
    assert len(r2["results"]) == 9

    victim = storage.glob(f"{out}/cells/*/seed1/eval.json")[0]
    storage.rm(victim)
    fake3 = FakeTrainer()
    r3 = ablate.run(grid, out, train_fn=fake3, scratch=tmp_path / "m3", **kw)
    assert r3["ran"] == 1 and fake3.calls[0]["seed"] == 1 and storage.exists(victim)
    assert Path(fake3.calls[0]["data"]["plan"]).is_relative_to(tmp_path / "m3")  # the plan, rebuilt from the store


def test_a_missing_bucket_is_one_clear_line(s3_server, tmp_path):
    from factory.cli import app
    from factory.core.errors import FactoryError

    res = CliRunner().invoke(app, ["ablate", str(_grid(tmp_path, tmp_path / "data")), "--out", "s3://no-such-bucket-abl/x"])
    assert isinstance(res.exception, FactoryError), res.output
    msg = str(res.exception)
    assert "s3://no-such-bucket-abl/x/grid.yaml" in msg and "does not exist" in msg and "\n" not in msg


@pytest.mark.slow
def test_real_trainer_and_scorer_on_the_store(s3_bucket, tiny_plan, tmp_path):  # noqa: F811
    bench = tmp_path / "mc.jsonl"
    bench.write_text("".join(json.dumps({"question": q, "choices": ["cat", "tree"], "answer": a}) + "\n"
                             for q, a in (("the small", 0), ("a big red", 1))))
    grid = _grid(tmp_path, tiny_plan.parent, seeds=[0], nproc=1, vary=[{"sources.synthetic.share": [0.5]}],
                 model={"preset": "tiny", "dim": 64, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "ffn_dim": 128},
                 run_config={"train": {"global_batch": 8, "micro_batch": 4, "tensorboard": False},
                             "checkpoint": {"every": 4}, "eval": {"batches": 1}},
                 benchmarks={"builtin": [], "source_loss": True, "source_windows": 4, "files": [str(bench)]})
    out = f"{s3_bucket}/real"
    r = ablate.run(grid, out, show=False, scratch=tmp_path / "m1")
    assert r["ran"] == 1
    rec = r["results"][0]
    assert set(rec["scores"]) == {"mc", "mc_bpb", "loss_web", "loss_synthetic"} and rec["scores"]["mc"]["n"] == 2
    run = rec["run_dir"]
    assert run.startswith(f"{out}/cells/") and json.loads(storage.read_text(f"{run}/run.json"))["steps"] == 7
    for name in ("hf/config.json", "hf/model.safetensors", "checkpoints/step_0000007/meta.json", "metrics.jsonl"):
        assert storage.exists(f"{run}/{name}"), name
    assert storage.exists(f"{out}/report/report.md") and storage.exists(f"{out}/benchmarks/loss_web/benchmark.yaml")
    again = ablate.run(grid, out, show=False, scratch=tmp_path / "m2")
    assert again["ran"] == 0 and again["skipped"] == 1 and again["results"] == r["results"]
