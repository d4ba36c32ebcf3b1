"""Many small training runs packed onto GPUs: a task list is split into lanes, several lanes per GPU,
and each lane is one long-lived process that trains and evaluates its runs one after another.

    python -m train.suite TASKS.json [--per-gpu N|auto] [--lanes N]     # every lane of a task list
    python -m train.suite --lane LANE.json                              # one lane (what the above starts)

A lane keeps what short runs would otherwise pay for again and again: the process group, the
tokenizer, the benchmarks (loaded and tokenized once, scored in one batched pass), and the code
torch.compile made (compiled once per lane, and kept on disk in `compile_cache` for the other
lanes). Each finished run writes its `eval.json` atomically (the done marker); runs whose
eval.json exists are skipped, so a rerun does only what is missing. Results do not depend on
the packing: a run's weights and data order depend only on its own config.

TASKS.json: `{"root": DIR, "benches": [...], "max_items": N|null, "batch_size": N, "tasks":
[{"cell", "seed", "params", "config", "eval_json", "cost"}, ...]}`; paths under `root` are moved to
the working directory when the list is run on another machine (plan here, train there).
Only torch, tokenizers, numpy, yaml and the standard library are used.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

# --------------------------------------------------------------------------- packing

def pack(tasks: list[dict], lanes: int) -> list[list[dict]]:
    """Tasks over `lanes` lanes, longest first onto the least-loaded lane (by `cost`, default 1);
    each lane keeps the tasks' original order."""
    lanes = max(1, min(lanes, len(tasks)))
    load, out = [0.0] * lanes, [[] for _ in range(lanes)]
    order = sorted(range(len(tasks)), key=lambda i: -float(tasks[i].get("cost", 1)))
    for i in order:
        k = min(range(lanes), key=lambda j: (load[j], j))
        out[k].append(i)
        load[k] += float(tasks[i].get("cost", 1))
    return [[tasks[i] for i in sorted(lane)] for lane in out if lane]


