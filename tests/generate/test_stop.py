"""SIGTERM (a job stop, a drained node, `kill`) ends a `factory` command as Ctrl-C does: the run says
so in its manifest, the completions it paid for reach the store even when the cache's flush bounds
are far off, and the same command resumes without paying for them again."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import fsspec
import pytest
import yaml
from gen_helpers import recipe
from test_resume import descendants

from factory.core.stage import StageDir, read_docs
from tests.proxy import FaultProxy

CLI = [sys.executable, "-c", "from factory.cli import main; main()"]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [-1, 2], ids=["driver", "ray"])
def test_sigterm_ends_generate_as_ctrl_c_does_and_uploads_the_cache(workers, teacher, seeds_file, tmp_path, s3_bucket,
                                                                   monkeypatch, request):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # -1: the driver's event loop; 2: a local Ray of its own
    n, in_flight = 24, 2
    out = f"{s3_bucket}/gen"
    with FaultProxy(teacher.endpoints[0], delay_s=0.2) as px:
        cfg = tmp_path / "gen.yaml"
        cfg.write_text(yaml.safe_dump({
            "seeds": seeds_file(n), "out": out, "recipes": [recipe("tiny_word")], "shards": 2, "concurrency": in_flight // max(1, workers),
            "workers": workers,
            "cache_flush_every": 1000, "cache_flush_s": 600,  # nothing would reach the store before the run ends
            "teacher": {"endpoints": [{"base_url": px.base_url, "model": teacher.model, "api_key_env": teacher.api_key_env}], "timeout_s": 30,
                        "sampling": {"temperature": 0.0}}}))
        p = subprocess.Popen([*CLI, "generate", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        request.addfinalizer(lambda: p.poll() is None and p.kill())  # a failed assertion leaves no run behind
        deadline = time.monotonic() + 240
        while px.teacher_calls < n // 3 and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.poll() is None, p.stderr.read()[-2000:]
        paid_at_stop = px.teacher_calls - in_flight  # answered before the signal, at least
        p.send_signal(signal.SIGTERM)
        err = p.communicate(timeout=60)[1]
        assert p.returncode == 128 + signal.SIGTERM, err[-2000:]
        assert "stopped by SIGTERM" in err and "rerun" in err and "Traceback" not in err, err[-2000:]
        deadline = time.monotonic() + 30  # a local Ray's own processes end with it
        while descendants(p.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not descendants(p.pid)
        m = StageDir.read_manifest(out)
        assert m["status"] == "failed" and m["error"] == "stopped by SIGTERM", m
        fs, root = fsspec.core.url_to_fs(out)
        fs.invalidate_cache()
        cached = sum(len(fs.cat_file(s).splitlines()) for s in fs.glob(f"{root}/cache/layout-*/shard-*/seg-*.jsonl"))
        assert paid_at_stop <= cached <= px.teacher_calls < n, (paid_at_stop, cached, px.teacher_calls)

        r = subprocess.run([*CLI, "generate", str(cfg)], capture_output=True, text=True, timeout=400)
        assert r.returncode == 0, r.stderr[-2000:]
    m = StageDir.read_manifest(out)
    assert m["status"] == "done" and m["counts"]["units"] == n
    assert m["this_run"]["cache_hits"] == cached  # what the stopped run paid for was not asked again
    assert px.repeated_calls <= in_flight, px.repeated_calls
    assert len(set(read_docs(out).column("id").to_pylist())) == m["counts"]["docs"]
    assert "error" not in json.loads(fs.cat_file(f"{root}/manifest.json"))
