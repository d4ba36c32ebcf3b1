"""TeacherClient against the real local teacher, with faults injected by a loopback proxy."""

from __future__ import annotations

import asyncio
import time

import pytest

from factory.core.errors import FactoryError
from factory.teacher.cache import CompletionCache
from factory.teacher.client import TeacherClient
from factory.teacher.config import Endpoint, RetryPolicy, TeacherConfig
from factory.teacher.http import retry_after_s
from factory.teacher.limits import RateLimiter
from factory.teacher.server import free_port
from factory.teacher.types import TeacherError
from tests.proxy import FaultProxy

FAST = {"temperature": 0.0, "max_tokens": 12}


def cfg_for(urls, model, **kw):
    kw.setdefault("sampling", FAST)
    kw.setdefault("retry", RetryPolicy(base_s=0.05, max_s=0.5, max_attempts=10))
    return TeacherConfig(endpoints=[Endpoint(base_url=u, model=model, api_key_env="FACTORY_TEACHER_KEY") for u in urls], **kw)


def msgs(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Name one fact about the number {i}."}]


async def _run(cfg, n, cache=None, concurrency=None):
    async with TeacherClient(cfg, cache=cache) as t:
        res = await asyncio.gather(*(t.complete(msgs(i)) for i in range(n)))
        return t, res


def test_complete_and_cache(teacher, tmp_path):
    cfg = cfg_for(teacher.endpoints, teacher.model)
    with CompletionCache(tmp_path / "c.jsonl") as cache:
        t, res = asyncio.run(_run(cfg, 2, cache))
    assert all(r.text and r.completion_tokens > 0 and r.model and not r.cached for r in res)
    assert t.stats["requests"] == 2 and len(cache) == 2
    with CompletionCache(tmp_path / "c.jsonl") as cache:  # a new process reads the same file
        t2, res2 = asyncio.run(_run(cfg, 2, cache))
    assert t2.stats["requests"] == 0 and t2.stats["cache_hits"] == 2
    assert [r.text for r in res2] == [r.text for r in res] and all(r.cached for r in res2)


def test_adopt_routes_other_layouts_by_seed_once(tmp_path):
    from factory.teacher.cache import adopt, shard_file
    from factory.teacher.types import Completion

    old, new = tmp_path / "layout-old", tmp_path / "layout-new"
    with CompletionCache(shard_file(old, 0)) as c:
        c.for_seed("s1").put("k1", Completion("one", "stop", 1, 1, "m"))
        c.for_seed("s2").put("k2", Completion("two", "stop", 1, 1, "m"))
        c.for_seed("gone").put("k3", Completion("three", "stop", 1, 1, "m"))  # a seed this run does not have
        c.put("k4", Completion("four", "stop", 1, 1, "m"))  # no seed id: cannot be routed
    with open(shard_file(old, 0), "ab") as f:
        f.write(b'{"key": "k5", "seed": "s1", "compl')  # a line still being written
    shard_of = {"s1": 1, "s2": 0}
    assert adopt(tmp_path, new, shard_of) == 2
    assert adopt(tmp_path, new, shard_of) == 0  # each record is adopted once
    with CompletionCache(shard_file(new, 1)) as c1, CompletionCache(shard_file(new, 0)) as c0:
        assert c1.get("k1").text == "one" and "k2" not in c1 and c0.get("k2").text == "two" and len(c0) == 1
    with open(shard_file(old, 0), "ab") as f:  # the writer finishes that line
        f.write(b'etion": {"text": "five", "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 1, '
                b'"model": "m"}}\n')
    assert adopt(tmp_path, new, shard_of) == 1
    with CompletionCache(shard_file(new, 1)) as c1:
        assert c1.get("k5").text == "five" and c1.torn_lines == 0


def test_torn_cache_line_is_skipped(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"key": "a", "completion": {"text": "x", "finish_reason": "stop", "prompt_tokens": 1, '
                 '"completion_tokens": 1, "model": "m"}}\n{"key": "b", "compl')
    with CompletionCache(p) as c:
        assert c.torn_lines == 1 and "a" in c and "b" not in c
        from factory.teacher.types import Completion
        c.put("c", Completion("y", "stop", 1, 1, "m"))
    with CompletionCache(p) as c:
        assert "a" in c and "c" in c


def test_faults_are_retried_until_every_request_succeeds(teacher):
    with FaultProxy(teacher.endpoints[0], p429=0.1, p500=0.1, phang=0.05, ptrunc=0.02, hang_s=6, seed=1) as px:
        cfg = cfg_for([px.base_url], teacher.model, timeout_s=4, max_in_flight=2)
        t, res = asyncio.run(_run(cfg, 16))
    assert len(res) == 16 and all(r.text for r in res)
    out = px.outcomes()
    assert out["429"] + out["500"] > 0 and t.stats["retries"] >= out["429"] + out["500"] + out["hang"] + out["trunc"]
    assert t.stats["ok"] == 16


def test_other_4xx_is_never_retried(teacher):
    with FaultProxy(teacher.endpoints[0], p400=1.0) as px:
        cfg = cfg_for([px.base_url], teacher.model)
        with pytest.raises(TeacherError) as ei:
            asyncio.run(_run(cfg, 1))
    assert ei.value.reason.startswith("http_4") and not ei.value.retryable
    assert len(px.log) == 1


def test_retry_after_is_honoured(teacher):
    with FaultProxy(teacher.endpoints[0], p429=1.0, retry_after="2") as px:
        cfg = cfg_for([px.base_url], teacher.model, retry=RetryPolicy(base_s=0.01, max_s=0.02, max_attempts=2))
        with pytest.raises(TeacherError, match="retries_exhausted"):
            asyncio.run(_run(cfg, 1))
    (t1, _, _), (t2, _, _) = px.log
    assert t2 - t1 >= 1.9


def test_retry_after_header_forms():
    assert retry_after_s({"retry-after": "3"}) == 3.0
    assert retry_after_s({"retry-after-ms": "250"}) == 0.25
    assert retry_after_s({}) is None


def test_failing_endpoint_is_ejected_and_probed_back(teacher):
    with FaultProxy(teacher.endpoints[0]) as good, FaultProxy(teacher.endpoints[0], p500=1.0) as bad:
        cfg = cfg_for([good.base_url, bad.base_url], teacher.model, max_in_flight=1,
                      retry=RetryPolicy(base_s=0.01, max_s=0.05, max_attempts=20, eject_after=2, probe_after_s=0.5))

        async def go():
            async with TeacherClient(cfg) as t:
                for i in range(8):
                    await t.complete(msgs(i))
                n_bad = len(bad.log)
                bad.set_faults()  # the endpoint recovers
                await asyncio.sleep(1.2)
                await asyncio.gather(*(t.complete(msgs(100 + i)) for i in range(6)))
                return t, n_bad

        t, n_bad = asyncio.run(go())
    assert t.stats["ejections"] >= 1 and t.stats["ok"] == 14
    assert n_bad <= 4  # taken out after 2 failures, probed (and failing) at most a couple of times
    assert bad.outcomes()["ok"] >= 1  # probed back in and used again


def test_missing_api_key_env(teacher, monkeypatch):
    monkeypatch.delenv("FACTORY_TEST_KEY", raising=False)
    cfg = TeacherConfig(endpoints=[Endpoint(base_url=teacher.endpoints[0], model=teacher.model, api_key_env="FACTORY_TEST_KEY")])
    with pytest.raises(FactoryError, match="FACTORY_TEST_KEY"):
        TeacherClient(cfg)


def test_unknown_endpoint():
    cfg = cfg_for([f"http://127.0.0.1:{free_port()}/v1"], "m")
    with pytest.raises(FactoryError, match="cannot reach teacher endpoint"):
        asyncio.run(_run(cfg, 1))


def test_wrong_model_name(teacher):
    cfg = cfg_for(teacher.endpoints, "gpt-nope")
    with pytest.raises(FactoryError, match=f"gpt-nope.*{teacher.model}"):
        asyncio.run(_run(cfg, 1))


def test_config_needs_a_teacher():
    from pydantic import ValidationError
    with pytest.raises(ValidationError):
        TeacherConfig()


def test_rate_limiter_spaces_requests():
    async def go():
        rl = RateLimiter(rpm=600)
        t0 = time.monotonic()
        for _ in range(11):
            await rl.acquire()
        return time.monotonic() - t0
    assert asyncio.run(go()) >= 0.99  # 10 gaps of 0.1 s: no burst


def test_limits_are_split_between_workers():
    cfg = TeacherConfig(endpoints=[Endpoint(base_url="http://x/v1", model="m")], max_in_flight=8, rpm=60, tpm=1000)
    s = cfg.scaled(4)
    assert (s.max_in_flight, s.rpm, s.tpm) == (2, 15, 250)


def test_startup_probe_retries_transient_errors(teacher):
    """One 503 and one reset on GET /v1/models (a server still loading): the probe retries with the
    request retry policy and the run starts; an endpoint that keeps answering 503 is one error whose
    fix says to wait or raise the retry budget."""
    async def probe(cfg):
        async with TeacherClient(cfg):
            pass

    with FaultProxy(teacher.endpoints[0], get_faults=["503", "reset"]) as px:
        asyncio.run(probe(cfg_for([px.base_url], teacher.model)))
        assert px.gets == ["503", "reset", "ok"]
    with FaultProxy(teacher.endpoints[0], get_faults=["503"] * 3) as px:
        cfg = cfg_for([px.base_url], teacher.model, retry=RetryPolicy(base_s=0.01, max_s=0.05, max_attempts=3))
        with pytest.raises(FactoryError) as e:
            asyncio.run(probe(cfg))
    msg = str(e.value)
    assert "503" in msg and "3 attempts" in msg and "endpoints.0.base_url" in msg and "retry.max_attempts" in msg
    assert "start the server" not in msg


def test_probe_of_a_closed_port_fails_at_once_with_the_fix():
    cfg = cfg_for([f"http://127.0.0.1:{free_port()}/v1"], "m", retry=RetryPolicy(base_s=5, max_attempts=8))
    t0 = time.monotonic()
    with pytest.raises(FactoryError, match="nothing listens there: start the server"):
        asyncio.run(_run(cfg, 1))
    assert time.monotonic() - t0 < 5  # refused is not retried: no backoff slept


def test_clients_share_one_verifying_tls_context(monkeypatch):
    """Loading the CA bundle costs ~50 ms of CPU: it is done once a process, not once an endpoint
    client, and the shared context still verifies certificates and host names."""
    import ssl

    import factory.teacher.http as client_mod

    made = []
    real = client_mod._httpx.create_ssl_context

    def counting(verify=True, *a, **kw):
        if verify is True:
            made.append(1)
        return real(verify, *a, **kw)

    monkeypatch.setattr(client_mod._httpx, "create_ssl_context", counting)
    client_mod.tls_context.cache_clear()

    async def start_three() -> None:
        urls = ["http://127.0.0.1:9/v1", "https://example.invalid/v1"]
        for _ in range(3):
            c = TeacherClient(cfg_for(urls, "m"))
            await c.start(probe=False)
            await c.close()

    try:
        asyncio.run(start_three())
        ctx = client_mod.tls_context()
    finally:
        client_mod.tls_context.cache_clear()
    assert len(made) == 1, len(made)  # six endpoint clients, one CA bundle load
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
