"""The FSDP2 pretraining loop (one rank: no wrapper, train/single.py): `torchrun --nproc_per_node N -m train.loop --config run.yaml [k=v ...]`.

Read top to bottom: set up ranks -> data -> build and shard the model, optimizer (train/build.py) -> schedule ->
resume -> train steps (accumulate, clip, step, log, checkpoint) -> validate -> final checkpoint,
HF export and run.json -> clean exit. `train(cfg)` is the same body that Ray Train workers run.
run_dir may be an fsspec URL: see train/storage.py for what goes there and what stays local.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from train import checkpoint, storage
from train import config as config_mod
from train.build import attention_kernel, build_model, build_optimizer
from train.config import RunConfig
from train.loader import RandomData
from train.metrics import MetricsLog, device_name, peak_flops
from train.progress import clock, eta_s, every_s

# --------------------------------------------------------------------------- ranks and devices

def init_distributed(device_pref: str = "auto") -> torch.device:
    """Start the process group (NCCL on GPU, gloo on CPU) unless a launcher already did."""
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        for k, v in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(k, v)
        if "MASTER_PORT" not in os.environ:
            import socket
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                os.environ["MASTER_PORT"] = str(s.getsockname()[1])
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")


# --------------------------------------------------------------------------- data

def make_data(cfg: RunConfig, rank: int, world: int):
    """(this rank's batch source, info: seq_len, vocab_size, plan, tokenizer)."""
    d = cfg.data
    if d.source == "random":
        T = d.seq_len or 128
        return RandomData(cfg.seed, d.vocab_size, T, rank, world, cfg.train.micro_batch), \
            {"seq_len": T, "vocab_size": d.vocab_size, "plan": None, "tokenizer": d.tokenizer}
    from train.loader import MixLoader  # reads plan.json + the .ds shards
    plan = json.loads(Path(d.plan).read_text())
    if d.seq_len and d.seq_len != plan["seq_len"]:
        raise config_mod.ConfigError(f"field data.seq_len: {d.seq_len} differs from the plan's "
                                     f"{plan['seq_len']}; drop it")
    loader = MixLoader(plan, rank, world, cfg.train.micro_batch, phase=d.phase)
    tok = d.tokenizer or plan.get("tokenizer") or None
    if tok:  # as given (absolute or from the working dir), else next to plan.json
        found = [p for p in (Path(tok), Path(d.plan).parent / tok) if p.exists()]
        if not found:
            raise config_mod.ConfigError(f"field data.tokenizer: {tok} (from {'the config' if d.tokenizer else 'the plan'}) "
                                         "not found; set data.tokenizer to the tokenizer.json")
        tok = str(found[0].resolve())
    return loader, {"seq_len": plan["seq_len"], "vocab_size": plan["vocab_size"], "plan": plan, "tokenizer": tok}


def plan_steps(cfg: RunConfig, data, accum: int) -> int:
    """Optimizer steps: train.steps, or all the plan holds less the tail kept for validation."""
    if cfg.data.source == "random":
        return cfg.train.steps
    avail = data.steps_total(cfg.train.global_batch)
    if cfg.train.steps > avail:
        raise config_mod.ConfigError(f"field train.steps: {cfg.train.steps} steps of {cfg.train.global_batch} "
                                     f"sequences exceed the plan's {avail}; lower it or plan more tokens")
    held = 0 if cfg.data.val_plan else cfg.eval.batches
    return cfg.train.steps or max(1, avail - held)


class HeldOut:
    """Validation batches, the same ones at every call (eval.batches global batches on any number
    of ranks): fresh random samples, data.val_plan, or the plan's last batches (kept out of training)."""

    def __init__(self, cfg: RunConfig, rank: int, world: int, accum: int):
        self.n = cfg.eval.batches * accum  # micro-batches per rank
        if cfg.data.source == "random":
            self.src, self.start = RandomData(cfg.seed, cfg.data.vocab_size, cfg.data.seq_len or 128, rank, world,
                                              cfg.train.micro_batch, split="val"), 0
            return
        from train.loader import MixLoader
        self.src = MixLoader(cfg.data.val_plan or cfg.data.plan, rank, world, cfg.train.micro_batch,
                             phase=None if cfg.data.val_plan else cfg.data.phase)
        self.start = 0 if cfg.data.val_plan else max(0, self.src.steps_total() - self.n)

    def __call__(self):
        self.src.load_state_dict({"step": self.start})
        return iter(self.src)


# --------------------------------------------------------------------------- model, optimizer, schedule

def lr_factor(cfg: RunConfig, step: int, total: int) -> float:
    """Multiplier of optim.lr after `step` completed steps: linear warmup, then cosine/WSD/constant."""
    o = cfg.optim
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    lo = o.min_lr_ratio
    if o.schedule == "constant":
        return 1.0
    if o.schedule == "cosine":
        t = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t))
    decay_start = total - int(round(o.decay_frac * total))  # wsd: warmup, stable, linear decay
    if step < decay_start:
        return 1.0
    return 1.0 - (1 - lo) * min(1.0, (step - decay_start + 1) / max(1, total - decay_start))


