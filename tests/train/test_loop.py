"""2-rank gloo runs of the FSDP2 loop: learning, rank agreement, exact resume after a kill,
an N-rank checkpoint on M ranks, the HF export of a run, and failures that say what went wrong."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.train.conftest import hold_after_checkpoint, tiny_config
from train import launch
from train.metrics import read

pytestmark = pytest.mark.slow


def losses(run_dir) -> dict[int, tuple[float, float]]:
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in read(run_dir) if "loss" in r}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """The uninterrupted reference: 12 steps on 2 ranks, checkpoints every 4 (keeps 8 and 12)."""
    return launch.run(tiny_config(tmp_path_factory.mktemp("base") / "run"), nproc=2, echo=None)


def test_learns_and_ranks_agree(base_run):
    s = json.loads((base_run / "run.json").read_text())
    m = losses(base_run)
    assert sorted(m) == list(range(1, 13))
    assert m[12][0] < m[1][0] - 0.5  # learns the synthetic bigrams
    assert s["status"] == "done" and s["world_size"] == 2 and s["steps"] == 12
    assert s["val_loss"] is not None and s["val_loss"] < m[1][0]
    ranks = s["ranks"]
    assert len(ranks) == 2
    assert ranks[0]["params_sha"] == ranks[1]["params_sha"]  # the same full weights on both ranks
    assert ranks[0]["loss"] == ranks[1]["loss"] == s["final_loss"]
    assert ranks[0]["first_local_loss"] != ranks[1]["first_local_loss"]  # but they saw different data
    rec = read(base_run)[0]
    assert {"loss", "grad_norm", "lr", "tokens_per_s", "mfu", "step_s"} <= set(rec)
    ckpts = sorted(p.name for p in (base_run / "checkpoints").iterdir())
    assert ckpts == ["step_0000008", "step_0000012"]  # keep=2, no leftover .tmp
    # each step line carries a rate, the elapsed time and an ETA that is a time
    steps = re.findall(r"^\[train\] step (\d+)/12 .* ([\d,]+) tok/s elapsed (\d:\d\d:\d\d) eta (\S+)$",
                       (base_run / "train.log").read_text(), re.M)
    assert [int(s[0]) for s in steps] == list(range(1, 13)), steps
    assert all(re.fullmatch(r"\d:\d\d:\d\d", s[3]) for s in steps) and steps[-1][3] == "0:00:00", steps


def test_export_of_a_run_matches_transformers(base_run):
    transformers = pytest.importorskip("transformers")
    from train.model import load_for_eval

    ours, _ = load_for_eval(base_run)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(base_run / "hf"), torch_dtype=torch.float32).eval()
    x = torch.randint(0, 128, (2, 64), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours(x), atol=2e-5, rtol=1e-4)


def test_kill_and_resume_is_exact(base_run, tmp_path):
    """SIGKILL the whole torchrun group once checkpoint 4 exists; resuming reproduces the curve."""
    cfg = launch.prepare(tiny_config(tmp_path / "run", **{"train.steps": 12}))
    cmd = launch.torchrun_cmd(tmp_path / "run" / "config.yaml", 2)
    proc = subprocess.Popen(cmd, cwd=launch.REPO_ROOT, env=hold_after_checkpoint(tmp_path / "hold", 4), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = tmp_path / "run" / "checkpoints" / "step_0000004" / "meta.json"
    deadline = time.time() + 120
    while not ck.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ck.exists(), "the run never wrote its step-4 checkpoint"
    seen = sorted((tmp_path / "run" / "checkpoints").iterdir())
    time.sleep(2)  # the ranks died with their launcher: nothing more is written
    assert sorted((tmp_path / "run" / "checkpoints").iterdir()) == seen
    status = json.loads((tmp_path / "run" / "run.json").read_text())["status"]
    assert status == "running", "the run finished before it was killed"
    launch.run(cfg.to_dict(), nproc=2, echo=None)
    s = json.loads((tmp_path / "run" / "run.json").read_text())
    assert s["resumed_from"].endswith("step_0000004")
    want, got = losses(base_run), losses(tmp_path / "run")
    assert sorted(got) == list(range(1, 13))
    assert got == want  # bitwise: loss and grad norm of every step
    assert s["val_loss"] == json.loads((base_run / "run.json").read_text())["val_loss"]


def test_two_rank_checkpoint_on_one_rank(base_run, tmp_path):
    run = tmp_path / "one"
    cfg = tiny_config(run, **{"checkpoint.resume": str(base_run / "checkpoints" / "step_0000008"),
                              "train.export": False})
    launch.run(cfg, nproc=1, echo=None)
    want, got = losses(base_run), losses(run)
    assert sorted(got) == [9, 10, 11, 12]
    for step in got:  # same global batches, other reduction order: equal to float tolerance
        assert got[step][0] == pytest.approx(want[step][0], rel=1e-5)
        assert got[step][1] == pytest.approx(want[step][1], rel=1e-4)
    s = json.loads((run / "run.json").read_text())
    assert s["world_size"] == 1 and s["val_loss"] == pytest.approx(
        json.loads((base_run / "run.json").read_text())["val_loss"], rel=1e-5)


def test_plan_data_and_tokenizer_export(tiny_plan, tmp_path):
    transformers = pytest.importorskip("transformers")
    run = tmp_path / "plan"
    cfg = tiny_config(run, data={"source": "plan", "plan": str(tiny_plan)},
                      **{"train.steps": 0, "model.vocab_size": None, "optim.schedule": "wsd", "eval.every": 9})
    launch.run(cfg, nproc=2, echo=None)
    s = json.loads((run / "run.json").read_text())
    m = losses(run)
    vals = {r["step"]: r["val_loss"] for r in read(run) if "loss" in r and "val_loss" in r}
    assert sorted(vals) == [9, 18] and vals[18] < vals[9]
    assert vals[18] == s["val_loss"]  # the same held-out batches every time
    assert s["steps"] == 18  # 20 steps in the plan, the last 2 (eval.batches) kept back for validation
    assert m[18][0] < m[1][0] - 1.0
    assert s["plan"]["mix"] == "tiny" and set(s["epochs_seen"]) == {"web", "synthetic"}
    assert s["plan_check"]["steps"] == 18 * 2  # loader steps: 2 micro-batch rounds per optimizer step
    assert s["tokens_drawn"]["web"] == s["tokens_drawn"]["synthetic"]
    hf_dir = run / "hf"
    tcfg = json.loads((hf_dir / "tokenizer_config.json").read_text())
    assert tcfg["tokenizer_class"] == "PreTrainedTokenizerFast" and tcfg["eos_token"] == "<|endoftext|>"
    tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    from train.model import load_for_eval
    model, ours_tok = load_for_eval(run)
    text = "the quick cat sees a red tree."
    ids = tok(text)["input_ids"]
    assert ids == ours_tok.encode(text).ids and tok.decode(ids) == text
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), torch_dtype=torch.float32).eval()
    assert hf.config.eos_token_id == tok.eos_token_id
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=2e-5, rtol=1e-4)


def test_failures_name_the_problem(tmp_path, tiny_plan):
    from train.config import ConfigError

    with pytest.raises(ConfigError, match="optim.schedule"):  # caught before any process starts
        launch.run(tiny_config(tmp_path / "a", **{"optim.schedule": "linear"}), nproc=2, echo=None)
    with pytest.raises(ConfigError, match="global_batch"):  # 8 sequences do not split over 3 ranks x 2
        launch.run(tiny_config(tmp_path / "b"), nproc=3, echo=None)
    with pytest.raises(ConfigError, match="data.plan"):
        launch.run(tiny_config(tmp_path / "c", data={"source": "plan", "plan": "/nonexistent/plan.json"}))
    with pytest.raises(ConfigError, match="train.steps: 100 steps"):  # read from the plan before torchrun
        launch.run(tiny_config(tmp_path / "d", data={"source": "plan", "plan": str(tiny_plan)},
                               **{"train.steps": 100, "model.vocab_size": None}), nproc=1, echo=None)
    assert not (tmp_path / "d" / "train.log").exists()
    # known only once the ranks open the shards: the ranks' own error heads the message
    plan = json.loads(tiny_plan.read_text())
    (tmp_path / "empty").mkdir()
    plan["phases"][0]["sources"][0]["path"] = str(tmp_path / "empty")
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(launch.TrainFailed, match="no .ds files") as e:
        launch.run(tiny_config(tmp_path / "e", data={"source": "plan", "plan": str(tmp_path / "plan.json")},
                               **{"model.vocab_size": None}), nproc=1, echo=None)
    assert "train.log" in str(e.value) and (tmp_path / "e" / "train.log").exists()


def test_resume_into_another_model_shape_is_refused(base_run, tmp_path):
    ckpt = base_run / "checkpoints" / "step_0000008"
    with pytest.raises(launch.TrainFailed, match="model.dim: checkpoint 64, this run 96") as e:
        launch.run(tiny_config(tmp_path / "wide", **{"checkpoint.resume": str(ckpt), "model.dim": 96}), nproc=1, echo=None)
    assert "checkpoint.resume=none" in str(e.value)
    assert json.loads((ckpt / "meta.json").read_text())["step"] == 8  # the checkpoint is untouched
