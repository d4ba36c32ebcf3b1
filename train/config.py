"""The run config: nested dataclasses read from YAML, with `section.key=value` overrides.

```yaml
run_dir: runs/tiny                          # or any fsspec URL: s3://bucket/runs/tiny
seed: 0
model: {preset: tiny, vocab_size: 512}      # any ModelArgs field overrides the preset
data: {source: random, seq_len: 128}        # or {source: plan, plan: mixes/out/plan.json}
train: {steps: 100, global_batch: 16, micro_batch: 4}   # precision: fp8 on an H100/H200 (train/precision.py)
optim: {lr: 3.0e-4, schedule: cosine, warmup_steps: 10}
checkpoint: {every: 50}
```
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from factory.core.merge import deep_merge


class ConfigError(ValueError):
    """A bad run config: the message names the file, the field and the fix (`fix`, where it is
    not the message's own last clause)."""

    def __init__(self, msg: str, fix: str | None = None):
        super().__init__(msg)
        self.fix = fix


@dataclass
class ModelSection:
    preset: str = "tiny"
    dim: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    ffn_dim: int | None = None
    vocab_size: int | None = None  # default: the plan's (or 512 for random data)
    rope_theta: float | None = None
    norm_eps: float | None = None
    tie_embeddings: bool | None = None
    init_std: float | None = None


@dataclass
class DataSection:
    source: str = "random"  # random | plan
    plan: str | None = None  # path to plan.json (source: plan)
    phase: str | None = None  # train on one phase of the plan only
    val_plan: str | None = None  # held-out plan for validation; default: the plan's last batches
    seq_len: int | None = None  # default: the plan's (or 128 for random data)
    vocab_size: int = 512  # random data only
    tokenizer: str | None = None  # tokenizer.json for the export; default: the plan's


@dataclass
class TrainSection:
    steps: int = 100  # optimizer steps; 0 = as many as the plan holds
    global_batch: int = 16  # sequences per optimizer step, all ranks together
    micro_batch: int = 4  # sequences per forward pass on one rank
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto (bf16 on cuda, fp32 on cpu) | bf16 | fp32
    precision: str = "bf16"  # bf16: matmuls in train.dtype | fp8: torchao float8 matmuls in the large linears (train/precision.py)
    fp8_recipe: str = "tensorwise"  # precision fp8: tensorwise | rowwise scaling
    fp8_min_features: int = 1024  # precision fp8: linears with fewer in or out features stay bf16
    compile: bool = False  # torch.compile each block (and the loss head)
    sdpa: str = "auto"  # attention kernel on GPU: auto | flash | cudnn | efficient
    shard: str = "auto"  # auto: FSDP2 on several ranks, none on one (train/single.py) | fsdp: FSDP2 always
    log_every: int = 1
    peak_flops: float | None = None  # per device, for MFU; default: known card or none
    tensorboard: bool = True
    export: bool = True  # HF export at the end
    deterministic: bool = False


@dataclass
class OptimSection:
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    schedule: str = "cosine"  # cosine | wsd | constant
    warmup_steps: int = 10
    decay_frac: float = 0.2  # wsd: share of the steps spent decaying


@dataclass
class CheckpointSection:
    every: int = 0  # steps between checkpoints; 0 = only the final one
    keep: int = 2
    resume: str = "auto"  # auto (latest in run_dir) | none | path to a checkpoint folder
    final: bool = True


@dataclass
class EvalSection:
    batches: int = 4  # validation batches (of train.global_batch sequences) at the end
    every: int = 0  # also every N steps (0 = only at the end)


@dataclass
class RunConfig:
    run_dir: str = "runs/train"  # a local folder or an fsspec URL (s3://, gs://)
    scratch_dir: str | None = None  # local folder of a URL run (train.log, TensorBoard); default: a temp folder
    seed: int = 0
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    optim: OptimSection = field(default_factory=OptimSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    eval: EvalSection = field(default_factory=EvalSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, typ: Any, where: str) -> Any:
    t = str(typ)
    if value is None:
        if "None" in t:
            return None
        raise ConfigError(f"{where}: must not be empty")
    try:
        if t.startswith("bool"):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if t.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) else int(value)
        if t.startswith("float"):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not a valid {t.split(' ')[0]}") from None


def _build(cls: type, data: dict[str, Any], where: str, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: field {prefix.rstrip('.') or '(top level)'}: expected a mapping")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}: field {prefix}{unknown[0]}: unknown; remove it "
                          f"(known: {', '.join(known)})")
    kwargs = {}
    for name, f in known.items():
        if name not in data:
            continue
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            kwargs[name] = _build(f.default_factory, data[name] or {}, where, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(data[name], f.type, f"{where}: field {prefix}{name}")
    return cls(**kwargs)


def parse_overrides(items: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """`["optim.lr=1e-3", "train.steps=20"]` -> nested dict; values parsed as YAML scalars."""
    if not items:
        return {}
    if isinstance(items, dict):
        flat = items
    else:
        flat = {}
        for it in items:
            if "=" not in it:
                raise ConfigError(f"override {it!r}: expected key=value, e.g. optim.lr=1e-3")
            k, v = it.split("=", 1)
            flat[k.strip()] = yaml.safe_load(v) if v.strip() else None
    nested: dict[str, Any] = {}
    for k, v in flat.items():
        if isinstance(v, dict) and "." not in k:
            nested.setdefault(k, {}).update(v)
            continue
        cur = nested
        *parents, leaf = k.split(".")
        for p in parents:
            cur = cur.setdefault(p, {})
        cur[leaf] = v
    return nested


def load(config: str | Path | dict | RunConfig | None = None,
         overrides: list[str] | dict[str, Any] | None = None) -> RunConfig:
    """A RunConfig from a YAML path, a dict or a RunConfig, with overrides applied on top."""
    where = "run config"
    if isinstance(config, RunConfig):
        data = config.to_dict()
    elif isinstance(config, dict):
        data = config
    elif config is None:
        data = {}
    else:
        p = Path(config)
        where = str(p)
        if not p.exists():
            raise ConfigError(f"{p}: file not found; check the path")
        try:
            data = yaml.safe_load(p.read_bytes().decode("utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p}: not a UTF-8 text file (byte {e.start}); give a YAML run config saved as UTF-8") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
    data = deep_merge(data, parse_overrides(overrides))
    cfg = _build(RunConfig, data, where)
    _check(cfg, where)
    return cfg


def _check(c: RunConfig, where: str) -> None:
    def bad(fieldname: str, msg: str):
        raise ConfigError(f"{where}: field {fieldname}: {msg}")
    if c.data.source not in ("random", "plan"):
        bad("data.source", f"{c.data.source!r}; use 'random' or 'plan'")
    if c.data.source == "plan" and not c.data.plan:
        bad("data.plan", "source is 'plan' but no plan.json path is given; set data.plan")
    if c.optim.schedule not in ("cosine", "wsd", "constant"):
        bad("optim.schedule", f"{c.optim.schedule!r}; use cosine, wsd or constant")
    if c.train.device not in ("auto", "cpu", "cuda"):
        bad("train.device", f"{c.train.device!r}; use auto, cpu or cuda")
    if c.train.sdpa not in ("auto", "flash", "cudnn", "efficient"):
        bad("train.sdpa", f"{c.train.sdpa!r}; use auto, flash, cudnn or efficient")
    if c.train.shard not in ("auto", "fsdp"):
        bad("train.shard", f"{c.train.shard!r}; use auto or fsdp")
    if c.train.dtype not in ("auto", "bf16", "fp32"):
        bad("train.dtype", f"{c.train.dtype!r}; use auto, bf16 or fp32")
    if c.train.precision not in ("bf16", "fp8"):
        bad("train.precision", f"{c.train.precision!r}; use bf16 or fp8")
    if c.train.fp8_recipe not in ("tensorwise", "rowwise"):
        bad("train.fp8_recipe", f"{c.train.fp8_recipe!r}; use tensorwise or rowwise")
    if c.train.precision == "fp8" and c.train.dtype == "fp32":
        bad("train.precision", "fp8 trains on a bf16 working copy; set train.dtype to auto or bf16")
    if c.train.fp8_min_features < 16:
        bad("train.fp8_min_features", "must be at least 16 (float8 matmuls need multiples of 16)")
    for name in ("train.global_batch", "train.micro_batch", "train.log_every"):
        sec, key = name.split(".")
        if getattr(getattr(c, sec), key) < 1:
            bad(name, "must be at least 1")
    if c.train.steps < 0:
        bad("train.steps", "must be >= 0")
    if not 0 <= c.optim.decay_frac <= 1:
        bad("optim.decay_frac", "must be between 0 and 1")


def grad_accum(c: RunConfig, world_size: int) -> int:
    per_step = c.train.micro_batch * world_size
    if c.train.global_batch % per_step:
        raise ConfigError(
            f"field train.global_batch: {c.train.global_batch} is not a multiple of micro_batch x ranks "
            f"= {c.train.micro_batch} x {world_size}; change global_batch or micro_batch")
    return c.train.global_batch // per_step


def dumps(c: RunConfig) -> str:
    return yaml.safe_dump(c.to_dict(), sort_keys=False)


def dump(c: RunConfig, path: str | Path) -> None:
    Path(path).write_text(dumps(c))


def to_json(c: RunConfig) -> str:
    return json.dumps(c.to_dict(), sort_keys=True)
