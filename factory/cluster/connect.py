"""Connecting to Ray, for every stage: connect to a cluster (`address` or `RAY_ADDRESS`) or start a small local one.

Token auth, made explicit. Ray 2.60 decides auth per process, and not the same way everywhere:
`ray.init()` starting a new local cluster turns token auth on and writes `~/.ray/auth_token`
if missing; `ray start --head` turns it on only if a token already exists; `ray.init(address=...)`
and the Job SDK send a token only when `RAY_AUTH_MODE=token` is set in their environment. So one
machine easily ends up with a token cluster and a client that does not send it (401 / 403).

The factory resolves the mode once, with `auth_mode()`, and exports it as `RAY_AUTH_MODE` before
any Ray call, so `ray start`, `ray.init`, job submission and the job's own processes (which inherit
the environment) agree:
  1. `RAY_AUTH_MODE` set by the user: respected as is.
  2. a token is available (`RAY_AUTH_TOKEN`, the file named by `RAY_AUTH_TOKEN_PATH`, or
     `~/.ray/auth_token`): "token".
  3. otherwise: "token" when starting a new local cluster (Ray's default; it writes the token
     file), "disabled" when connecting (there is nothing to send; a cluster that wants a token
     answers with an error that says where to put it).
The token value itself is never logged, stored in job metadata, or forwarded by the factory.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from factory.core.errors import FactoryError

LOCAL_OBJECT_STORE_BYTES = 300 * 1024**2
# A local Ray started here has no dashboard, so nobody reads its task events or metrics: it stops
# reporting them (its idle processes then burn ~7.5% of a core instead of ~9%, CPU a local teacher
# may share). `RAY_<name>` variables and a caller's own `_system_config` still win.
QUIET_LOCAL = {"task_events_report_interval_ms": 0, "enable_metrics_collection": False,
               "metrics_report_interval_ms": 600_000, "event_stats": False}
AUTH_ENV, TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
_CONNECT_TIMEOUT_S = 5.0
# ray.init arguments that only shape a new local Ray; Ray rejects them when connecting, we drop them.
LOCAL_ONLY = ("num_cpus", "num_gpus", "resources", "labels", "object_store_memory", "include_dashboard",
              "dashboard_host", "dashboard_port", "_system_config", "_enable_object_reconstruction", "_node_name",
              "_temp_dir", "_memory", "_plasma_directory")


def default_token_path() -> Path:
    return Path.home() / ".ray" / "auth_token"


def token_available(env: dict | None = None) -> bool:
    """True when Ray would find a token: `RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH`, or ~/.ray/auth_token."""
    env = os.environ if env is None else env
    if env.get(TOKEN_ENV, "").strip():
        return True
    path = env.get(TOKEN_PATH_ENV)
    path = Path(path) if path else default_token_path()
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def auth_mode(starting_local: bool = False, env: dict | None = None) -> str:
    """The auth mode the factory uses: "token" or "disabled" (see the module docstring)."""
    env = os.environ if env is None else env
    mode = env.get(AUTH_ENV, "").strip().lower()
    if mode:
        if mode not in ("token", "disabled"):
            raise FactoryError(f"unknown {AUTH_ENV} '{mode}'", where="environment", field=AUTH_ENV,
                               fix="set RAY_AUTH_MODE to 'token' or 'disabled', or unset it")
        return mode
    return "token" if (starting_local or token_available(env)) else "disabled"


def apply_auth_env(starting_local: bool = False) -> str:
    """Export the resolved mode as RAY_AUTH_MODE for this process and its children; returns it."""
    mode = auth_mode(starting_local)
    if os.environ.get(AUTH_ENV) != mode:
        os.environ[AUTH_ENV] = mode
        _refresh_ray_auth()
    return mode


def _refresh_ray_auth() -> None:
    """Make an already-imported Ray see a changed RAY_AUTH_MODE / token (it caches both)."""
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():  # a connected process keeps the config it connected with
        return
    from factory.core.compat import ray_reload_auth

    ray_reload_auth()


def ray_env(extra: dict | None = None, starting_local: bool = False) -> dict:
    """The environment for a Ray subprocess (`ray start`, `ray job ...`): auth mode pinned, no usage stats."""
    env = dict(os.environ)
    env[AUTH_ENV] = auth_mode(starting_local, env)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.update(extra or {})
    return env


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a GCS (`host:port`), Ray Client (`ray://host:port`) or HTTP address."""
    if address in ("auto", "local"):
        return None
    url = urlparse(address if "://" in address else f"gcs://{address}")
    if not url.hostname:
        return None
    default = {"ray": 10001, "http": 80, "https": 443}.get(url.scheme, 6379)
    return url.hostname, url.port or default


