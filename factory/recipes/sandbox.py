"""Run untrusted Python in a sandboxed subprocess.

Each run gets its own temporary directory, a minimal environment, a wall-clock limit (the whole
process group is killed on timeout), CPU, address-space (RLIMIT_AS) and file-size limits, and no
network: inside a fresh network namespace (`unshare -n`) where that works, and always an audit
hook that refuses socket creation, so a script that opens a socket fails either way.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

OUTPUT_LIMIT = 16_384

# Installed before the user's code runs: blocks sockets, then runs main.py as __main__.
_BOOT = r"""
import os, sys, runpy
_HOME = os.path.realpath(os.getcwd())
_DENY = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto",
         "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.fork", "os.forkpty", "pty.spawn"}
_PATHS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.symlink",
          "os.link", "os.truncate", "shutil.rmtree", "shutil.copyfile"}
def _outside(path):
    try:
        p = os.path.realpath(os.fsdecode(path)) if not isinstance(path, int) else _HOME
    except Exception:
        return True
    return p != _HOME and not p.startswith(_HOME + os.sep)
def _deny(event, args):
    if event in _DENY:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open" and args and args[0] is not None:
        mode, flags = args[1] or "", args[2] or 0
        writing = any(c in str(mode) for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        if writing and _outside(args[0]):
            raise PermissionError(f"sandbox: writing {args[0]!r} outside the sandbox is not allowed")
    elif event in _PATHS and args and _outside(args[0]):
        raise PermissionError(f"sandbox: {event} outside the sandbox is not allowed")
sys.addaudithook(_deny)
sys.path.insert(0, ".")
sys.argv = ["main.py"]
runpy.run_path("main.py", run_name="__main__")
"""


@dataclass
class ExecResult:
    ok: bool
    returncode: int | None
    timed_out: bool
    duration_s: float
    stdout: str
    stderr: str
    isolation: str  # "netns" or "audit-hook"

    @property
    def reason(self) -> str:
        if self.ok:
            return "ok"
        if self.timed_out:
            return "timeout"
        err = self.stderr
        if "MemoryError" in err or self.returncode == -signal.SIGKILL:
            return "memory"
        if "sandbox: socket" in err or "Network is unreachable" in err:
            return "network"
        if "sandbox:" in err:
            return "forbidden"
        if "AssertionError" in err:
            return "assertion"
        if (self.returncode or 0) < 0:
            return "crash"
        return "error"

    def verdict(self) -> dict:
        d = asdict(self)
        d["reason"] = self.reason
        d["stdout"], d["stderr"] = self.stdout[-500:], self.stderr[-800:]
        return d


NOBODY = 65534


@functools.lru_cache(maxsize=1)
def _unshare_cmd() -> tuple[str, ...] | None:
    """The strongest `unshare` prefix that works here: a fresh network namespace, and uid/gid
    nobody when we are root and the interpreter is readable by nobody; None when neither works."""
    exe = shutil.which("unshare")
    if not exe:
        return None
    variants = [(exe, "-n", "-S", str(NOBODY), "-G", str(NOBODY))] if os.geteuid() == 0 else []
    variants.append((exe, "-n"))
    for cmd in variants:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                os.chmod(tmp, 0o777)
                r = subprocess.run([*cmd, sys.executable, "-c", "pass"], cwd=tmp, capture_output=True, timeout=10)
            if r.returncode == 0:
                return cmd
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def netns_available() -> bool:
    """Whether `unshare -n` can make a network namespace here (needs root or user namespaces)."""
    return _unshare_cmd() is not None


def _limits(memory_mb: int, cpu_s: int) -> None:
    os.setsid()
    mem = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_python(code: str, *, files: dict[str, str] | None = None, timeout_s: float = 5.0,
               memory_mb: int = 512, network: bool = False) -> ExecResult:
    """Run `code` as main.py next to `files` (e.g. solution.py); ok means exit status 0."""
    with tempfile.TemporaryDirectory(prefix="factory-sandbox-") as tmp:
        for name, text in {**(files or {}), "main.py": code, "_boot.py": _BOOT}.items():
            with open(os.path.join(tmp, name), "w") as f:
                f.write(text)
        cmd = [sys.executable, "-I", "-B", "_boot.py"]
        isolation = "audit-hook"
        prefix = None if network else _unshare_cmd()
        if prefix:
            cmd = [*prefix, *cmd]
            isolation = "netns"
            if "-S" in prefix:  # the child runs as nobody: give it the folder
                isolation = "netns+nobody"
                for name in os.listdir(tmp) + ["."]:
                    os.chown(os.path.join(tmp, name), NOBODY, NOBODY)
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, preexec_fn=lambda: _limits(memory_mb, int(timeout_s) + 1))
        timed_out = False
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, err = proc.communicate()
        dur = time.monotonic() - t0
        rc = proc.returncode
        if rc == -signal.SIGXCPU:
            timed_out = True
        return ExecResult(ok=rc == 0 and not timed_out, returncode=rc, timed_out=timed_out, duration_s=round(dur, 3),
                          stdout=out.decode(errors="replace")[-OUTPUT_LIMIT:],
                          stderr=err.decode(errors="replace")[-OUTPUT_LIMIT:], isolation=isolation)
