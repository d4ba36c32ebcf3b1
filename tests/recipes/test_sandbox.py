"""The sandbox: time, memory, network and filesystem limits on crafted scripts."""

import os
import time

from factory.recipes.sandbox import netns_available, run_python


def test_ok_and_own_temp_dir():
    r = run_python("import os\nopen('out.txt', 'w').write('hi')\nprint(os.getcwd(), open('out.txt').read())")
    assert r.ok and r.reason == "ok"
    cwd = r.stdout.split()[0]
    assert "factory-sandbox-" in cwd and not os.path.exists(cwd)  # removed afterwards


def test_infinite_loop_is_killed():
    t0 = time.monotonic()
    r = run_python("while True:\n    pass", timeout_s=1.5)
    assert not r.ok and r.timed_out and r.reason == "timeout"
    assert time.monotonic() - t0 < 10


def test_sleeping_child_group_is_killed():
    r = run_python("import time\ntime.sleep(60)", timeout_s=1)
    assert r.reason == "timeout"


def test_ten_gigabytes_fail_under_memory_limit():
    r = run_python("x = bytearray(10 * 1024**3)\nprint(len(x))", memory_mb=256)
    assert not r.ok and r.reason == "memory"
    assert "MemoryError" in r.stderr


def test_socket_is_refused():
    r = run_python("import socket\ns = socket.create_connection(('127.0.0.1', 9))\nprint('connected')")
    assert not r.ok and r.reason == "network" and "connected" not in r.stdout


def test_raw_socket_module_is_refused():
    r = run_python("import _socket\ns = _socket.socket()\nprint('made')")
    assert not r.ok and "made" not in r.stdout


def test_network_namespace_when_available():
    r = run_python("print(1)")
    assert r.isolation == ("netns" if netns_available() else "audit-hook")


def test_no_writes_outside_or_subprocesses(tmp_path):
    target = tmp_path / "escape.txt"
    r = run_python(f"open({str(target)!r}, 'w').write('x')")
    assert r.reason == "forbidden" and not target.exists()
    r = run_python("import subprocess\nsubprocess.run(['true'])")
    assert r.reason == "forbidden"


def test_minimal_env_and_files():
    os.environ["FACTORY_TEST_SECRET"] = "s3cret"
    try:
        r = run_python("import os, helper\nprint(helper.X, os.environ.get('FACTORY_TEST_SECRET'))", files={"helper.py": "X = 41 + 1"})
    finally:
        del os.environ["FACTORY_TEST_SECRET"]
    assert r.ok and r.stdout.split() == ["42", "None"]


def test_assertion_and_error():
    assert run_python("assert 1 == 2").reason == "assertion"
    assert run_python("raise ValueError('x')").reason == "error"