# --------------------------------------------------------------------------- steps

def all_sum(*vals: float | torch.Tensor, device) -> list[float]:
    t = torch.tensor([float(v) for v in vals], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def _to_device(b: torch.Tensor, device) -> torch.Tensor:
    """A host batch onto the device without waiting for the device: a copy from pageable memory
    first waits for the stream's queued work, one from pinned memory does not."""
    if device.type == "cuda" and b.device.type == "cpu":
        b = b.pin_memory()
    return b.to(device, non_blocking=True)


def train_step(model, optim, batches: list[torch.Tensor], device, grad_clip: float, single=None) -> dict:
    """One optimizer step over this rank's micro-batches; loss is normalised by the global token count.
    `single` (one rank, train/single.py): forward and backward on its working copy. On one rank the
    loss and grad norm stay on the device (`settle` reads them), so nothing here waits for it."""
    world = dist.get_world_size()
    local_tokens = sum(int((b[:, 1:] != -100).sum()) for b in batches)  # on the host: no device sync
    batches = [_to_device(b, device) for b in batches]
    (global_tokens,) = all_sum(local_tokens, device=device) if world > 1 else (float(local_tokens),)
    scale = world / max(global_tokens, 1.0)  # FSDP averages gradients over ranks
    loss_sum = torch.zeros((), device=device, dtype=torch.float32)
    net = single if single is not None else model
    if single is not None:
        single.pull()
    for i, b in enumerate(batches):
        if single is None:
            model.set_requires_gradient_sync(i == len(batches) - 1)
        ls = net(b[:, :-1], b[:, 1:])
        (ls * scale).backward()
        loss_sum += ls.detach()
        if single is not None:
            single.push_grads()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    optim.step()
    optim.zero_grad(set_to_none=True)
    if getattr(model, "fp8_all_gather", False):  # float8 all-gather: the weights' scales, once per step
        from train.precision import after_step
        after_step(model)
    if world == 1:  # read back later (settle), after the next step is queued
        return {"tokens": int(global_tokens), "device_numbers": torch.stack([loss_sum, norm.float()]),
                "counts": (global_tokens, local_tokens)}
    local_loss = float(loss_sum) / max(local_tokens, 1)
    total_loss, = all_sum(loss_sum, device=device)
    return {"loss": total_loss / max(global_tokens, 1.0), "grad_norm": float(norm),
            "tokens": int(global_tokens), "local_loss": local_loss}


def settle(out: dict) -> dict:
    """A train_step result with its numbers on the host (one device read for a one-rank step)."""
    if "device_numbers" not in out:
        return out
    loss_total, gnorm = out["device_numbers"].tolist()
    global_tokens, local_tokens = out["counts"]
    return {"loss": loss_total / max(global_tokens, 1.0), "grad_norm": gnorm, "tokens": out["tokens"],
            "local_loss": loss_total / max(local_tokens, 1)}


@torch.no_grad()
def evaluate(model, data, batches: int, device, single=None) -> float:
    """Held-out loss, run eagerly: a few batches do not pay for compiling the no-grad graphs."""
    if single is not None:
        single.pull()
        model = single
    model.eval()
    s = n = 0.0
    with torch.compiler.set_stance("force_eager"):
        for _ in range(batches):
            b = next(data).to(device)
            s += float(model(b[:, :-1], b[:, 1:]))
            n += int((b[:, 1:] != -100).sum())
    model.train()
    s, n = all_sum(s, n, device=device)
    return s / max(n, 1.0)


def params_sha(model) -> str:
    """sha256 of the full weights as this rank sees them (all ranks take part in the gather)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- the run

def train(cfg: RunConfig, on_model=None, initial=None, on_built=None) -> dict:
    """Train per cfg on the ranks of the current process group; returns the run summary (run.json).
    `on_model(model, args)`, if given, is called with the trained model after validation (every
    rank takes part); what it returns is the summary's `on_model` entry. `initial`: this run's
    initial weights made ahead (initial_model); `on_built()` is called once the model and optimizer
    exist, before the first step."""
    t_start = time.time()
    marks: dict[str, float] = {}  # where the run's time went outside its steps (summary["phases_s"])

    def mark(name: str) -> None:
        marks[name] = time.time()

    device = init_distributed(cfg.train.device)
    mark("ranks")
    if cfg.train.precision == "fp8":  # one line on a card or install that cannot, before any data or model
        from train.precision import fp8_refusal
        refusal = fp8_refusal(device)
        if refusal is not None:
            raise refusal
    rank, world = dist.get_rank(), dist.get_world_size()
    use_bf16 = cfg.train.dtype == "bf16" or (cfg.train.dtype == "auto" and device.type == "cuda")
    dtype = torch.bfloat16 if use_bf16 else torch.float32
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
    run_dir, url = cfg.run_dir.rstrip("/"), storage.is_url(cfg.run_dir)
    local = storage.scratch(run_dir, cfg.scratch_dir)  # run_dir itself unless it is a URL
    ckpt_root = storage.join(run_dir, "checkpoints") if url else local / "checkpoints"
    if rank == 0:
        local.mkdir(parents=True, exist_ok=True)
        storage.write_text(storage.join(run_dir, "config.yaml"), config_mod.dumps(cfg))
    accum = config_mod.grad_accum(cfg, world)

    from train import datacache  # a plan, its sources or tokenizer on a store: this node's copy

    datacache.stage(cfg, Path(cfg.scratch_dir) if cfg.scratch_dir else storage.scratch_root(),
                    int(os.environ.get("LOCAL_RANK", 0)) == 0, dist.barrier)
    data, info = make_data(cfg, rank, world)
    seq_len = info["seq_len"]
    mark("data")
    model, args, single = build_model(cfg, info["vocab_size"], seq_len, device, dtype, world, initial)
    optim = build_optimizer(cfg, model, device)
    mark("model")
    if on_built is not None:
        on_built()
    total = plan_steps(cfg, data, accum)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: lr_factor(cfg, s, total))

    start, resumed_from = 0, None
    res = cfg.checkpoint.resume
    src = checkpoint.latest(ckpt_root) if res == "auto" else (None if res == "none" else res)
    shape = {k: getattr(args, k) for k in checkpoint.SHAPE}
    if src is not None:
        checkpoint.check_shape(src, shape)
        meta = checkpoint.load(src, model, optim)
        start, resumed_from = int(meta["step"]), str(src)
        sched.load_state_dict(meta["scheduler"])
        data.load_state_dict(meta["loader"] if meta.get("world_size") == world else {"step": start * accum})
        if rank == 0:
            print(f"[train] resumed from {src} at step {start}", flush=True)

    batches_it = iter(data)
    log = MetricsLog(run_dir, rank == 0, cfg.train.tensorboard, resume_step=start, local_dir=local)
    if rank == 0:  # replaced by the full summary at the end
        storage.write_text(storage.join(run_dir, "run.json"), json.dumps({
            "status": "running", "steps": total, "start_step": start, "world_size": world, "config": cfg.to_dict()}, indent=1))
    flops_tok = model.flops_per_token(seq_len)
    peak = peak_flops(device, cfg.train.peak_flops)
    if rank == 0:
        fp8 = getattr(model, "fp8_layers", None)
        fp8 = f", fp8 {cfg.train.fp8_recipe} in {len(fp8)} linears" if fp8 is not None else ""
        print(f"[train] {args.n_layers}x{args.dim} model, {model.num_params() / 1e6:.2f}M params, "
              f"{world} rank(s) on {device.type} {dtype}{fp8}, {total} steps x {cfg.train.global_batch} seqs "
              f"x {seq_len} tokens, accum {accum}", flush=True)

    def save_ckpt(step):
        log.sync()  # a URL run's metrics reach the store before the checkpoint they lead up to
        checkpoint.save(ckpt_root, step, model, optim, {
            "scheduler": sched.state_dict(), "loader": data.state_dict(), "config": cfg.to_dict(), "shape": shape},
            keep=cfg.checkpoint.keep)

    rec, first_local, held = {}, None, None
    mark("resume_and_logs")
    t_train = last_line = time.time()
    t_last = time.perf_counter()
    every = every_s()

    def finish(step: int, out: dict, lr: float) -> None:
        """A step's numbers: log and print, then validation and checkpoint when due."""
        nonlocal rec, first_local, held, last_line, t_last
        out = settle(out)
        now = time.perf_counter()
        dt, t_last = now - t_last, now  # between two steps' ends: the step's time on the device
        first_local = out["local_loss"] if first_local is None else first_local
        tps = out["tokens"] / dt
        rec = {"step": step, "loss": out["loss"], "grad_norm": out["grad_norm"], "lr": lr,
               "tokens": out["tokens"] * step, "step_s": round(dt, 5),
               "tokens_per_s": round(tps, 1), "mfu": round(tps * flops_tok / (peak * world), 5) if peak else None}
        if cfg.eval.every and step % cfg.eval.every == 0:
            held = held or HeldOut(cfg, rank, world, accum)
            rec["val_loss"] = evaluate(model, held(), held.n, device, single)
        logged = step % cfg.train.log_every == 0 or step == total
        if logged:
            log.log(rec)
        if rank == 0 and (logged or time.time() - last_line >= every):  # a line at least every `every` s
            last_line, elapsed = time.time(), time.time() - t_train
            mfu = f" mfu {rec['mfu']:.3f}" if rec["mfu"] is not None else ""
            print(f"[train] step {step}/{total} loss {out['loss']:.4f} gnorm {out['grad_norm']:.3f} "
                  f"lr {lr:.2e} {tps:,.0f} tok/s{mfu} elapsed {clock(elapsed)} "
                  f"eta {clock(eta_s(step - start, total - start, elapsed))}", flush=True)
        if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < total:
            save_ckpt(step)

    lagged = None  # one rank: a step read back only once the next one is queued, so the device never waits
    for step in range(start + 1, total + 1):
        batches = [next(batches_it) for _ in range(accum)]
        out = train_step(model, optim, batches, device, cfg.optim.grad_clip, single)
        lr = sched.get_last_lr()[0]
        sched.step()
        if lagged:
            finish(*lagged)
            lagged = None
        due = step == total or any(e and step % e == 0 for e in (cfg.eval.every, cfg.checkpoint.every))
        if due or "device_numbers" not in out:  # validation or a checkpoint needs this very step
            finish(step, out, lr)
        else:
            lagged = (step, out, lr)
    train_s = time.time() - t_train
    mark("steps")

    val_loss = None
    if cfg.eval.batches:
        held = held or HeldOut(cfg, rank, world, accum)
        val_loss = evaluate(model, held(), held.n, device, single)
        log.log({"step": total, "val_loss": val_loss})
    mark("validation")
    hooked = on_model(model, args) if on_model is not None else None
    mark("on_model")
    if cfg.checkpoint.final and total > start:
        save_ckpt(total)
    small = model.num_params() < 50_000_000
    ranks = [None] * world
    mine = {"rank": rank, "loss": rec.get("loss"), "first_local_loss": first_local,
            "params_sha": params_sha(model) if small else None}
    dist.all_gather_object(ranks, mine)
    hf_dir = None
    if cfg.train.export:
        from train.export import export_model
        hf_dir = export_model(model, storage.join(run_dir, "hf"), args, info["tokenizer"], seq_len, local / "hf")
    log.close()

    summary = {
        "status": "done", "config": cfg.to_dict(), "model": vars(args) | {"params": model.num_params()},
        "world_size": world, "device": device_name(device), "dtype": str(dtype).replace("torch.", ""),
        "precision": cfg.train.precision, "fp8_layers": getattr(model, "fp8_layers", None),
        "sdpa": attention_kernel(cfg, device),
        "steps": total, "resumed_from": resumed_from, "final_loss": rec.get("loss"), "val_loss": val_loss,
        "tokens_per_step": cfg.train.global_batch * seq_len, "train_s": round(train_s, 2),
        "wall_time_s": round(time.time() - t_start, 2), "hf_dir": str(hf_dir) if hf_dir else None,
        "plan": info["plan"], "ranks": ranks, "torch": torch.__version__,
    }
    if hooked is not None:
        summary["on_model"] = hooked
    if hasattr(data, "check_against_plan"):
        summary["epochs_seen"] = data.epochs_seen()
        summary["tokens_drawn"] = data.tokens_drawn()
        summary["plan_check"] = data.check_against_plan(total * accum)
    mark("end")
    names, last = list(marks), t_start
    summary["phases_s"] = {}
    for n in names:
        summary["phases_s"][n], last = round(marks[n] - last, 3), marks[n]
    if rank == 0:
        storage.write_text(storage.join(run_dir, "run.json"), json.dumps(summary, indent=1, default=str))
    dist.barrier()
    return summary


def die_with_parent() -> None:
    """Linux: have the kernel kill this rank when its launcher dies (torchrun starts ranks in their
    own sessions, so killing the launcher's process group would otherwise leave them running)."""
    if sys.platform != "linux" or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    import ctypes
    import signal
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() == 1:  # the launcher is already gone
        os._exit(1)


def main(argv: list[str] | None = None) -> None:
    """torchrun entry: `--config PATH` then `section.key=value` overrides; always exits the process."""
    import argparse
    die_with_parent()
    ap = argparse.ArgumentParser(prog="train.loop")
    ap.add_argument("--config", required=True)
    ap.add_argument("overrides", nargs="*", help="section.key=value")
    ns = ap.parse_args(argv)
    code = 0
    try:
        train(config_mod.load(ns.config, ns.overrides))
    except config_mod.ConfigError as e:
        print(f"error: {e}" + (f" (fix: {e.fix})" if e.fix else ""), file=sys.stderr, flush=True)
        code = 2
    except BaseException:  # noqa: BLE001 - report, then exit without hanging the other ranks
        traceback.print_exc()
        code = 1
    try:
        if dist.is_initialized():
            if code == 0:
                dist.barrier()
            dist.destroy_process_group()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # gloo's threads can abort a normal interpreter exit


if __name__ == "__main__":
    main()
