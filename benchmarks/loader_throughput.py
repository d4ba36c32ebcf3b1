"""Loader throughput: MixLoader tokens/s in one process against a plain sequential copy of the same bytes.

The loader does the real work of training: a blended schedule over three memory-mapped sources,
a fresh permutation of windows per epoch (random access), packed windows of seq_len+1 tokens copied
into an int64 batch tensor. The anchor reads the same number of tokens from the same mmapped shards
in order, straight into a batch of the same shape. Ratio = loader / anchor (1.0 = as fast as memcpy).

The claim of the issue is against the trainer: the loader must supply tokens 50x faster than one
H100 consumes them. That figure comes from the training benchmark: pass `--trainer-tokens-per-s`,
or it is read from benchmarks/results/train_mfu.json (`tokens_per_s`, or `ours` when its unit is
tokens/s). Only numpy, torch and `train` are imported, so it runs on a bare GPU host too.

    python benchmarks/loader_throughput.py [--seq-len 2048] [--batch 8] [--tokens 48e6]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train.loader import MixLoader  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    """The CPU the loader runs on (and the GPU next to it, if any)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpu += f" ({os.cpu_count()} cores)"
    return cpu + (f", host of {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "")


def write_sources(root: Path, total: int, vocab: int, seed: int = 0) -> dict[str, Path]:
    """Three sources of random token ids in datatrove's .ds format (two shards each)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, frac in (("synthetic", 0.2), ("web", 0.5), ("rewrite", 0.3)):
        folder = root / name
        folder.mkdir(parents=True)
        n = int(total * frac)
        for r, part in enumerate((n // 2, n - n // 2)):
            toks = rng.integers(0, vocab, size=part, dtype=np.uint16)
            f = folder / f"{name}_{r:05d}_unshuffled.ds"
            toks.tofile(f)
            ends = np.append(np.arange(500, part, 500, dtype="<u8"), np.uint64(part))
            ends.tofile(f"{f}.index")
            Path(f"{f}.metadata").write_text(f"bench|2\n{part}\n{part}")
        out[name] = folder
    return out


def make_plan(sources: dict[str, Path], seq_len: int, tokens: int, vocab: int) -> dict:
    shares = {"synthetic": 0.4, "web": 0.3, "rewrite": 0.3}  # synthetic is drawn ~2 epochs: permutations change
    n = tokens // seq_len
    counts = {k: int(v * n) for k, v in shares.items()}
    counts["web"] += n - sum(counts.values())
    rows = [{"name": k, "path": str(p), "kind": k, "share": shares[k], "unique_tokens": 0, "tokens": counts[k] * seq_len,
             "epochs": 0.0, "max_epochs": None} for k, p in sources.items()]
    return {"mix": "bench", "seq_len": seq_len, "seed": 0, "tokenizer": "", "vocab_size": vocab,
            "total_tokens": n * seq_len, "phases": [{"name": "main", "tokens": n * seq_len, "sources": rows}]}


def bench_loader(plan: dict, batch: int, seconds: float) -> tuple[float, int]:
    ld = MixLoader(plan, 0, 1, batch)
    it = iter(ld)
    next(it)  # first permutations built outside the clock, like a warm trainer
    n, t0 = 0, time.perf_counter()
    for b in it:
        n += b.shape[0] * (b.shape[1] - 1)
        if time.perf_counter() - t0 > seconds:
            break
    return n / (time.perf_counter() - t0), n


def bench_sequential(sources: dict[str, Path], seq_len: int, batch: int, tokens: int) -> float:
    arrays = [np.memmap(f, dtype=np.uint16, mode="r") for p in sources.values() for f in sorted(p.glob("*.ds"))]
    out = np.empty((batch, seq_len + 1), dtype=np.int64)
    n, t0 = 0, time.perf_counter()
    while n < tokens:
        for arr in arrays:
            for a in range(0, len(arr) - batch * (seq_len + 1), batch * (seq_len + 1)):
                out[:] = arr[a:a + batch * (seq_len + 1)].reshape(batch, seq_len + 1)
                torch.from_numpy(out)
                n += batch * seq_len
                if n >= tokens:
                    break
            if n >= tokens:
                break
    return n / (time.perf_counter() - t0)


def trainer_rate(arg: float | None) -> tuple[float | None, str | None]:
    if arg:
        return arg, "command line"
    f = RESULTS / "train_mfu.json"
    if f.exists():
        d = json.loads(f.read_text())
        for key in ("tokens_per_s", "ours_tok_s"):
            if d.get(key):
                return float(d[key]), f"{f.name} ({d.get('machine')})"
        if "tokens/s" in str(d.get("unit", "")):
            return float(d["ours"]), f"{f.name} ({d.get('machine')})"
    return None, None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=float, default=48e6, help="tokens on disk over the three sources")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--trainer-tokens-per-s", type=float, default=None)
    ap.add_argument("--out", default=str(RESULTS / "loader_throughput.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    vocab = 32000
    with tempfile.TemporaryDirectory() as d:
        sources = write_sources(Path(d), int(args.tokens), vocab)
        plan = make_plan(sources, args.seq_len, int(4 * args.tokens), vocab)  # several epochs: runs for --seconds
        t0 = time.perf_counter()
        MixLoader(plan, 0, 1, args.batch)
        setup = time.perf_counter() - t0
        ours, drawn = bench_loader(plan, args.batch, args.seconds)
        anchor = bench_sequential(sources, args.seq_len, args.batch, drawn)
    trainer, trainer_from = trainer_rate(args.trainer_tokens_per_s)
    res = {
        "ours": round(ours), "anchor": round(anchor), "ratio": round(ours / anchor, 4), "unit": "tokens/s per process",
        "target": "loader >= 50x the trainer's consumption on one H100 (vs_trainer)",
        "machine": machine(), "date": datetime.date.today().isoformat(),
        "trainer_tokens_per_s": trainer, "trainer_from": trainer_from,
        "vs_trainer": round(ours / trainer, 2) if trainer else None,
        "setup_s": round(setup, 3), "seq_len": args.seq_len, "batch": args.batch, "tokens_on_disk": int(args.tokens),
        "tokens_measured": drawn,
    }
    print(f"anchor  sequential copy of the same bytes: {anchor:,.0f} tokens/s")
    print(f"ours    MixLoader (blend, permuted windows, mmap): {ours:,.0f} tokens/s")
    print(f"ratio   {res['ratio']:.3f}  (loader plan setup {setup:.2f} s for {plan['total_tokens'] // args.seq_len:,} samples)")
    if trainer:
        print(f"trainer {trainer:,.0f} tokens/s ({trainer_from}): loader is {res['vs_trainer']}x faster (target 50x)")
    else:
        print("trainer tokens/s not known yet: pass --trainer-tokens-per-s or write benchmarks/results/train_mfu.json")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
