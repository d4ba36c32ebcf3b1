"""init_ray: the auth-mode rules, clear errors for bad addresses, and RAY_ADDRESS picked up inside jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from factory.cluster import auth_mode, auth_report, init_ray, token_available
from factory.core.errors import FactoryError

from .conftest import free_ports


def test_auth_mode_rules(tmp_path):
    missing = {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")}
    assert auth_mode(env=missing) == "disabled"  # nothing to send when connecting
    assert auth_mode(starting_local=True, env=missing) == "token"  # Ray's default for a new local Ray
    assert auth_mode(env={**missing, "RAY_AUTH_MODE": "disabled"}, starting_local=True) == "disabled"
    tok = tmp_path / "tok"
    tok.write_text("abc123abc123")
    assert token_available({"RAY_AUTH_TOKEN_PATH": str(tok)})
    assert auth_mode(env={"RAY_AUTH_TOKEN_PATH": str(tok)}) == "token"
    assert auth_mode(env={**missing, "RAY_AUTH_TOKEN": "abc123abc123"}) == "token"
    assert auth_mode(env={"RAY_AUTH_TOKEN_PATH": str(tok), "RAY_AUTH_MODE": "Disabled"}) == "disabled"
    with pytest.raises(FactoryError, match="RAY_AUTH_MODE"):
        auth_mode(env={"RAY_AUTH_MODE": "yes"})
    report = auth_report({"RAY_AUTH_TOKEN": "s3cr3t-value-123"})
    assert "s3cr3t-value-123" not in json.dumps(report) and report["token source"] == "$RAY_AUTH_TOKEN"


def test_unreachable_or_wrong_addresses_are_one_clear_error(monkeypatch):
    (port,) = free_ports(1)
    with pytest.raises(FactoryError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:\d+.*ray start --head"):
        init_ray(f"127.0.0.1:{port}")
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(FactoryError, match="cannot reach"):
        init_ray()
    with pytest.raises(FactoryError, match="dashboard .*address"):
        init_ray("http://127.0.0.1:8265")


def run_py(code: str, env: dict, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)


CONNECT = """
import json, ray
from factory.cluster import init_ray, cluster_info
res = init_ray(num_cpus=1, object_store_memory=10**8)  # local-only settings are dropped when connecting
again = init_ray()
print(json.dumps({"cpu": res["CPU"], "same": res == again, "gcs": ray.get_runtime_context().gcs_address,
                  "info": cluster_info()}))
"""


@pytest.mark.slow
def test_init_ray_uses_RAY_ADDRESS_and_pins_the_auth_mode(ray_head):
    env = dict(ray_head.env, RAY_ADDRESS=ray_head.gcs)
    env.pop("RAY_AUTH_MODE")  # the token file alone makes the factory send it
    r = run_py(CONNECT, env)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["cpu"] == 2.0 and out["same"] and out["gcs"] == ray_head.gcs
    assert out["info"]["nodes"] == 1 and out["info"]["auth_mode"] == "token"


@pytest.mark.slow
def test_a_client_without_the_token_gets_the_fix(ray_head, tmp_path):
    # Ray retries the GCS for ~20 s by default; 3 tries are enough to see the refusal
    env = dict(ray_head.env, RAY_ADDRESS=ray_head.gcs, RAY_AUTH_MODE="disabled", RAY_gcs_server_port_wait_time_s="3")
    r = run_py("from factory.cluster import init_ray\ninit_ray()", env)
    assert r.returncode != 0
    assert "FactoryError" in r.stderr and "RAY_AUTH_MODE=token" in r.stderr
    wrong = tmp_path / "wrong"
    wrong.write_text("0" * 64)
    r = subprocess.run([os.path.join(os.path.dirname(sys.executable), "factory"), "jobs", "list",
                        "--address", ray_head.dashboard], capture_output=True, text=True, timeout=60,
                       env=dict(ray_head.env, RAY_AUTH_TOKEN_PATH=str(wrong)))
    assert r.returncode == 2 and "Authentication failed" in r.stderr and "auth_token" in r.stderr


QUIET = """
import json, ray
from factory.cluster import init_ray
init_ray(num_cpus=1, object_store_memory=10**8)
print(json.dumps(ray._private.worker._global_node._config))
"""


@pytest.mark.slow
def test_a_local_ray_does_not_report_what_no_dashboard_reads(tmp_path):
    from factory.cluster.connect import QUIET_LOCAL

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and k[4:] not in QUIET_LOCAL}
    env["RAY_task_events_report_interval_ms"] = "1000"  # a user's RAY_<name> wins over the quiet default
    r = run_py(QUIET, env)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = json.loads(r.stdout.strip().splitlines()[-1])
    assert cfg["enable_metrics_collection"] is False and cfg["event_stats"] is False
    assert "task_events_report_interval_ms" not in cfg  # left to the environment variable