def per_gpu_auto(tokens_per_step: int, params: int, free_bytes: float | None = None) -> int:
    """Lanes per GPU. A lane draws the next run's initial weights while the current one trains, so
    what a second lane can hide is mostly scoring and the first run's start-up, and side by side
    the GPU time-slices the lanes (two lanes of a ~90M model at 64 x 512 tokens a step reached 0.90
    of one lane's step rate on an H200, and one lane ran that suite at 0.82 of a 256-sequence run,
    benchmarks/ablation_packing.py). So: one lane once a step is large (6 x params x tokens of
    ~1.6e13 FLOPs or more: a ~90M model at 32k tokens a step), more for smaller steps (whose
    launches the CPU cannot keep ahead of alone; 2 for a ~90M model at 16k tokens), at most 8, and
    no more than 60% of free memory allows (weights, gradients and AdamW state: ~16 bytes a
    parameter, activations on top)."""
    n = max(1, min(8, math.ceil(1.6e13 / max(1.0, 6.0 * params * tokens_per_step))))
    if free_bytes:
        per_lane = 16 * params + 48 * tokens_per_step * 1024  # states + a generous activation allowance
        n = max(1, min(n, int(0.6 * free_bytes // per_lane)))
    return n


def gpus() -> int:
    """GPUs the lanes can use. Counted with `nvidia-smi -L` where CUDA_VISIBLE_DEVICES is unset and no
    MIG device is listed (the driver only starts lanes, and importing torch here would delay their
    start by its import time), else by torch; 0 without a usable CUDA."""
    import shutil

    if "CUDA_VISIBLE_DEVICES" not in os.environ and shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
            lines = out.stdout.splitlines()
            if out.returncode == 0 and not any("MIG" in x for x in lines):
                return sum(x.startswith("GPU ") for x in lines)
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable torch CUDA: CPU lanes
        return 0


# --------------------------------------------------------------------------- moving a task list

class Mover:
    """Rewrites paths written under `root` on the planning machine to the same paths under `here`."""

    def __init__(self, root: str | None, here: str | Path | None = None):
        self.old = str(root).rstrip("/") if root else None
        self.new = str(Path(here or os.getcwd()).resolve())

    @property
    def moved(self) -> bool:
        return bool(self.old) and self.old != self.new

    def __call__(self, obj: Any) -> Any:
        if not self.moved:
            return obj
        if isinstance(obj, str):
            return self.new + obj[len(self.old):] if obj == self.old or obj.startswith(self.old + "/") else obj
        if isinstance(obj, list):
            return [self(x) for x in obj]
        if isinstance(obj, dict):
            return {k: self(v) for k, v in obj.items()}
        return obj

    def file(self, path: str) -> str:
        """A JSON or YAML file holding planning-machine paths, rewritten in place once."""
        p = Path(self(path))
        if self.moved and p.exists() and self.old in p.read_text():
            p.write_text(p.read_text().replace(self.old + "/", self.new + "/"))
        return str(p)


# --------------------------------------------------------------------------- one lane (in process)

def _tokenizer_path(cfg) -> str:
    plan = json.loads(Path(cfg.data.plan).read_text())
    tok = cfg.data.tokenizer or plan.get("tokenizer")
    for p in (Path(tok), Path(cfg.data.plan).parent / tok):
        if p.exists():
            return str(p.resolve())
    raise FileNotFoundError(f"{cfg.data.plan}: tokenizer {tok} not found; set data.tokenizer")


def plain_copy(model, args, device, dtype):
    """The trained (FSDP-wrapped, maybe compiled) model as a plain eager Transformer for scoring."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from train.model import Transformer

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    with torch.device(device):
        m = Transformer(args)
    m.load_state_dict(sd)
    return m.to(dtype).eval()


def _write_atomic(path: str, text: str) -> None:
    from train import storage

    if storage.is_url(path):  # one PUT: the object appears whole
        storage.write_text(path, text)
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _model_key(config: dict) -> str:
    return json.dumps([config.get("model"), config.get("train", {}).get("micro_batch")], sort_keys=True, default=str)


def run_lane(lane: dict, echo: Callable[[str], None] = print) -> list[dict]:
    """Train and evaluate a lane's tasks in this process; returns the records written. In a
    background thread, while a run trains: the benchmarks are loaded and tokenized (from the lane's
    start, ready by the first run's end) and the next run's initial weights are drawn (the same
    weights and random state as drawing them at its start). The device memory cache is kept
    between runs of one model shape."""
    import torch
    from tokenizers import Tokenizer

    from train import storage
    from train.build import data_shape, initial_model
    from train.config import load as load_config
    from train.eval import Evaluator
    from train.launch import prepare
    from train.loop import train

    move = Mover(lane.get("root"))
    benches = [move(b) for b in lane["benches"]]
    for b in benches:
        if Path(b, "benchmark.yaml").exists():
            move.file(str(Path(b, "benchmark.yaml")))
    pool = cf.ThreadPoolExecutor(1)
    evaluators: dict[str, cf.Future] = {}

    def evaluator(tok_path: str) -> cf.Future:
        if tok_path not in evaluators:
            evaluators[tok_path] = pool.submit(lambda: Evaluator(Tokenizer.from_file(tok_path), benches, lane.get("max_items"),
                                                                 int(lane.get("batch_size", 32))))
        return evaluators[tok_path]

    ahead: dict[int, cf.Future] = {}  # run index -> its initial weights, drawn while the one before trains

    def draw_ahead(j: int) -> None:
        if j >= len(todo) or not Path(todo[j]["config"]["data"].get("plan") or ".").exists():
            return  # nothing next, or a plan this node fetches first: drawn at the run's start as usual
        def job():
            c = load_config(todo[j]["config"])
            return initial_model(c, *data_shape(c))
        ahead[j] = pool.submit(job)

    def wait_ahead(j: int):
        try:
            return ahead[j].result() if j in ahead else None
        except Exception:  # noqa: BLE001 - drawn again at the run's start
            return None

    done, failed = [], []
    todo = [move(t) for t in lane["tasks"]]
    todo = [t for t in todo if not storage.exists(t["eval_json"])]
    draw_ahead(0)  # the first run's weights too, while this thread starts CUDA
    if todo and todo[0]["config"].get("train", {}).get("device") != "cpu" and torch.cuda.is_available():
        torch.cuda.init()
    for i, t in enumerate(todo):
        t0 = time.time()
        try:
            if not Path(t["config"]["data"]["plan"]).exists() and t.get("plan_url"):  # a node that never saw it
                storage.get_file(t["plan_url"], Path(t["config"]["data"]["plan"]))
            move.file(t["config"]["data"]["plan"])
            cfg = prepare(t["config"])
            tok_path = _tokenizer_path(cfg)
            evaluator(tok_path)  # the first run's: tokenizes while this run trains
            timing: dict[str, float] = {}

            def score(model, args):
                t1 = time.time()
                wait_ahead(i + 1)  # scoring draws random numbers too (a CPU model's init): not while the thread does
                ev = evaluator(tok_path).result()
                timing["eval_wait_s"] = time.time() - t1
                dev = next(model.parameters()).device
                dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
                plain = plain_copy(model, args, dev, dtype)
                out = ev(plain)
                del plain
                timing["eval_s"] = time.time() - t1
                return out

            summary = train(cfg, on_model=score, initial=wait_ahead(i), on_built=lambda: draw_ahead(i + 1))
        except Exception:  # noqa: BLE001 - one failed run does not stop the lane
            failed.append(t)
            echo(f"[suite] FAILED {t['cell']} seed {t['seed']}:\n{traceback.format_exc()}")
            continue
        finally:
            gc.collect()
            same = i + 1 < len(todo) and _model_key(todo[i + 1]["config"]) == _model_key(t["config"])
            if torch.cuda.is_available() and not same:  # the next run has other shapes: give the memory back
                torch.cuda.empty_cache()
        wall = time.time() - t0
        steps_s = float(summary.get("train_s") or 0.0)
        rec = {"cell": t["cell"], "seed": t["seed"], "params": t["params"], "scores": summary["on_model"],
               "run_dir": str(cfg.run_dir), "train_s": round(wall - timing["eval_s"], 2),
               "eval_s": round(timing["eval_s"], 2), "steps": summary["steps"],
               "tokens": summary["steps"] * summary["tokens_per_step"], "final_loss": summary["final_loss"],
               "device": summary["device"],
               # where the run's time went: its optimizer steps, everything else in train (set-up, data,
               # validation, run.json), waiting for the benchmarks' tokenization, scoring
               "time": {"steps_s": round(steps_s, 2), "other_s": round(wall - timing["eval_s"] - steps_s, 2),
                        "eval_wait_s": round(timing.get("eval_wait_s", 0.0), 2),
                        "score_s": round(timing["eval_s"] - timing.get("eval_wait_s", 0.0), 2),
                        "phases_s": summary.get("phases_s")}}
        _write_atomic(t["eval_json"], json.dumps(rec, indent=1))
        done.append(rec)
        echo(f"[suite] {t['cell']} seed {t['seed']}: {rec['tokens']:,} tokens, train {rec['train_s']}s, "
             f"eval {rec['eval_s']}s, loss {rec['final_loss']:.3f}")
    pool.shutdown(wait=False)
    if failed:
        raise SystemExit(f"{len(failed)} of {len(lane['tasks'])} runs failed in this lane")
    return done


# --------------------------------------------------------------------------- every lane (subprocesses)

def lane_env(gpu: int | None, lanes_here: int, cache: str | None) -> dict[str, str]:
    from train.launch import child_env

    env = child_env({"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // max(1, lanes_here)))})
    env.pop("TORCHELASTIC_RUN_ID", None)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "MASTER_ADDR"):
        env.pop(k, None)  # each lane is a world of its own
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    if cache:
        env["TORCHINDUCTOR_CACHE_DIR"] = cache
    return env


def launch_lane(lane_file: str | Path, env: dict[str, str], log: str | Path, cwd: str | Path | None = None) -> int:
    """Run one lane file in a process of its own (in `cwd`, default this one); its output goes to
    `log`. Returns the exit code."""
    with open(log, "a") as f:
        return subprocess.run([sys.executable, "-m", "train.suite", "--lane", str(Path(lane_file).resolve())],
                              env=env, stdout=f, stderr=subprocess.STDOUT, cwd=cwd).returncode


def write_lanes(tasks_file: str | Path, lanes: int, folder: str | Path) -> list[Path]:
    """Split a task list into lane files under `folder` (lane<k>.json)."""
    spec = json.loads(Path(tasks_file).read_text())
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("lane*.json"):
        old.unlink()
    out = []
    for k, part in enumerate(pack(spec["tasks"], lanes)):
        p = folder / f"lane{k}.json"
        p.write_text(json.dumps({**spec, "tasks": part}))
        out.append(p)
    return out


def run_tasks(tasks_file: str | Path, per_gpu: int | str = "auto", lanes: int | None = None,
              echo: Callable[[str], None] = print) -> dict:
    """Every task of a task list, packed `per_gpu` lanes to a GPU (CPU: `lanes`, default 1), lanes side
    by side in subprocesses. Returns {"lanes", "per_gpu", "gpus", "wall_s", "failed"}."""
    t0 = time.time()
    spec = json.loads(Path(tasks_file).read_text())
    n_gpu = gpus()
    if per_gpu == "auto":
        per_gpu = int(spec.get("per_gpu_auto") or 1)
    per_gpu = int(per_gpu)
    n_lanes = lanes or (n_gpu * per_gpu if n_gpu else 1)
    folder = Path(tasks_file).with_suffix("")  # tasks.json -> tasks/
    files = write_lanes(tasks_file, n_lanes, folder / "lanes")
    # one compile cache for the lanes: the one the caller names (shared by several task lists: a lane
    # that finds the model's graphs there starts in ~3 s instead of ~16 s on an H200), else the list's own
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or str((folder / "compile_cache").resolve())
    echo(f"[suite] {len(spec['tasks'])} runs in {len(files)} lanes ({per_gpu} per GPU on {n_gpu} GPU(s))" if n_gpu
         else f"[suite] {len(spec['tasks'])} runs in {len(files)} lanes on the CPU")

    def go(k: int) -> int:
        env = lane_env(k % n_gpu if n_gpu else None, max(1, len(files)), cache)
        return launch_lane(files[k], env, files[k].with_suffix(".log"))

    with cf.ThreadPoolExecutor(len(files)) as ex:
        codes = list(ex.map(go, range(len(files))))
    failed = [str(files[k].with_suffix(".log")) for k, c in enumerate(codes) if c != 0]
    for log in failed:
        echo(f"[suite] lane failed; last lines of {log}:\n" + "\n".join(Path(log).read_text().splitlines()[-30:]))
    return {"lanes": len(files), "per_gpu": per_gpu, "gpus": n_gpu, "wall_s": round(time.time() - t0, 2), "failed": failed}


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="train.suite", description=__doc__.split("\n")[0])
    ap.add_argument("tasks", nargs="?", help="a task list (tasks.json) written by `factory ablate --plan-only`")
    ap.add_argument("--lane", help="run one lane file in this process")
    ap.add_argument("--per-gpu", default="auto", help="lanes per GPU (default: the task list's estimate)")
    ap.add_argument("--lanes", type=int, default=None, help="number of lanes (default: GPUs x per-gpu, or 1 on CPU)")
    a = ap.parse_args(argv)
    if a.lane:
        code = 0
        try:
            run_lane(json.loads(Path(a.lane).read_text()))
        except SystemExit as e:
            print(f"[suite] {e}", flush=True)
            code = 1
        finally:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)  # gloo's threads can abort a normal interpreter exit
    if not a.tasks:
        ap.error("give a task list (tasks.json) or --lane LANE.json")
    res = run_tasks(a.tasks, a.per_gpu, a.lanes)
    print(json.dumps(res), flush=True)
    sys.exit(1 if res["failed"] else 0)


if __name__ == "__main__":
    main()
