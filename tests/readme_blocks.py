"""Helpers for tests that run the documentation's command blocks as written: the blocks between two
markers (in README.md or a page of the guide, docs/guide/*.md), a user's environment (no Ray
address, token or S3 settings of the caller), and bash in its own process group."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "guide"
BIN = Path(sys.executable).parent  # the `factory` command of this environment
CLEAN_ENV = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
             "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
             "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_PROFILE", "FSSPEC_S3_ENDPOINT_URL", "FACTORY_SPOOL_DIR",
             "WORK", "VIRTUAL_ENV")


def doc_files() -> list[Path]:
    """The files a reader reads: README.md, then the guide's pages."""
    return [README, *sorted(GUIDE.glob("*.md"))]


def doc_text() -> str:
    """README.md and every page of the guide, one after another."""
    return "\n".join(p.read_text() for p in doc_files())


def marked_file(start: str, end: str) -> Path:
    """The one file of README.md and docs/guide/*.md that holds the `start` ... `end` markers."""
    found = [p for p in doc_files() if start in (t := p.read_text()) and end in t]
    assert len(found) == 1, f"{start} ... {end} should be in exactly one of README.md and docs/guide/*.md: {found}"
    return found[0]


def readme_blocks(start: str, end: str) -> list[str]:
    """The ```bash blocks between the `start` and `end` markers, wherever they live (README.md or
    a page of docs/guide)."""
    text = marked_file(start, end).read_text()
    section = text.split(start, 1)[1].split(end, 1)[0]
    return re.findall(r"^```bash\n(.*?)^```", section, re.S | re.M)


def user_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    env.update(HOME=str(home), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", HF_HUB_OFFLINE="1",
               RAY_USAGE_STATS_ENABLED="0", COLUMNS="120", PYTHONUNBUFFERED="1")
    return env


def run_bash(script: str, env: dict, log: Path, timeout_s: float, cwd: Path = ROOT) -> tuple[int, int]:
    """Run `script` with bash from `cwd` in its own process group; (returncode, group id)."""
    path = log.with_suffix(".sh")
    path.write_text(script)
    with open(log, "w") as out:
        proc = subprocess.Popen(["bash", str(path)], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            return proc.wait(timeout=timeout_s), proc.pid
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return -9, proc.pid
