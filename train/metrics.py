"""Per-step metrics: one JSON line per step in `metrics.jsonl` (rank 0), TensorBoard when installed.

For a run on a URL the log is written locally (scratch) and uploaded by `sync()`: at every
checkpoint (before it is committed), at most every `sync_every_s` seconds, and at the end. The
store's copy is the truth when a run resumes, even on a machine that never saw the run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from train import storage

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

    def __init__(self, run_dir: str | Path, write: bool, tensorboard: bool = True, resume_step: int = 0,
                 local_dir: str | Path | None = None, sync_every_s: float = 60.0):
        self.url = str(run_dir).rstrip("/") if storage.is_url(run_dir) else None
        local = Path(local_dir or storage.scratch(str(run_dir))) if self.url else Path(run_dir)
        self.path, self.tb_dir = local / "metrics.jsonl", local / "tb"
        self.write, self.sync_every_s, self._synced = write, sync_every_s, time.monotonic()
        self.tb = None
        if not write:
            return
        if self.url:  # the store's log (up to the checkpoint this run resumes from) is the one kept
            local.mkdir(parents=True, exist_ok=True)
            remote = storage.join(self.url, "metrics.jsonl")
            self.path.write_text(storage.read_text(remote) if resume_step and storage.exists(remote) else "")
        if resume_step and self.path.exists():  # drop steps a killed run logged after its checkpoint
            keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and _step(ln) <= resume_step]
            self.path.write_text("".join(k + "\n" for k in keep))
        elif self.path.exists():
            self.path.unlink()
        self._f = open(self.path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # installed with the package; a bare GPU host may lack it
                print("[train] train.tensorboard is on but the tensorboard package is not installed: no TensorBoard "
                      "logs, metrics.jsonl only (fix: pip install tensorboard, or set train.tensorboard: false)",
                      flush=True)
            else:
                self.tb = SummaryWriter(str(self.tb_dir))
        self.sync()

    def log(self, rec: dict) -> None:
        if not self.write:
            return
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()
        if self.tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, rec.get("step", 0))
        if self.url and time.monotonic() - self._synced > self.sync_every_s:
            self.sync()

    def sync(self) -> None:
        """Upload the log (and TensorBoard files) to the run's URL; nothing for a local run."""
        if not (self.write and self.url):
            return
        self._f.flush()
        storage.put_file(self.path, storage.join(self.url, "metrics.jsonl"))
        if self.tb is not None:
            self.tb.flush()
            storage.put_dir(self.tb_dir, storage.join(self.url, "tb"))
        self._synced = time.monotonic()

    def close(self) -> None:
        if self.write:
            self.sync()
            self._f.close()
            if self.tb is not None:
                self.tb.close()


def _step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 1 << 60


def read(run_dir: str | Path) -> list[dict]:
    """The step records of a run (a local folder or a URL); [] when it has none yet."""
    p = storage.join(run_dir, "metrics.jsonl")
    return [json.loads(ln) for ln in storage.read_text(p).splitlines() if ln.strip()] if storage.exists(p) else []
