"""Distributed checkpoints with torch.distributed.checkpoint (DCP).

A checkpoint is `run_dir/checkpoints/step_NNNNNNN/`: DCP shards of model + optimizer state (so a
checkpoint written by N ranks loads on M), `meta.json` (step, scheduler, loader state, world size)
and `rng_<rank>.pt`. It is written under a `.tmp` name and renamed once every rank is done, so a
run killed mid-save never leaves a half checkpoint that resume would pick.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:07d}"


def latest(root: str | Path) -> Path | None:
    """The newest complete checkpoint under root (a folder with meta.json), or None."""
    root = Path(root)
    if not root.exists():
        return None
    done = sorted(p for p in root.glob("step_*") if p.suffix != ".tmp" and (p / "meta.json").exists())
    return done[-1] if done else None


def rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def save(root: str | Path, step: int, model, optim, meta: dict, keep: int = 2) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint folder."""
    root = Path(root)
    rank = dist.get_rank()
    final = step_dir(root, step)
    tmp = final.with_suffix(".tmp")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    msd, osd = get_state_dict(model, optim)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp))
    torch.save(rng_state(), tmp / f"rng_{rank}.pt")
    dist.barrier()
    if rank == 0:
        meta = {**meta, "step": step, "world_size": dist.get_world_size()}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        olds = sorted(p for p in root.glob("step_*") if p.suffix != ".tmp" and p != final)
        for old in olds[: max(0, len(olds) - (keep - 1))] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


SHAPE = ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size", "tie_embeddings")


def check_shape(path: str | Path, shape: dict) -> None:
    """Refuse a checkpoint written for another model shape, naming the fields that differ (DCP
    would otherwise fail deep inside the load, or not at all for a tied/untied head)."""
    from train.config import ConfigError

    old = json.loads((Path(path) / "meta.json").read_text()).get("shape")
    diff = {k: (old[k], shape.get(k)) for k in SHAPE if old and k in old and old[k] != shape.get(k)}
    if diff:
        fields = ", ".join(f"model.{k}: checkpoint {a}, this run {b}" for k, (a, b) in diff.items())
        raise ConfigError(f"field model: the checkpoint {path} was written for another model ({fields}); "
                          "restore those settings, or start fresh with checkpoint.resume=none or a new run_dir")


def load(path: str | Path, model, optim=None) -> dict:
    """Collective: load model (+ optimizer) state resharded to the current ranks; returns meta.json.

    RNG state is restored only when the world size matches the writer's.
    """
    path = Path(path)
    if not (path / "meta.json").exists():
        raise FileNotFoundError(f"{path}: not a complete checkpoint (no meta.json)")
    meta = json.loads((path / "meta.json").read_text())
    if optim is not None:
        msd, osd = get_state_dict(model, optim)
        state = {"model": msd, "optim": osd}
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(model, optim, model_state_dict=state["model"], optim_state_dict=state["optim"])
    else:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
        state = {"model": get_model_state_dict(model)}
        dcp.load(state, checkpoint_id=str(path))
        set_model_state_dict(model, state["model"])
    rng = path / f"rng_{dist.get_rank()}.pt"
    if meta.get("world_size") == dist.get_world_size() and rng.exists():
        set_rng_state(torch.load(rng, weights_only=False))
    return meta
