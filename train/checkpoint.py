"""Distributed checkpoints with torch.distributed.checkpoint (DCP).

A checkpoint is `run_dir/checkpoints/step_NNNNNNN/`: DCP shards of model + optimizer state (so a
checkpoint written by N ranks loads on M), `meta.json` (step, scheduler, loader state, world size)
and `rng_<rank>.pt`. On local disk it is written under a `.tmp` name and renamed once every rank
is done; on an fsspec URL (s3://, gs://: DCP's FsspecWriter/FsspecReader) it is written in place
and `meta.json` is written last. Either way a checkpoint is complete only when its meta.json
exists, so a run killed mid-save never leaves a half checkpoint that resume would pick.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from train import storage


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:07d}"


def latest(root: str | Path) -> Path | str | None:
    """The newest complete checkpoint under root (a folder with meta.json), or None."""
    if storage.is_url(root):
        done = sorted(m.rsplit("/", 2)[-2] for m in storage.glob(storage.join(root, "step_*", "meta.json")))
        return storage.join(root, done[-1]) if done else None
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
    if storage.is_url(root):
        return _save_url(str(root), step, model, optim, meta, keep)
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


def _save_url(root: str, step: int, model, optim, meta: dict, keep: int) -> str:
    """save() on a URL: written in place, meta.json last; older and unfinished ones pruned."""
    from factory.core.compat import dcp_fsspec_writer

    rank = dist.get_rank()
    final = storage.join(root, f"step_{step:07d}")
    if rank == 0:  # a leftover of this step (a crash, or a run started over) goes, its meta.json first
        _remove(final)
    dist.barrier()
    msd, osd = get_state_dict(model, optim)
    with storage.errors(final):  # the store commits each object on close: no fsync needed
        dcp.save({"model": msd, "optim": osd}, storage_writer=dcp_fsspec_writer(final, sync_files=False))
    buf = io.BytesIO()
    torch.save(rng_state(), buf)
    storage.write_bytes(storage.join(final, f"rng_{rank}.pt"), buf.getvalue())
    dist.barrier()
    if rank == 0:
        meta = {**meta, "step": step, "world_size": dist.get_world_size()}
        storage.write_text(storage.join(final, "meta.json"), json.dumps(meta, indent=1, default=str))
        steps = sorted({u.rsplit("/", 1)[-1] for u in storage.glob(storage.join(root, "step_*"))} - {final.rsplit("/", 1)[-1]})
        done = [d for d in steps if storage.exists(storage.join(root, d, "meta.json"))]
        old = done[: max(0, len(done) - (keep - 1))] if keep > 0 else []
        for d in old + [d for d in steps if d not in done and d < final.rsplit("/", 1)[-1]]:
            _remove(storage.join(root, d))
    dist.barrier()
    return final


def _remove(ckpt: str) -> None:
    storage.rm(storage.join(ckpt, "meta.json"))
    storage.rm(ckpt, recursive=True)


def _read_meta(path) -> dict:
    return json.loads(storage.read_text(storage.join(path, "meta.json")))


SHAPE = ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size", "tie_embeddings")


def check_shape(path: str | Path, shape: dict) -> None:
    """Refuse a checkpoint written for another model shape, naming the fields that differ (DCP
    would otherwise fail deep inside the load, or not at all for a tied/untied head)."""
    from train.config import ConfigError

    old = _read_meta(path).get("shape")
    diff = {k: (old[k], shape.get(k)) for k in SHAPE if old and k in old and old[k] != shape.get(k)}
    if diff:
        fields = ", ".join(f"model.{k}: checkpoint {a}, this run {b}" for k, (a, b) in diff.items())
        raise ConfigError(f"field model: the checkpoint {path} was written for another model ({fields}); "
                          "restore those settings, or start fresh with checkpoint.resume=none or a new run_dir")


def load(path: str | Path, model, optim=None) -> dict:
    """Collective: load model (+ optimizer) state resharded to the current ranks; returns meta.json.

    RNG state is restored only when the world size matches the writer's.
    """
    url = storage.is_url(path)
    path = str(path).rstrip("/") if url else Path(path)
    if not storage.exists(storage.join(path, "meta.json")):
        raise FileNotFoundError(f"{path}: not a complete checkpoint (no meta.json)")
    meta = _read_meta(path)
    where = {"checkpoint_id": str(path)}
    if url:
        from factory.core.compat import dcp_fsspec_reader

        where = {"storage_reader": dcp_fsspec_reader(path)}
    with storage.errors(path):
        if optim is not None:
            msd, osd = get_state_dict(model, optim)
            state = {"model": msd, "optim": osd}
            dcp.load(state, **where)
            set_state_dict(model, optim, model_state_dict=state["model"], optim_state_dict=state["optim"])
        else:
            from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
            state = {"model": get_model_state_dict(model)}
            dcp.load(state, **where)
            set_model_state_dict(model, state["model"])
    rng = storage.join(path, f"rng_{dist.get_rank()}.pt")
    if meta.get("world_size") == dist.get_world_size() and storage.exists(rng):
        set_rng_state(torch.load(io.BytesIO(storage.read_bytes(rng)), weights_only=False))
    return meta
