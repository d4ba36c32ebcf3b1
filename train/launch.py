"""Start a training run: `torchrun` as a subprocess (one node or several), or Ray Train's TorchTrainer.

Both run the same `train.loop.train(cfg)` body. `run(...)` streams the ranks' output, keeps it in
`run_dir/train.log`, and raises `TrainFailed` with the log's tail when the run fails. With run_dir
on a URL, train.log is kept in the local scratch folder and uploaded every minute and at the end
(node k > 0 of a multi-node run uploads train.node<k>.log).
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from train import config as config_mod
from train import storage

# Kept set in every launch: NVLink multicast off (it can take shared GPUs out of service).
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1",
            "HF_HUB_OFFLINE": "1"}
REPO_ROOT = Path(__file__).resolve().parent.parent


_CAUSE = re.compile(r"^(error: |[\w.]*(Error|Exception|Mismatch): )")


class TrainFailed(RuntimeError):
    """A training run exited non-zero; the message holds the tail of its log."""


def prepare(config: dict | str | Path | config_mod.RunConfig, overrides=None,
            ranks_here: bool = False) -> config_mod.RunConfig:
    """Resolve the config (+ overrides), make local paths absolute, write run_dir/config.yaml (and,
    for a URL run_dir, its local copy in the scratch folder: writing it to the store first turns
    a missing bucket or missing credentials into one clear StorageError before any rank starts).
    `ranks_here`: the ranks run on this machine (torchrun), so its devices are checked too."""
    cfg = config_mod.load(config, overrides)
    if cfg.run_dir.startswith("file://"):
        cfg.run_dir = cfg.run_dir[len("file://"):]
    url = storage.is_url(cfg.run_dir)
    cfg.run_dir = cfg.run_dir.rstrip("/") if url else str(Path(cfg.run_dir).resolve())
    if cfg.scratch_dir:
        cfg.scratch_dir = str(Path(cfg.scratch_dir).resolve())
    for key in ("plan", "tokenizer", "val_plan"):  # local paths made absolute; URLs (data on a store) kept
        if getattr(cfg.data, key) and not storage.is_url(getattr(cfg.data, key)):
            setattr(cfg.data, key, str(Path(getattr(cfg.data, key).removeprefix("file://")).resolve()))
    if cfg.data.plan and cfg.data.source == "plan" and not storage.exists(cfg.data.plan):
        raise config_mod.ConfigError(f"field data.plan: {cfg.data.plan} not found; write it with "
                                     "`factory mix plan` or fix the path")
    precheck(cfg, str(config) if isinstance(config, (str, Path)) else "run config", ranks_here)
    if url:
        storage.write_text(storage.join(cfg.run_dir, "config.yaml"), config_mod.dumps(cfg))
    local = storage.scratch(cfg.run_dir, cfg.scratch_dir)
    local.mkdir(parents=True, exist_ok=True)
    config_mod.dump(cfg, local / "config.yaml")
    return cfg


def precheck(cfg: config_mod.RunConfig, where: str, ranks_here: bool = False) -> None:
    """What would stop every rank, found before any rank starts: the model preset, train.steps
    against the steps the plan holds (as `train.loop.plan_steps` counts them), and (`ranks_here`)
    precision fp8 on a machine that cannot run it."""
    import json

    from train.model import PRESETS

    if cfg.model.preset not in PRESETS:
        raise config_mod.ConfigError(f"{where}: field model.preset: unknown preset {cfg.model.preset!r}; "
                                     f"use one of {', '.join(sorted(PRESETS))}")
    if ranks_here and cfg.train.precision == "fp8":
        import torch

        from train.precision import fp8_refusal

        cuda = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
        refusal = fp8_refusal("cuda" if cuda else "cpu", where)
        if refusal is not None:
            raise refusal
    if cfg.data.source != "plan" or not cfg.train.steps:
        return
    plan = json.loads(storage.read_text(cfg.data.plan))
    phases = [ph for ph in plan.get("phases", []) if cfg.data.phase in (None, ph["name"])]
    if not phases:
        raise config_mod.ConfigError(f"{where}: field data.phase: {cfg.data.phase!r} is not a phase of {cfg.data.plan}; "
                                     f"use one of {[ph['name'] for ph in plan.get('phases', [])]}")
    samples = sum(int(s["tokens"]) // int(plan["seq_len"]) for ph in phases for s in ph["sources"])
    avail = samples // cfg.train.global_batch
    if cfg.train.steps > avail:
        raise config_mod.ConfigError(
            f"{where}: field train.steps: {cfg.train.steps} steps of {cfg.train.global_batch} sequences exceed the "
            f"{avail} the plan holds; set train.steps at most {avail} (0 trains on the whole plan), or plan more "
            "tokens (`factory mix plan --tokens`)")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(SAFE_ENV)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def torchrun_cmd(cfg_path: Path, nproc: int, nnodes: int = 1, node_rank: int = 0,
                 rdzv_endpoint: str | None = None, rdzv_id: str = "factory-train") -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if nnodes == 1 and not rdzv_endpoint:
        cmd += ["--standalone", "--nnodes=1"]
    else:
        if not rdzv_endpoint:
            raise ValueError("several nodes need rdzv_endpoint=host:port (the same on every node)")
        cmd += [f"--nnodes={nnodes}", f"--node_rank={node_rank}", "--rdzv_backend=c10d",
                f"--rdzv_endpoint={rdzv_endpoint}", f"--rdzv_id={rdzv_id}"]
    return cmd + ["-m", "train.loop", "--config", str(cfg_path)]


def run(config: dict | str | Path, nproc: int = 2, overrides: list[str] | dict[str, Any] | None = None, *,
        nnodes: int = 1, node_rank: int = 0, rdzv_endpoint: str | None = None,
        env: dict[str, str] | None = None, echo: Callable[[str], None] | None = print,
        timeout: float | None = None) -> Path | str:
    """Train with torchrun in a subprocess; returns the run dir (metrics.jsonl, run.json, hf/, ...):
    a Path, or the URL for a run on object storage.

    `echo` receives each output line (None: quiet). Raises TrainFailed with the log tail on failure.
    """
    cfg = prepare(config, overrides, ranks_here=True)
    config_mod.grad_accum(cfg, nproc * nnodes)  # fail before starting processes
    url = storage.is_url(cfg.run_dir)
    local = storage.scratch(cfg.run_dir, cfg.scratch_dir)
    log_path = local / "train.log"
    log_url = storage.join(cfg.run_dir, "train.log" if node_rank == 0 else f"train.node{node_rank}.log")
    if url and not log_path.exists() and storage.exists(log_url):  # continue the log of the run we resume
        storage.get_file(log_url, log_path)
    cmd = torchrun_cmd(local / "config.yaml", nproc, nnodes, node_rank, rdzv_endpoint)
    tail: collections.deque[str] = collections.deque(maxlen=25)
    causes: list[str] = []  # the ranks' own error lines, ahead of torchrun's report
    deadline = time.monotonic() + timeout if timeout else None
    uploaded = time.monotonic()
    with open(log_path, "a") as logf:
        proc = subprocess.Popen(cmd, cwd=str(REPO_ROOT), env=child_env(env), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
        try:
            for line in proc.stdout:  # type: ignore[union-attr]
                logf.write(line)
                if url and time.monotonic() - uploaded > 60:
                    logf.flush()
                    _upload_log(log_path, log_url)
                    uploaded = time.monotonic()
                tail.append(line.rstrip("\n"))
                if _CAUSE.match(line) and "ChildFailedError" not in line and line not in causes:
                    causes.append(line)
                if echo is not None:
                    echo(line.rstrip("\n"))
                if deadline and time.monotonic() > deadline:
                    raise TimeoutError(f"training exceeded {timeout}s")
            rc = proc.wait()
        except BaseException:
            _kill(proc)
            raise
        finally:
            logf.flush()
            if url:
                _upload_log(log_path, log_url)
    if rc != 0:
        cause = f": {causes[0].strip()}" if causes else ""
        where = f"{log_path} (uploaded to {log_url})" if url else str(log_path)
        raise TrainFailed(f"training failed (exit {rc}){cause}\nsee {where}; last lines:\n" + "\n".join(tail))
    return cfg.run_dir if url else Path(cfg.run_dir)


def _upload_log(path: Path, url: str) -> None:
    try:
        storage.put_file(path, url)
    except Exception as e:  # noqa: BLE001 - a log upload never fails the run; the next one retries
        print(f"[train] could not upload {path} to {url}: {e}", file=sys.stderr, flush=True)


def _kill(proc: subprocess.Popen) -> None:
    import signal
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --------------------------------------------------------------------------- Ray Train

def _ray_worker(loop_config: dict) -> None:
    import ray.train

    ctx = ray.train.get_context()
    os.environ["LOCAL_RANK"] = str(ctx.get_local_rank())
    for k, v in SAFE_ENV.items():
        os.environ.setdefault(k, v)
    from train.loop import train
    train(config_mod.load(loop_config["config"]))


def ray_auth_env(address: str | None) -> None:
    """The factory's auth-mode rule for a client, without the factory: connecting to a cluster with a
    token at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) sends it; an explicit
    RAY_AUTH_MODE is kept."""
    if os.environ.get("RAY_AUTH_MODE") or not address or address == "local":
        return
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN", "").strip() or (path.is_file() and path.stat().st_size):
        os.environ["RAY_AUTH_MODE"] = "token"


def ray_runtime_env() -> dict:
    """Ray Train workers get the train package itself, so any cluster can import it."""
    return {"env_vars": dict(SAFE_ENV), "py_modules": [str(REPO_ROOT / "train")]}


def run_ray(config: dict | str | Path, address: str | None = None, num_workers: int = 2,
            use_gpu: bool | None = None, overrides=None) -> Path:
    """Train with Ray Train's TorchTrainer on the cluster at `address` (same loop inside)."""
    try:
        import ray
        from ray.train import RunConfig as RayRunConfig
        from ray.train import ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer
    except ImportError as e:
        raise TrainFailed(f"Ray Train is not available ({e}); install 'ray[train]' or use torchrun") from None
    cfg = prepare(config, overrides)
    if use_gpu is None:
        use_gpu = cfg.train.device == "cuda"
    if not ray.is_initialized():
        ray_auth_env(address or os.environ.get("RAY_ADDRESS"))
        ray.init(address=address, runtime_env=ray_runtime_env(),
                 **({} if address else {"num_cpus": max(2, num_workers + 1)}))
    trainer = TorchTrainer(
        _ray_worker, train_loop_config={"config": cfg.to_dict()},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RayRunConfig(name=cfg.run_dir.rsplit("/", 1)[-1],
                                storage_path=str(storage.scratch(cfg.run_dir, cfg.scratch_dir) / "ray")))
    result = trainer.fit()
    if getattr(result, "error", None):
        raise TrainFailed(f"Ray Train run failed: {result.error}")
    return cfg.run_dir if storage.is_url(cfg.run_dir) else Path(cfg.run_dir)
