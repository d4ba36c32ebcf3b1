"""A run's model and optimizer: the model's shape from the run config and its data, the initial
weights (drawn here or ahead of time), the one-rank working copy or the FSDP2 wrapping, float8
linears (train.precision fp8: train/precision.py), compile, and AdamW."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist

from train.config import RunConfig
from train.model import Transformer, model_args


def attention_kernel(cfg: RunConfig, device: torch.device) -> str:
    """The SDPA kernel used: train.sdpa, where `auto` means cudnn on Hopper (on an H100 as fast as
    flash and faster than torch's own pick: benchmarks/train_mfu.py) and torch's choice elsewhere."""
    if cfg.train.sdpa == "auto" and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9:
        return "cudnn"
    return cfg.train.sdpa if device.type == "cuda" else "auto"


def _compile(model) -> None:
    for blk in model.layers:
        blk.forward = torch.compile(blk.forward)
    model.head_loss = torch.compile(model.head_loss)


def run_model_args(cfg: RunConfig, vocab: int, seq_len: int):
    m = cfg.model
    over = {k: getattr(m, k) for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "rope_theta",
                                       "norm_eps", "tie_embeddings", "init_std")}
    return model_args(m.preset, vocab_size=m.vocab_size or vocab, max_seq_len=max(seq_len, 2048), **over)


def data_shape(cfg: RunConfig) -> tuple[int, int]:
    """(vocab size, sequence length) of a run's data, as make_data finds them."""
    if cfg.data.source == "random":
        return cfg.data.vocab_size, cfg.data.seq_len or 128
    plan = json.loads(Path(cfg.data.plan).read_text())
    return plan["vocab_size"], plan["seq_len"]


def initial_model(cfg: RunConfig, vocab: int, seq_len: int):
    """(the run's initial weights on the CPU, the CPU generator's state after drawing them): what
    build_model makes itself, made ahead (e.g. in a thread while another run trains; the CPU's
    random numbers are drawn one at a time, about a second for a ~90M model). The caller's CPU
    generator is left as it was."""
    before = torch.get_rng_state()
    torch.random.default_generator.manual_seed(cfg.seed)
    model = Transformer(run_model_args(cfg, vocab, seq_len))
    after = torch.get_rng_state()
    torch.set_rng_state(before)
    return model, after


def build_model(cfg: RunConfig, vocab: int, seq_len: int, device: torch.device, dtype: torch.dtype,
                world: int | None = None, initial=None):
    """(model, args, single): the model the optimizer steps, and on one rank (train.shard auto) its
    MasterWeights (train/single.py: FSDP2's arithmetic without the wrapper), else None. `initial`:
    what initial_model returned for this run (the same weights and generator state, made ahead)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from train.single import MasterWeights

    args = run_model_args(cfg, vocab, seq_len)
    sdpa = attention_kernel(cfg, device)
    if device.type == "cuda" and sdpa != "auto":  # only the chosen kernel (math as fallback)
        b = torch.backends.cuda
        b.enable_flash_sdp(sdpa == "flash")
        b.enable_cudnn_sdp(sdpa == "cudnn")
        b.enable_mem_efficient_sdp(sdpa == "efficient")
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank, whatever the world size
    if initial is not None:
        cpu_model, rng = initial
        torch.set_rng_state(rng)  # as if this process had drawn them
        model = cpu_model.to(device)
    else:
        model = Transformer(args).to(device)
    world = world or dist.get_world_size()
    fp8 = cfg.train.precision == "fp8"
    if fp8:
        from train.precision import fp8_refusal, to_fp8
        refusal = fp8_refusal(device)
        if refusal is not None:
            raise refusal
    if world == 1 and cfg.train.shard == "auto":
        single = MasterWeights(model, dtype)
        if fp8:  # the working copy only: its linears keep their parameters, the float32 masters stay plain
            model.fp8_layers = to_fp8(single.compute, cfg, world)
        if cfg.train.compile:
            _compile(single.compute)
        return model, args, single
    if fp8:
        model.fp8_layers = to_fp8(model, cfg, world)
        model.fp8_all_gather = world > 1 and cfg.train.fp8_recipe == "tensorwise"
    if cfg.train.compile:
        _compile(model)
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype != torch.float32 else None
    kw = {"mp_policy": mp} if mp else {}
    for i, blk in enumerate(model.layers):
        fully_shard(blk, reshard_after_forward=i < len(model.layers) - 1, **kw)
    fully_shard(model, **kw)
    return model, args, None


def build_optimizer(cfg: RunConfig, model, device: torch.device):
    o = cfg.optim
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kw = dict(lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
    if device.type == "cuda":
        try:
            return torch.optim.AdamW(groups, fused=True, **kw)
        except (RuntimeError, TypeError):
            pass
    return torch.optim.AdamW(groups, foreach=True, **kw)
