"""Elapsed time and ETA in words, shared by the trainer's step lines and the factory's progress bars
(pure Python: the trainer's hosts have no factory dependencies)."""

from __future__ import annotations

import os

EVERY_ENV = "FACTORY_PROGRESS_EVERY_S"  # seconds between plain progress lines where nothing redraws


def every_s(default: float = 15.0) -> float:
    return float(os.environ.get(EVERY_ENV, default))


def clock(seconds: float | None) -> str:
    """H:MM:SS, or -:--:-- when unknown."""
    if seconds is None:
        return "-:--:--"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


def eta_s(done: float, total: float | None, elapsed: float | None) -> float | None:
    """Seconds left at the average rate since the start (None before the first item). rich's own
    estimate needs several updates inside a 30 s window, so a stage whose items take minutes (a
    training run per ablation cell) would never show one."""
    if total is None or elapsed is None or done <= 0:
        return None
    return max(0.0, elapsed * (total - done) / done)