def check_reachable(address: str, what: str = "Ray cluster") -> None:
    """FactoryError with the fix when nothing listens at `address` (instead of Ray's long retries)."""
    hp = _host_port(address)
    if hp is None:
        return
    try:
        socket.create_connection(hp, timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise FactoryError(
            f"cannot reach the {what} at {address} ({e.strerror or e})", where="--address / RAY_ADDRESS",
            fix="start one with `ray start --head` or `ray up cluster.yaml`, or pass the head's address "
                "(GCS host:6379 for stages, http://host:8265 for `factory submit`)") from None


def init_ray(address: str | None = None, **kw) -> dict:
    """Connect to `address` or `RAY_ADDRESS`, else start a small local Ray; returns cluster resources.

    Idempotent: when Ray is already initialised it only returns the resources. Extra keyword
    arguments go to `ray.init` (e.g. `runtime_env`, `namespace`); the ones that size a new local
    Ray (`num_cpus`, `object_store_memory`, ...) apply to a local start and are dropped when
    connecting, so a stage passes them unconditionally and still runs unchanged inside a Ray job.
    """
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return dict(ray.cluster_resources())
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address.startswith(("http://", "https://")):
        raise FactoryError(f"'{address}' is a dashboard (job submission) address", where="--address / RAY_ADDRESS",
                           fix="stages connect to the GCS address (host:6379) or ray://host:10001")
    local = address in (None, "local")
    mode = apply_auth_env(starting_local=local)
    kw.setdefault("logging_level", logging.WARNING)
    kw.setdefault("log_to_driver", True)
    if local:
        quiet = {} if kw.get("include_dashboard") else {k: v for k, v in QUIET_LOCAL.items()
                                                         if f"RAY_{k}" not in os.environ}
        defaults = {"num_cpus": os.cpu_count() or 1, "include_dashboard": False,
                    "object_store_memory": LOCAL_OBJECT_STORE_BYTES, "_system_config": quiet}
        kw.update({k: v for k, v in defaults.items() if kw.get(k) is None})
        target = "local"
    else:
        check_reachable(address)
        target = address
        kw = {k: v for k, v in kw.items() if k not in LOCAL_ONLY}
    own = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        ray.init(address=target, **kw)  # sets a SIGTERM handler of its own (sys.exit(15)) in the main thread
    except FactoryError:
        raise
    except Exception as e:  # Ray raises ConnectionError, RuntimeError, AuthenticationError, ValueError
        raise FactoryError(f"Ray could not {'start' if local else 'connect to ' + address}: {_first_line(e)}",
                           where="--address / RAY_ADDRESS", fix=_auth_fix(e, mode)) from None
    if callable(own):  # the caller's own handler (the CLI's: a stage ends as on Ctrl-C) stays in force
        signal.signal(signal.SIGTERM, own)
    return dict(ray.cluster_resources())


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]


def _auth_fix(e: BaseException, mode: str) -> str:
    """The fix for a failed connection; Ray reports a token mismatch on the GCS only as 'Failed to connect'."""
    text = " ".join(str(x) for x in (e, e.__cause__, e.__context__) if x).lower()
    said_auth = any(w in text for w in ("auth", "401", "403", "token"))
    if mode == "token":
        tip = ("the cluster's token must be here: copy the head's ~/.ray/auth_token, or set RAY_AUTH_TOKEN_PATH / "
               "RAY_AUTH_TOKEN (RAY_AUTH_MODE=disabled if the cluster runs without auth)")
    else:
        tip = ("a cluster with token auth needs RAY_AUTH_MODE=token and its token here (the head's "
               "~/.ray/auth_token, or RAY_AUTH_TOKEN_PATH / RAY_AUTH_TOKEN)")
    if said_auth:
        return tip
    return f"check the address and that the head runs Ray {_ray_version()}; if it is right, {tip}"


def _ray_version() -> str:
    try:
        import ray

        return ray.__version__
    except ImportError:
        return "(not installed)"


def cluster_info() -> dict:
    """A summary of the connected cluster: nodes, total and available resources, auth mode."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {"nodes": len(nodes), "resources": dict(ray.cluster_resources()),
            "available": dict(ray.available_resources()), "auth_mode": os.environ.get(AUTH_ENV, "")}


def auth_report(env: dict | None = None) -> dict:
    """The resolved auth mode and the token's source (names and paths only, never the value)."""
    env = os.environ if env is None else env
    if env.get(TOKEN_ENV, "").strip():
        source = f"${TOKEN_ENV}"
    elif env.get(TOKEN_PATH_ENV):
        source = f"${TOKEN_PATH_ENV} = {env[TOKEN_PATH_ENV]}"
    else:
        source = str(default_token_path())
    return {f"{AUTH_ENV} (set)": env.get(AUTH_ENV, "(unset)"), "mode when connecting": auth_mode(False, env),
            "mode when starting a local Ray": auth_mode(True, env), "token source": source,
            "token found": "yes" if token_available(env) else "no"}
