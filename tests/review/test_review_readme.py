"""The review commands of the guide's "Review and calibrate" page (docs/guide/review.md), run as
written on a run folder in the demo's layout (a synthetic one at runs/demo of a temporary folder: `make demo` takes minutes). A command
that serves gets `--port 0` added (8765 may be taken) and is asked for its page and funnel, then
stopped; every other command runs to its end."""

from __future__ import annotations

import http.client
import json
import os
import shlex
import signal
import subprocess

from tests.readme_blocks import BIN, readme_blocks
from tests.review.runfolder import make_run

START, END = "<!-- review-commands -->", "<!-- /review-commands -->"


def commands() -> list[list[str]]:
    (block,) = readme_blocks(START, END)
    out = []
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(shlex.split(line))
    return out


def test_readme_review_commands_run_as_written(tmp_path):
    cmds = commands()
    assert cmds and all(c[:2] == ["factory", "review"] for c in cmds)
    truth = make_run(tmp_path / "runs" / "demo", seeds=4)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "COLUMNS": "200"}
    for argv in cmds:
        if "--html" in argv:
            p = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
            assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
            assert "window.REVIEW_STATIC" in (tmp_path / argv[argv.index("--html") + 1]).read_text()
            continue
        proc = subprocess.Popen(argv + ["--port", "0"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            url = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:"), (url, proc.stderr.read() if proc.poll() is not None else "")
            port = int(url.rsplit(":", 1)[1].strip("/"))
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("GET", "/api/summary")
            s = json.loads(c.getresponse().read())
            assert s["funnel"]["total"]["requests"] == len(truth["requests"])
            want = argv[argv.index("--reviewer") + 1] if "--reviewer" in argv else os.environ.get("USER") or "reviewer"
            assert s["reviewer"] == want
        finally:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: a clean stop, no traceback
            _, err = proc.communicate(timeout=20)
        assert "Traceback" not in err, err
