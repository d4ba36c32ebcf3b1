"""One rank without the FSDP2 wrapper (train/single.py) computes what FSDP2 computes on one rank:
the same loss and grad norm at every step, bitwise, in float32 and in bf16 with gradient
accumulation; a bad train.shard is one clear error."""

from __future__ import annotations

import json

import pytest

from tests.train.conftest import tiny_config
from train import config as config_mod
from train import launch


def _steps(run_dir) -> list[tuple[float, float]]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [(r["loss"], r["grad_norm"]) for r in rows if "loss" in r]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_one_rank_without_the_wrapper_equals_fsdp2(tmp_path, dtype):
    got = {}
    for shard in ("fsdp", "auto"):
        cfg = tiny_config(tmp_path / shard, **{"train.shard": shard, "train.dtype": dtype, "train.steps": 4,
                                                "train.export": False, "checkpoint.every": 0, "checkpoint.final": False})
        got[shard] = _steps(launch.run(cfg, nproc=1, echo=None))  # global 8, micro 2: 4 micro-batches a step
    assert len(got["auto"]) == 4 and got["auto"] == got["fsdp"]


def test_a_bad_shard_value_names_the_field():
    with pytest.raises(config_mod.ConfigError, match="train.shard.*use auto or fsdp"):
        config_mod.load({"train": {"shard": "ddp"}})


def test_initial_weights_drawn_ahead_in_a_thread_are_those_drawn_at_the_start(tmp_path):
    """A lane draws the next run's initial weights in a thread while a run trains: the same weights
    and the same random state afterwards as drawing them at the run's start, and the caller's
    generator is left as it was."""
    import concurrent.futures as cf

    import torch

    from train.build import build_model, data_shape, initial_model

    cfg = config_mod.load(tiny_config(tmp_path, seed=7))
    vocab, seq = data_shape(cfg)
    cpu = torch.device("cpu")
    model_a, _, _ = build_model(cfg, vocab, seq, cpu, torch.float32, world=1)
    after_a = torch.get_rng_state()
    torch.manual_seed(123)
    mine = torch.get_rng_state()
    with cf.ThreadPoolExecutor(1) as ex:
        made = ex.submit(initial_model, cfg, vocab, seq).result()
    assert torch.equal(torch.get_rng_state(), mine)
    model_b, _, _ = build_model(cfg, vocab, seq, cpu, torch.float32, world=1, initial=made)
    assert torch.equal(torch.get_rng_state(), after_a)
    sa, sb = model_a.state_dict(), model_b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
