"""`train.precision: fp8`: float8 matmuls through torchao's float8 training, on cards that have them.

What is converted: every `nn.Linear` inside the transformer blocks whose in and out features are
both multiples of 16 (the float8 matmul's requirement) and at least `train.fp8_min_features`
(1024 by default): the fused q/k/v and output projections of attention and the SwiGLU gate/up and
down projections of the 350m and 1b presets. What stays in bf16: the token embedding, the output
head (its logits feed the loss: torchtitan keeps it in bf16 too), the norms, attention itself
(SDPA), and every linear below the size (all of the tiny, 20m and 125m presets: at those widths the
casts cost more than the float8 matmul saves). Master weights, optimizer state, gradients
reduced across ranks, checkpoints and the HF export stay as in bf16 training: only the matmuls
of the converted layers run in float8, with scales per tensor (`tensorwise`, the fastest: e4m3
activations and weights, e5m2 gradients) or per row (`rowwise`, more accurate: e4m3 throughout,
power-of-2 scales); `train.fp8_recipe` picks one.

With FSDP2 on several ranks the converted weights are all-gathered in float8
(`enable_fsdp_float8_all_gather`, tensorwise only) and their scales computed once per step after
the optimizer step (`after_step`). Blocks are compiled as in bf16 (`train.compile`): torchao's
casts are fused by `torch.compile`, and fp8 without compile is slower than bf16.

torchao is optional (`pip install 'synth-factory[fp8]'`) and imported only when fp8 is asked for.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from train.config import ConfigError, RunConfig

INSTALL = "pip install 'synth-factory[fp8]'"
KEEP = ("output", "embed")  # never converted, whatever their size


def fp8_refusal(device: torch.device | str, where: str = "run config") -> ConfigError | None:
    """Why fp8 cannot train on `device` here (a ConfigError to raise), or None when it can:
    a CPU, a GPU below compute capability 8.9 (float8 tensor cores: Ada, Hopper and later),
    a torch build without float8 matmuls, or no torchao."""
    device = torch.device(device)
    head = f"{where}: field train.precision: fp8"
    if device.type != "cuda":
        return ConfigError(f"{head} needs a CUDA GPU of compute capability 8.9 or newer (H100, H200, L4, "
                           f"RTX 4090) and this run trains on the {device.type}",
                           fix="set train.precision=bf16, or train on such a GPU")
    cap = torch.cuda.get_device_capability(device)
    if cap < (8, 9):
        return ConfigError(f"{head} needs compute capability 8.9 or newer; {torch.cuda.get_device_name(device)} "
                           f"has {cap[0]}.{cap[1]}", fix="set train.precision=bf16, or train on an H100/H200")
    if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
        return ConfigError(f"{head} needs a torch build with float8 matmuls (torch {torch.__version__} has none)",
                           fix="install torch >= 2.11 with CUDA, or set train.precision=bf16")
    try:
        import torchao.float8  # noqa: F401
    except ImportError as e:
        return ConfigError(f"{head} needs torchao, which is not installed here ({e.name or 'torchao'})",
                           fix=f"{INSTALL}, or set train.precision=bf16")
    return None


def fp8_layer(mod: nn.Module, fqn: str, min_features: int) -> bool:
    """True for a linear that fp8 converts: in and out features multiples of 16 and at least
    `min_features`, and neither the output head nor the embedding."""
    if not isinstance(mod, nn.Linear) or fqn.split(".")[-1] in KEEP or fqn in KEEP:
        return False
    n_out, n_in = mod.weight.shape
    return n_in % 16 == 0 and n_out % 16 == 0 and min(n_in, n_out) >= min_features


def fp8_layers(model: nn.Module, min_features: int) -> list[str]:
    """Names of the linears `to_fp8` would convert (no torchao needed)."""
    return [n for n, m in model.named_modules() if fp8_layer(m, n, min_features)]


def to_fp8(model: nn.Module, cfg: RunConfig, world: int) -> list[str]:
    """Swap the model's large linears for torchao's Float8Linear in place (before compile and
    fully_shard); returns the converted layers' names. Parameter names and shapes are unchanged."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    t = cfg.train
    if t.fp8_recipe == "tensorwise":
        fcfg = Float8LinearConfig(enable_fsdp_float8_all_gather=world > 1)
    else:
        fcfg = Float8LinearConfig.from_recipe_name("rowwise")
    names = fp8_layers(model, t.fp8_min_features)
    keep = set(names)
    convert_to_float8_training(model, config=fcfg, module_filter_fn=lambda m, fqn: fqn in keep)
    return names


def after_step(model: nn.Module) -> None:
    """After the optimizer step of a sharded fp8 run with float8 all-gather: every converted
    weight's scale in one all-reduce (instead of one per layer in the next forward)."""
    if getattr(model, "fp8_all_gather", False):
        from torchao.float8 import precompute_float8_dynamic_scale_for_fsdp
        precompute_float8_dynamic_scale_for_fsdp(model)
