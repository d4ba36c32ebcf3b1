"""Generation against endpoints that answer as real providers do (tests/providers.py in front of the
real teacher): a key that is missing or wrong, a model it does not serve or a quota spent stops the
run within seconds with one line and a `failed` manifest; over-long prompts are quarantined and the
run goes on (until the error budget says otherwise); rate limits are waited out as the headers say."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml
from gen_helpers import gen_cfg, recipe

from factory.core.errors import FactoryError
from factory.core.stage import StageDir
from factory.generate import run
from tests.providers import ProviderProxy

KEY_ENV = "PROVIDER_TEST_KEY"
CLI = [sys.executable, "-c", "from factory.cli import main; main()"]


def cfg(seeds, out, px, key_env=KEY_ENV, model=None, **kw):
    c = gen_cfg(seeds, out, [px.base_url], model or px.models[0], workers=kw.pop("workers", -1), shards=kw.pop("shards", 2),
                **kw)
    for e in c.teacher.endpoints:
        e.api_key_env = key_env
        if px.style == "azure":
            e.auth_header, e.query = "api-key", {"api-version": px.api_version}
    return c


def manifest(out) -> dict:
    return StageDir.read_manifest(str(out))


def failed_at_once(c, match: str) -> dict:
    t0 = time.monotonic()
    with pytest.raises(FactoryError, match=match) as e:
        run(c, show_progress=False)
    assert time.monotonic() - t0 < 10, "a run that cannot succeed must stop within seconds"
    assert "\n" not in str(e.value)
    m = manifest(c.out)
    assert m["status"] == "failed" and m["error"] and not m["counts"].get("shards_done")
    return m


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-right")
    return "sk-test-right"


def test_keyed_endpoint_generates_what_a_keyless_run_does(teacher, seeds_file, tmp_path, key):
    seeds = seeds_file(6)
    with ProviderProxy(teacher, key=key) as px:
        m = run(cfg(seeds, tmp_path / "keyed", px), show_progress=False)
        assert px.statuses() == {200: px.statuses()[200]} and m["status"] == "done" and m["counts"]["docs"] == 6
    plain = run(gen_cfg(seeds, tmp_path / "direct", teacher.endpoints, teacher.model, workers=-1, shards=2),
                show_progress=False)
    from gen_helpers import request_keys

    assert request_keys(tmp_path / "keyed") == request_keys(tmp_path / "direct") and plain["counts"]["docs"] == 6


@pytest.mark.parametrize("style", ["openai", "vllm", "azure"])
def test_missing_key_stops_the_run(teacher, seeds_file, tmp_path, key, style):
    with ProviderProxy(teacher, key=key, style=style) as px:
        m = failed_at_once(cfg(seeds_file(4), tmp_path / "o", px, key_env=None), "401")
    assert "api_key_env" in m["error"] and px.base_url in m["error"]


def test_wrong_key_names_the_variable(teacher, seeds_file, tmp_path, key, monkeypatch):
    monkeypatch.setenv("OTHER_KEY", "sk-test-wrong")
    with ProviderProxy(teacher, key=key) as px:
        m = failed_at_once(cfg(seeds_file(4), tmp_path / "o", px, key_env="OTHER_KEY"), "Incorrect API key")
    assert "$OTHER_KEY was refused" in m["error"] and "sk-test-wrong" not in json.dumps(m)


def test_unknown_model_names_the_served_ones(teacher, seeds_file, tmp_path, key):
    with ProviderProxy(teacher, key=key) as px:
        failed_at_once(cfg(seeds_file(4), tmp_path / "o", px, model="gpt-nope"), f"gpt-nope.*{teacher.model}")


def test_quota_spent_mid_run_stops_the_run_on_ray(teacher, ray_local, seeds_file, tmp_path, key):
    """The start passes, then the provider says the quota is spent: the run stops (on Ray actors too),
    the manifest says failed with the fix, and no shard is marked done."""
    with ProviderProxy(teacher, key=key, quota=3) as px:
        m = failed_at_once(cfg(seeds_file(12), tmp_path / "o", px, workers=2, shards=2), "quota")
        assert px.statuses()[429] >= 1
    assert "add credit" in m["error"]


def test_over_long_prompts_are_quarantined_and_counted(teacher, seeds_file, tmp_path, key):
    long = {"text": "word " * 3000, "id": "long-1", "kind": "web", "source": "test"}
    seeds = seeds_file(20, bad=[long])
    with ProviderProxy(teacher, key=key, n_ctx=1024) as px:
        m = run(cfg(seeds, tmp_path / "o", px, recipes=[recipe("tiny_whole")]), show_progress=False)
    assert m["status"] == "done" and m["counts"]["docs"] == 20 and m["dropped"] == {"teacher_http_400": 1}
    import pyarrow.parquet as pq

    rows = [r for f in (tmp_path / "o" / "rejected").glob("shard-*.parquet") for r in pq.read_table(f).to_pylist()]
    assert [r["reason"] for r in rows] == ["teacher_http_400"] and "maximum context length" in rows[0]["detail"]


def test_error_budget_stops_a_run_that_keeps_failing(teacher, seeds_file, tmp_path, key):
    longs = [{"text": f"word {i} " * 3000, "id": f"long-{i}", "kind": "web", "source": "test"} for i in range(8)]
    with ProviderProxy(teacher, key=key, n_ctx=1024) as px:
        c = cfg(seeds_file(16, bad=longs), tmp_path / "o", px, shards=1, recipes=[recipe("tiny_whole")])
        c.teacher.error_budget.min_requests = 10
        with pytest.raises(FactoryError, match="error budget") as e:
            run(c, show_progress=False)
    assert "http_400 " in str(e.value) and "error_budget.max_share" in str(e.value)
    assert manifest(tmp_path / "o")["status"] == "failed"


@pytest.mark.parametrize("style", ["openai", "azure"])
def test_rate_limits_are_waited_out_as_the_headers_say(teacher, seeds_file, tmp_path, key, style):
    """3 requests per 2 s: the 429s carry OpenAI's x-ratelimit-reset-requests (or Azure's retry-after-ms);
    no request comes back before the time it was told, and every item is made."""
    with ProviderProxy(teacher, key=key, style=style, rpm=3, window_s=2.0) as px:
        c = cfg(seeds_file(8), tmp_path / "o", px, concurrency=4)
        c.teacher.retry.base_s, c.teacher.retry.max_s = 0.05, 0.1  # without the headers, retries would come at once
        m = run(c, show_progress=False)
        assert px.statuses()[429] >= 1 and px.early_retries() == []
    assert m["counts"]["docs"] == 8 and m["status"] == "done"


def test_server_errors_and_slow_first_bytes_are_retried(teacher, seeds_file, tmp_path, key):
    with ProviderProxy(teacher, key=key, first_byte_s=0.3) as px:
        px.fail_next = [500, 503, 500]
        m = run(cfg(seeds_file(6), tmp_path / "o", px), show_progress=False)
        assert px.statuses()[500] == 2 and px.statuses()[503] == 1
    # the first 500 met the start-up check (reported, not retried: the breaker's business); the others were retried
    assert m["counts"]["docs"] == 6 and m["accounting"]["retries"] >= 2


def test_generate_cli_with_a_missing_key_is_one_line_and_exit_1(teacher, seeds_file, tmp_path, key):
    with ProviderProxy(teacher, key=key) as px:
        c = cfg(seeds_file(4), tmp_path / "o", px, key_env=None)
        path = tmp_path / "g.yaml"
        path.write_text(yaml.safe_dump(json.loads(c.model_dump_json())))
        t0 = time.monotonic()
        r = subprocess.run([*CLI, "generate", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr + r.stdout
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "401" in err[0] and "api_key_env" in err[0], r.stderr
    assert time.monotonic() - t0 < 60
    assert manifest(tmp_path / "o")["status"] == "failed"


def test_teacher_check_reports_auth_latency_and_limits(teacher, tmp_path, key):
    with ProviderProxy(teacher, key=key, rpm=100) as px:
        path = tmp_path / "t.yaml"
        path.write_text(yaml.safe_dump({"endpoints": [{"base_url": px.base_url, "model": teacher.model,
                                                        "api_key_env": KEY_ENV}]}))
        ok = subprocess.run([*CLI, "teacher", "check", str(path)], capture_output=True, text=True, timeout=120,
                            env={**__import__("os").environ, "COLUMNS": "250"})
        assert px.statuses()[200] == 1  # one real chat completion
        path.write_text(yaml.safe_dump({"endpoints": [{"base_url": px.base_url, "model": teacher.model}]}))
        bad = subprocess.run([*CLI, "teacher", "check", str(path)], capture_output=True, text=True, timeout=120)
    out = ok.stdout + ok.stderr
    assert ok.returncode == 0 and "key sent" in out and "x-ratelimit-limit-requests=100" in out, out
    assert bad.returncode != 0 and "401" in bad.stderr and "Traceback" not in bad.stderr
