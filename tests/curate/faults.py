"""Fault and latency injection for curation runs (test-only): a slow step, a failing rank and a worker killer."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from datatrove.pipeline.base import PipelineStep


class Slow(PipelineStep):
    """Latency injector: sleeps `seconds` per document, passing every document on unchanged."""

    name = "🐢 Slow (test latency injector)"

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def run(self, data, rank: int = 0, world_size: int = 1):
        for doc in data:
            time.sleep(self.seconds)
            yield doc


class FailRank(PipelineStep):
    """Fault injector: rank `rank` raises after passing `after` documents on; other ranks pass all."""

    name = "💥 FailRank (test fault injector)"

    def __init__(self, rank: int, after: int = 3):
        super().__init__()
        self.rank, self.after = rank, after

    def run(self, data, rank: int = 0, world_size: int = 1):
        for i, doc in enumerate(data):
            if rank == self.rank and i == self.after:
                raise RuntimeError(f"injected failure on rank {rank}")
            yield doc


def _procs() -> dict[int, tuple[int, str]]:
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[int(d.name)] = (ppid, cmd)
    return out


class WorkerKiller(threading.Thread):
    """Waits for a curation Ray worker (a `CurationWorker` actor), lets it work `after` seconds, then
    SIGKILLs it and its forked children, as a lost machine would."""

    def __init__(self, after: float = 1.5, timeout: float = 300):
        super().__init__(daemon=True)
        self.after, self.timeout = after, timeout
        self.killed: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        t0 = time.time()
        while not self.stop.is_set() and time.time() - t0 < self.timeout:
            procs = _procs()
            workers = {p for p, (_, cmd) in procs.items() if cmd.startswith("ray::CurationWorker.run")}
            actors = sorted(p for p in workers if procs[p][0] not in workers)
            if actors:
                time.sleep(self.after)
                actor = actors[0]
                family = [actor] + [p for p, (pp, _) in _procs().items() if pp == actor]
                for p in family:
                    try:
                        os.kill(p, signal.SIGKILL)
                        self.killed.append(p)
                    except ProcessLookupError:
                        pass
                return
            time.sleep(0.2)
