"""SIGTERM to `factory train` (a job stop) ends the training it started too: torchrun runs in a session
of its own, so without the CLI's clean-up it and its ranks would train on, orphaned."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.train.conftest import tiny_config

pytestmark = pytest.mark.slow


def stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, process group) of a live process, else None."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (f[0], int(f[1]), int(f[2])) if f[0] != "Z" else None
    except (OSError, IndexError, ValueError):
        return None


def torchrun_group(parent: int) -> set[int]:
    """Each child of `parent` that leads a process group of its own (torchrun), with every process below it (its ranks)."""
    st = {q: s for d in Path("/proc").iterdir() if d.name.isdigit() and (s := stat(q := int(d.name))) is not None}
    out = {q for q, (_, ppid, pgid) in st.items() if ppid == parent and pgid == q}
    todo = list(out)
    while todo:
        top = todo.pop()
        below = {q for q, (_, ppid, _) in st.items() if ppid == top}
        todo += list(below - out)
        out |= below
    return out


def test_sigterm_stops_the_torchrun_it_started(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tmp_path / "run", **{"checkpoint.every": 0})))
    p = subprocess.Popen([sys.executable, "-c", "from factory.cli import main; main()", "train", str(cfg), "--nproc", "2",
                          "--set", "train.steps=100000"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    group: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while len(group) < 3 and p.poll() is None and time.monotonic() < deadline:  # torchrun and its 2 ranks
            time.sleep(0.2)
            group = torchrun_group(p.pid)
        assert len(group) >= 3 and p.poll() is None, (group, p.poll())
        time.sleep(2)
        p.send_signal(signal.SIGTERM)
        err = p.communicate(timeout=60)[1]
        assert p.returncode == 128 + signal.SIGTERM, err[-2000:]
        assert "stopped by SIGTERM" in err and "Traceback" not in err, err[-2000:]
        deadline = time.monotonic() + 30
        while any(stat(q) for q in group) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [q for q in group if stat(q)], "torchrun or a rank outlived the stopped command"
    finally:  # whatever failed, nothing of this test trains on
        if p.poll() is None:
            group |= torchrun_group(p.pid)
            p.kill()
        for q in group:
            if stat(q):
                os.kill(q, signal.SIGKILL)
