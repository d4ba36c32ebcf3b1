"""`factory teacher serve` stops cleanly on Ctrl-C; `factory generate` reports bad configs in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

CLI = [sys.executable, "-c", "from factory.cli import main; main()"]


@pytest.mark.slow
def test_teacher_serve_prints_endpoints_and_stops_on_ctrl_c():
    """serve's replicas check an API key: without FACTORY_TEACHER_KEY it makes one and prints how to
    export it (the only place a key is ever printed: it is the user's own local server's)."""
    env = {k: v for k, v in os.environ.items() if k != "FACTORY_TEACHER_KEY"}
    p = subprocess.Popen([*CLI, "teacher", "serve", "--replicas", "1"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env={**env, "COLUMNS": "300"})
    try:
        url = key = None
        while url is None or key is None:
            line = p.stdout.readline()
            assert line or p.poll() is None, "serve exited before printing its endpoints and key"
            if line.startswith("endpoints:"):
                url = line.split()[1]
            if "export FACTORY_TEACHER_KEY=" in line:
                key = line.split("export FACTORY_TEACHER_KEY=")[1].split()[0]
        assert httpx.get(url + "/models", timeout=5).status_code == 401  # it checks the key it printed
        assert httpx.get(url + "/models", headers={"Authorization": f"Bearer {key}"}, timeout=5).status_code == 200
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/models", timeout=2)


def test_teacher_serve_ctrl_c_while_starting_stops_cleanly():
    """Ctrl-C before the replicas are up: serve finishes starting them, then stops them, exit 0."""
    import time

    p = subprocess.Popen([*CLI, "teacher", "serve", "--replicas", "1"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        kids = Path(f"/proc/{p.pid}/task/{p.pid}/children")
        deadline = time.time() + 120
        while not kids.read_text().strip():  # a replica process exists: serve runs, its replicas are starting
            assert p.poll() is None and time.time() < deadline, "serve did not start a replica"
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=60) == 0
        out = p.stdout.read()
    finally:
        if p.poll() is None:
            p.kill()
    assert "teacher stopped" in out and "Traceback" not in out
    urls = [w for line in out.splitlines() if line.startswith("endpoints:") for w in line.split()[1:]]
    for url in urls:
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/models", timeout=2)


def test_generate_bad_config_is_one_clear_line(tmp_path):
    cfg = tmp_path / "g.yaml"
    cfg.write_text("seeds: s.jsonl\nrecipes: [textbook]\nout: o\nteacher: {local_replicas: 1}\nworkerz: 3\n")
    r = subprocess.run([*CLI, "generate", str(cfg)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "workerz" in r.stderr and "Traceback" not in r.stderr
    cfg.write_text("seeds: s.jsonl\nrecipes: [textbook]\nout: o\nteacher: {}\n")
    r = subprocess.run([*CLI, "generate", str(cfg)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "local_replicas" in r.stderr
