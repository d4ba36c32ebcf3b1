"""Weak scaling of our FSDP2 loop: tokens/s per GPU on 1, 2, 4 GPUs of one host (350M preset, bf16 +
compile, seq 2048, 24 sequences per GPU per step); efficiency = per-GPU tokens/s at N over at 1.

    python benchmarks/train_scaling.py [--gpus 1,2,4]

Writes benchmarks/results/train_scaling.json (ours = per-GPU tok/s at the most GPUs, anchor = the
same on 1 GPU, ratio = scaling efficiency, target 0.9). Needs CUDA GPUs; elsewhere it skips.
"""

from __future__ import annotations

NEEDS_GPU = True  # run_all skips it where no CUDA device is present

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_mfu import RESULTS, measure_ours  # noqa: E402

TARGET = 0.9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", default="1,2,4")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--micro", type=int, default=24)
    ap.add_argument("--sdpa", default="auto")
    ap.add_argument("--out", default=str(RESULTS / "train_scaling.json"))
    a = ap.parse_args(argv)
    import torch
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = [n for n in (int(x) for x in a.gpus.split(",")) if n <= have]
    if not gpus or gpus[0] != 1 or len(gpus) < 2:
        print(f"train_scaling: needs at least 2 CUDA GPUs (found {have}); skipped")
        return 0
    card = torch.cuda.get_device_name()
    rows = []
    for n in gpus:
        r = measure_ours(n, a.steps, warm=8, micro=a.micro, sdpa=a.sdpa)
        rows.append(r)
        print(f"{n} GPU(s): {r['tok_s']:,} tok/s, {r['tok_s_per_gpu']:,} per GPU, MFU {r['mfu']:.3f}", flush=True)
    base = rows[0]["tok_s_per_gpu"]
    for r in rows:
        r["efficiency"] = round(r["tok_s_per_gpu"] / base, 3)
    top = rows[-1]
    res = {"ours": top["tok_s_per_gpu"], "anchor": base, "ratio": top["efficiency"],
           "unit": f"tokens/s per GPU at {top['nproc']} GPUs (ours) vs 1 GPU (anchor); ratio = scaling efficiency",
           "target": TARGET, "machine": f"{len(gpus) and max(gpus)} x {card}", "date": dt.date.today().isoformat(),
           "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"\n{'GPUs':>5}{'tok/s':>12}{'per GPU':>10}{'MFU':>7}{'eff':>7}   card: {card}")
    for r in rows:
        print(f"{r['nproc']:>5}{r['tok_s']:>12,}{r['tok_s_per_gpu']:>10,}{r['mfu']:>7.3f}{r['efficiency']:>7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
