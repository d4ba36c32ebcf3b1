"""Real Ray nodes on loopback for tests: a single head, or a head plus worker nodes on one machine.

Every node is its own set of processes started with Ray's CLI (`ray start --head`, then
`ray start --address ...`), with its own free ports (GCS on the head, node manager, object manager,
dashboard agent, runtime env agent, metrics, and a worker port range that holds no other port), its
own private temp dir (short: Ray's socket paths must fit 107 bytes), and token auth with a private
token file named by RAY_AUTH_TOKEN_PATH (the user's ~/.ray is left alone). Nothing here calls
`ray stop`, which would stop every Ray of this user on the machine: a node's processes are found by
the PIDs seen at start, by their command line (the node's temp dir; the head's GCS port), and
followed down to their children.

`Cluster` is a head plus named worker nodes, each with a custom resource of its name (`node_head`,
`node_a`, `node_b`) so a test can pin work to a node; `kill_node(name)` SIGKILLs one node's raylet
and every process of it (workers included), so the node is lost for good. The head runs with short
health checks (`FAST_NODE_DEATH`), so the GCS declares a killed node dead in about
period x threshold (a few seconds) instead of Ray's default (~15 s after the 5 s initial delay).
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
MiB = 1024**2

# GCS health checks of the raylets (Ray 2.60, `RAY_<name>` env vars read by the GCS on the head).
# A SIGKILLed raylet refuses the check's connection at once, so it is declared dead after about
# period x threshold; the timeout only bounds a check against a raylet that hangs (a busy 2-core CI
# machine must not lose a live node to it).
FAST_NODE_DEATH = {
    "RAY_health_check_initial_delay_ms": "1000",  # default 5000
    "RAY_health_check_period_ms": "1000",  # default 3000
    "RAY_health_check_timeout_ms": "2000",  # default 10000
    "RAY_health_check_failure_threshold": "3",  # default 5
}
WORKER_PORTS = 64  # per node: tasks, actors and drivers each hold one while they live


def free_ports(n: int) -> list[int]:
    """n distinct ports that are free now (from the OS's ephemeral range)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port_range(n: int, avoid: set[int] = frozenset(), lo: int = 20000, hi: int = 32000) -> tuple[int, int]:
    """A run of n free ports (first, last) below the OS's ephemeral range, so `free_ports` never
    hands one of them out, and clear of `avoid`; the start is random, so concurrent test runs rarely meet."""
    rng = random.Random()
    for _ in range(200):
        first = rng.randrange(lo, hi - n)
        ports = range(first, first + n)
        if not avoid.intersection(ports) and all(_bindable(p) for p in ports):
            return first, first + n - 1
    raise RuntimeError(f"no {n} consecutive free ports in [{lo}, {hi})")


def new_token(temp_dir: str) -> Path:
    token = Path(temp_dir) / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    return token


def ray_env(token: Path, extra: dict | None = None) -> dict:
    """The caller's environment (so exported AWS_*, HF_* ... reach Ray's workers) with token auth on
    this cluster's private token, usage stats off, this venv's `ray` first on PATH, and no address
    that would point a client at some other cluster."""
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", HF_HUB_OFFLINE="1")
    for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN"):
        env.pop(k, None)
    env.update(extra or {})
    return env


def _psutil():
    import psutil
    import ray  # noqa: F401  (puts the psutil that Ray ships on sys.path)

    return psutil


def _tree(pids: set[int]) -> list:
    """The processes `pids` and all their descendants (this process excluded)."""
    psutil = _psutil()
    out = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            out[pid] = proc
            out.update({c.pid: c for c in proc.children(recursive=True)})
        except psutil.Error:
            pass
    out.pop(os.getpid(), None)
    return list(out.values())


def terminate(procs: list, grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL what is left after `grace_s`."""
    psutil = _psutil()
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    kill_now(alive)


def shut_down(procs: list) -> None:
    """Stop Ray processes: all but the GCS first (a raylet given SIGTERM unregisters from the GCS, so
    the GCS must still answer), then the GCS, with SIGKILL (it holds nothing that must be saved)."""
    def is_gcs(p) -> bool:
        try:
            return p.name() == "gcs_server"
        except Exception:
            return False

    terminate([p for p in procs if not is_gcs(p)])
    kill_now([p for p in procs if is_gcs(p)])


def kill_now(procs: list) -> None:
    """SIGKILL every process at once (no process gets the chance to clean up or restart another)."""
    psutil = _psutil()
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


@dataclass
class RayNode:
    """One started node: its temp dir, ports and the processes that belong to it."""

    name: str
    temp_dir: str
    env: dict
    ports: dict[str, int]
    head: bool = False
    resources: dict = field(default_factory=dict)
    pids: set = field(default_factory=set)

    def _mine(self, cmd: str) -> bool:
        if re.search(re.escape(self.temp_dir) + r"(?=$|[/\s'\",])", cmd):
            return True
        # the head's GCS, dashboard and monitor name the GCS port (worker nodes' processes too: fine
        # for stopping a whole cluster, never used to pick one worker node's processes)
        return self.head and f":{self.ports['gcs']}" in cmd and "ray" in cmd

    def processes(self) -> list:
        """This node's processes: started by it or naming its temp dir (or the head's GCS port), plus descendants."""
        psutil = _psutil()
        mine = set(self.pids)
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if self._mine(" ".join(p.info["cmdline"] or [])):
                    mine.add(p.info["pid"])
            except psutil.Error:
                pass
        return _tree(mine)

    def start(self, args: list[str], timeout_s: float = 180) -> None:
        r = subprocess.run([str(BIN / "ray"), "start", *args], env=self.env, capture_output=True, text=True,
                           timeout=timeout_s)
        self.pids = {p.pid for p in self.processes()}
        if r.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start ({self.name}) failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")

    def stop(self) -> None:
        shut_down(self.processes())

    def kill(self) -> None:
        kill_now(self.processes())


def node_args(node: RayNode, num_cpus: float, object_store_bytes: int, worker_ports: tuple[int, int] | None) -> list[str]:
    """`ray start` flags every node takes: loopback, its own ports and temp dir, its size and resources."""
    p = node.ports
    args = ["--node-ip-address", "127.0.0.1", "--node-manager-port", str(p["node_manager"]),
            "--object-manager-port", str(p["object_manager"]), "--dashboard-agent-listen-port", str(p["agent"]),
            "--dashboard-agent-grpc-port", str(p["agent_grpc"]), "--runtime-env-agent-port", str(p["runtime_env"]),
            "--metrics-export-port", str(p["metrics"]), "--num-cpus", str(num_cpus),
            "--object-store-memory", str(object_store_bytes), "--temp-dir", node.temp_dir, "--disable-usage-stats"]
    if worker_ports:
        args += ["--min-worker-port", str(worker_ports[0]), "--max-worker-port", str(worker_ports[1])]
    if node.resources:
        args += ["--resources", json.dumps(node.resources)]
    return args


def _node_ports() -> dict[str, int]:
    names = ("node_manager", "object_manager", "agent", "agent_grpc", "runtime_env", "metrics")
    return dict(zip(names, free_ports(len(names))))


def _temp_dir() -> str:
    return tempfile.mkdtemp(prefix="rf", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes


def _wait(check, timeout_s: float, what: str, every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            out = check()
            if out:
                return out
            err = None
        except OSError as e:
            err = e
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s" + (f": {err}" if err else ""))
        time.sleep(every_s)


class RayHead(RayNode):
    """A head node (GCS, optionally dashboard + Job API); `.gcs` is its GCS address."""

    @property
    def gcs_port(self) -> int:
        return self.ports["gcs"]

    @property
    def dashboard_port(self) -> int:
        return self.ports["dashboard"]

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs(self) -> str:
        return (Path(self.temp_dir) / "ray_current_cluster").read_text().strip()

    @property
    def token(self) -> str:
        return Path(self.env["RAY_AUTH_TOKEN_PATH"]).read_text()

    def wait_dashboard(self, timeout_s: float = 60) -> None:
        """The Job API answers once the dashboard's job module and the head's agent are up."""
        req = urllib.request.Request(f"{self.dashboard}/api/version", headers={"Authorization": f"Bearer {self.token}"})
        _wait(lambda: urllib.request.urlopen(req, timeout=2).read() or True, timeout_s, "the dashboard")


def start_head(num_cpus: float = 2, *, dashboard: bool = True, object_store_bytes: int = 200 * MiB,
               resources: dict | None = None, worker_ports: tuple[int, int] | None = None,
               extra_env: dict | None = None, name: str = "head") -> RayHead:
    """A running head (`ray start --head`) with its own token; with `dashboard`, the Job API answers."""
    td = _temp_dir()
    env = ray_env(new_token(td), extra_env)
    gcs, dash, client = free_ports(3)
    head = RayHead(name, td, env, {"gcs": gcs, "dashboard": dash, "client": client, **_node_ports()}, head=True,
                   resources=dict(resources or {}))
    args = ["--head", "--port", str(gcs), "--ray-client-server-port", str(client),
            *node_args(head, num_cpus, object_store_bytes, worker_ports)]
    # without the dashboard, Ray still starts a headless dashboard process: on our port, not 8265
    args += ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
             "--include-dashboard", "true" if dashboard else "false"]
    try:
        head.start(args)
        if dashboard:
            head.wait_dashboard()
    except BaseException:
        head.stop()
        shutil.rmtree(td, ignore_errors=True)
        raise
    return head


class Cluster:
    """A head plus worker nodes on this machine, each its own raylet; see the module docstring.

    `start(num_cpus)` brings up the head (resource `node_head`) and one node per name (resource
    `node_<name>`), and returns once all of them are registered with the GCS. `.address` is the GCS
    address and `.env` the environment a driver or `ray` CLI needs (token auth); `kill_node(name)`
    loses a worker node for good; `stop()` stops everything and removes the temp dirs.
    """

    def __init__(self, workers: tuple[str, ...] = ("a", "b"), *, object_store_bytes: int = 128 * MiB,
                 dashboard: bool = False, fast_node_death: bool = True, node_env: dict | None = None) -> None:
        self.worker_names = tuple(workers)
        self.node_env = node_env or {}  # name -> extra environment of that node (its processes inherit it)
        self.object_store_bytes = object_store_bytes
        self.dashboard = dashboard
        self.fast_node_death = fast_node_death
        self.head: RayHead | None = None
        self.nodes: dict[str, RayNode] = {}  # "head", "a", "b" -> node
        self._used_ports: set[int] = set()

    # -- starting ---------------------------------------------------------------------------------
    def _worker_ports(self) -> tuple[int, int]:
        lo, hi = free_port_range(WORKER_PORTS, self._used_ports)
        self._used_ports.update(range(lo, hi + 1))
        return lo, hi

    def start(self, num_cpus: float = 1, timeout_s: float = 120) -> "Cluster":
        try:
            self.head = start_head(num_cpus, dashboard=self.dashboard, object_store_bytes=self.object_store_bytes,
                                   resources={"node_head": 1}, worker_ports=self._worker_ports(),
                                   extra_env={**(FAST_NODE_DEATH if self.fast_node_death else {}),
                                              **self.node_env.get("head", {})})
            self.nodes["head"] = self.head
            self._used_ports.update(self.head.ports.values())
            started = [self._launch(n, num_cpus) for n in self.worker_names]  # started side by side
            for node, proc in started:
                out, err = proc.communicate(timeout=timeout_s)
                node.pids = {p.pid for p in node.processes()}
                if proc.returncode != 0:
                    raise RuntimeError(f"ray start ({node.name}) failed:\n{out[-3000:]}\n{err[-3000:]}")
            self.wait_alive(len(self.nodes), timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, name: str, num_cpus: float) -> tuple[RayNode, subprocess.Popen]:
        if name in self.nodes:
            raise ValueError(f"node {name!r} exists")
        td = _temp_dir()
        # the head's token file (one cluster, one token); each node its own ports and temp dir
        node = RayNode(name, td, dict(self.head.env), _node_ports(), resources={f"node_{name}": 1})
        for k in FAST_NODE_DEATH:
            node.env.pop(k, None)
        node.env.update(self.node_env.get(name, {}))
        self._used_ports.update(node.ports.values())
        self.nodes[name] = node
        args = ["--address", f"127.0.0.1:{self.head.gcs_port}",
                *node_args(node, num_cpus, self.object_store_bytes, self._worker_ports())]
        proc = subprocess.Popen([str(BIN / "ray"), "start", *args], env=node.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        return node, proc

    def add_node(self, name: str, num_cpus: float = 1, timeout_s: float = 120) -> RayNode:
        """One more worker node (e.g. a replacement for a killed one, under a new name)."""
        node, proc = self._launch(name, num_cpus)
        out, err = proc.communicate(timeout=timeout_s)
        node.pids = {p.pid for p in node.processes()}
        if proc.returncode != 0:
            node.stop()
            raise RuntimeError(f"ray start ({name}) failed:\n{out[-3000:]}\n{err[-3000:]}")
        self.wait_alive(len(self.nodes), timeout_s)
        return node

    # -- what a client needs ------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """The GCS address (`IP:PORT`, as Ray reports it) for `ray.init` / `init_ray` / RAY_ADDRESS."""
        return self.head.gcs

    @property
    def env(self) -> dict:
        """The environment of a driver or `ray` CLI for this cluster: token auth, its token, its address."""
        env = {k: v for k, v in self.head.env.items() if k not in FAST_NODE_DEATH}
        env["RAY_ADDRESS"] = self.address
        return env

    def resource(self, name: str) -> str:
        """The custom resource that pins work to node `name`: `{"node_b": 0.01}` in `.options(resources=...)`."""
        return "node_head" if name == "head" else f"node_{name}"

    # -- observing without a driver ------------------------------------------------------------------
    def gcs_nodes(self, alive: int | None = None, timeout_s: float = 60) -> list[dict]:
        """Every node the GCS knows (`node_id`, `state`, `resources`, `is_head`), asked in a subprocess
        so this process need not be a driver; with `alive`, first waits until that many are ALIVE."""
        r = subprocess.run([sys.executable, "-c", _GCS_NODES, self.address, str(alive or 0), str(timeout_s)],
                           env=self.env, capture_output=True, text=True, timeout=timeout_s + 60)
        if r.returncode != 0:
            raise TimeoutError(f"the GCS at {self.address} did not show {alive} alive nodes in {timeout_s:.0f} s:\n"
                               f"{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    def wait_alive(self, n: int, timeout_s: float = 120) -> list[dict]:
        """Wait until the GCS has `n` alive nodes; returns every node it knows."""
        return self.gcs_nodes(alive=n, timeout_s=timeout_s)

    # -- losing and stopping --------------------------------------------------------------------------
    def kill_node(self, name: str) -> None:
        """SIGKILL node `name`'s raylet and every process of it (object store, agents, workers) at once."""
        if name == "head":
            raise ValueError("kill_node is for worker nodes; stop() ends the cluster")
        node = self.nodes.pop(name)
        node.kill()
        shutil.rmtree(node.temp_dir, ignore_errors=True)

    def stop(self) -> None:
        """SIGKILL every process of every node at once and remove the temp dirs. A graceful stop
        (raylets unregistering, then the GCS) takes seconds and leaves nothing a test needs: the
        cluster's whole state is in memory and its temp dirs."""
        procs = {}
        for node in self.nodes.values():
            procs.update({p.pid: p for p in node.processes()})
        kill_now(list(procs.values()))
        for node in self.nodes.values():
            shutil.rmtree(node.temp_dir, ignore_errors=True)
        self.nodes.clear()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_GCS_NODES = """
import json, sys, time
from ray._raylet import GcsClient
from ray.core.generated.gcs_pb2 import GcsNodeInfo
address, want, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
client, deadline = GcsClient(address=address), time.monotonic() + timeout
while True:
    nodes = [{"node_id": i.node_id.hex(), "state": GcsNodeInfo.GcsNodeState.Name(i.state),
              "resources": dict(i.resources_total), "is_head": i.is_head_node}
             for i in client.get_all_node_info(timeout=10).values()]
    if sum(n["state"] == "ALIVE" for n in nodes) >= want or time.monotonic() > deadline:
        break
    time.sleep(0.2)
print(json.dumps(nodes))
sys.exit(0 if sum(n["state"] == "ALIVE" for n in nodes) >= want else 1)
"""
