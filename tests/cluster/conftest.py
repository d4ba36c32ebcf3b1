"""A real Ray head on loopback (`ray start --head`, dashboard and Job API on), token auth on.

Every port is a free one and the temp dir is private, so the head never collides with another Ray
on the machine, and `ray.init()` elsewhere never finds it. The token lives in a temp file named by
RAY_AUTH_TOKEN_PATH (the user's ~/.ray is left alone). At the end the head's processes, found by
the private temp dir and the GCS port and followed down to their children, get SIGTERM, then
SIGKILL: `ray stop` would also stop every other Ray of this user on the machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass
class RayHead:
    temp_dir: str
    gcs_port: int
    dashboard_port: int
    env: dict
    pids: set = field(default_factory=set)

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs(self) -> str:
        return (Path(self.temp_dir) / "ray_current_cluster").read_text().strip()

    def processes(self):
        """This head's processes: their command line names its temp dir or GCS port; plus descendants."""
        import ray  # noqa: F401  (puts the psutil that Ray ships on sys.path)
        import psutil

        mine = set()
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if self.temp_dir in cmd or (f":{self.gcs_port}" in cmd and "ray" in cmd):
                mine.add(p.info["pid"])
        out = {}
        for pid in mine | self.pids:
            try:
                proc = psutil.Process(pid)
                out[pid] = proc
                out.update({c.pid: c for c in proc.children(recursive=True)})
            except psutil.Error:
                pass
        out.pop(os.getpid(), None)
        return list(out.values())

    def stop(self) -> None:
        import ray  # noqa: F401  (puts the psutil that Ray ships on sys.path)
        import psutil

        procs = self.processes()
        for p in procs:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(procs, timeout=5)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)


def start_head(num_cpus: int = 2) -> RayHead:
    td = tempfile.mkdtemp(prefix="rf", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    token = Path(td) / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    gcs, dash, agent, agent_grpc, renv, metrics, client, node, obj = free_ports(9)
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", HF_HUB_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_API_SERVER_ADDRESS", None)
    cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--include-dashboard", "true",
           "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
           "--runtime-env-agent-port", str(renv), "--metrics-export-port", str(metrics),
           "--ray-client-server-port", str(client), "--node-manager-port", str(node),
           "--object-manager-port", str(obj), "--num-cpus", str(num_cpus),
           "--object-store-memory", str(200 * 1024**2), "--temp-dir", td, "--disable-usage-stats"]
    head = RayHead(td, gcs, dash, env)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    if r.returncode != 0:
        head.stop()
        raise RuntimeError(f"ray start failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    head.pids = {p.pid for p in head.processes()}
    # the Job API answers once the dashboard's job module and the head's agent are up
    import urllib.request

    deadline = time.time() + 60
    while True:
        try:
            req = urllib.request.Request(f"{head.dashboard}/api/version",
                                         headers={"Authorization": f"Bearer {token.read_text()}"})
            urllib.request.urlopen(req, timeout=2).read()
            break
        except OSError:
            if time.time() > deadline:
                head.stop()
                raise
            time.sleep(0.5)
    return head


@pytest.fixture(scope="session")
def ray_head(request):
    """A running head; the finalizer always stops it and removes its temp dir."""
    head = start_head()

    def fin():
        head.stop()
        shutil.rmtree(head.temp_dir, ignore_errors=True)

    request.addfinalizer(fin)
    return head


@pytest.fixture
def head_env(ray_head):
    """This process talks to the head the way a user's shell would: the same auth mode and token."""
    from factory.cluster import _refresh_ray_auth

    keys = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "PATH", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: ray_head.env[k] for k in keys[:3]})
    for k in keys[3:]:
        os.environ.pop(k, None)
    _refresh_ray_auth()
    try:
        yield ray_head
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _refresh_ray_auth()
