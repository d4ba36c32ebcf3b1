"""`factory` run as a user runs it, in a fresh process, for tests of what a command prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`factory ARGS` in a fresh process; never a traceback, whatever the outcome."""
    env = {**os.environ, "COLUMNS": "200"}
    r = subprocess.run([sys.executable, "-c", "from factory.cli import main; main()", *args], capture_output=True,
                       text=True, cwd=cwd, env=env, timeout=300)
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    return r


def one_error(r: subprocess.CompletedProcess, *names: str) -> str:
    """The single `error:` line of a refused command, which names each of `names` and a fix."""
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in names:
        assert n in lines[0], (n, lines[0])
    assert "(fix: " in lines[0], lines[0]
    return lines[0]
