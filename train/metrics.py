"""Per-step metrics: one JSON line per step in `metrics.jsonl` (rank 0), TensorBoard when installed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

# Dense bf16 tensor-core peaks per device (FLOP/s), matched against the device name.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


def peak_flops(device: torch.device, override: float | None = None) -> float | None:
    """The device's dense bf16 peak, `override` if given, None where unknown (CPU)."""
    if override:
        return float(override)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, val in PEAK_BF16.items():
            if key in name:
                return val
    return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


class MetricsLog:
    """Appends step records to run_dir/metrics.jsonl; only the writer rank writes anything."""

    def __init__(self, run_dir: str | Path, write: bool, tensorboard: bool = True, resume_step: int = 0):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.write = write
        self.tb = None
        if not write:
            return
        if resume_step and self.path.exists():  # drop steps a killed run logged after its checkpoint
            keep = [l for l in self.path.read_text().splitlines() if l.strip() and _step(l) <= resume_step]
            self.path.write_text("".join(k + "\n" for k in keep))
        elif self.path.exists():
            self.path.unlink()
        self._f = open(self.path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(Path(run_dir) / "tb"))
            except Exception:  # tensorboard is optional
                self.tb = None

    def log(self, rec: dict) -> None:
        if not self.write:
            return
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()
        if self.tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, rec.get("step", 0))

    def close(self) -> None:
        if self.write:
            self._f.close()
            if self.tb is not None:
                self.tb.close()


def _step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 1 << 60


def read(run_dir: str | Path) -> list[dict]:
    p = Path(run_dir) / "metrics.jsonl"
    return [json.loads(l) for l in p.read_text().splitlines() if l.strip()] if p.exists() else []
