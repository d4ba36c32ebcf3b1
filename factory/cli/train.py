"""`factory train RUN.yaml`: pretrain with torchrun (one node or several) or, given --address,
with Ray Train's TorchTrainer; both run `train.loop.train`. `--set run_dir=s3://bucket/run` trains
onto object storage, and the same command resumes from there on any machine."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from factory.core.errors import FactoryError
from factory.core.ui import console, table


def train(
    config: Path = typer.Argument(..., help="run config YAML (model, data, train, optim, checkpoint, eval)"),
    nproc: int = typer.Option(2, "--nproc", help="processes (ranks) per node"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override, e.g. --set optim.lr=1e-3 (repeatable)"),
    nnodes: int = typer.Option(1, help="nodes (several need --rdzv-endpoint)"),
    node_rank: int = typer.Option(0, help="this node's rank"),
    rdzv_endpoint: Optional[str] = typer.Option(None, help="host:port of the rendezvous, the same on every node"),
    address: Optional[str] = typer.Option(None, "--address", help="train with Ray Train on this Ray cluster (host:port of "
                                          "its GCS; 'local' starts one here)"),
    gpu: bool = typer.Option(False, "--gpu", help="Ray Train: one GPU per worker"),
) -> None:
    """Train one model on a mix plan (or random tokens) and export it to HF format."""
    import json

    from train import config as tcfg
    from train import storage
    from train.launch import TrainFailed, run, run_ray

    try:
        if address:
            from factory.cluster import init_ray
            from train.launch import ray_runtime_env

            init_ray(address, runtime_env=ray_runtime_env(), num_cpus=max(2, nproc * nnodes + 1))
            run_dir = run_ray(config, address, num_workers=nproc * nnodes, use_gpu=gpu, overrides=set_)
        else:
            run_dir = run(config, nproc=nproc, overrides=set_, nnodes=nnodes, node_rank=node_rank,
                          rdzv_endpoint=rdzv_endpoint)
    except storage.StorageError as e:
        raise FactoryError(e.what, where=e.url, fix=e.fix) from None
    except tcfg.ConfigError as e:
        raise FactoryError(str(e), fix=e.fix or "see the fields in train/config.py") from None
    except (TrainFailed, ValueError) as e:
        raise FactoryError(str(e), where=str(config)) from None
    summary_path = storage.join(run_dir, "run.json")
    try:
        s = json.loads(storage.read_text(summary_path)) if storage.exists(summary_path) else None
    except storage.StorageError as e:
        raise FactoryError(e.what, where=e.url, fix=e.fix) from None
    if s is None:
        console.print(f"run dir: {run_dir}")
        return
    rows = [["run dir", str(run_dir)], ["device", f"{s['world_size']} x {s['device']} ({s['dtype']})"],
            ["params", f"{s['model']['params'] / 1e6:.2f}M"], ["steps", s["steps"]],
            ["final loss", s["final_loss"]], ["val loss", s["val_loss"]], ["train time (s)", s["train_s"]],
            ["HF export", s["hf_dir"] or "-"]]
    if s.get("epochs_seen"):
        rows.append(["epochs seen", ", ".join(f"{k} {v:.2f}" for k, v in s["epochs_seen"].items())])
    console.print(table("training run", ["", "value"], rows))


def register(app: typer.Typer) -> None:
    app.command("train")(train)
