"""The teacher client's own request path sends what the openai client sends, and reads errors as it does.

Completions leave the openai client for speed (one aiohttp POST a request): these tests pin that every
request shape (chat completion, model list) carries the same method, path, query, body and headers,
the credentials above all, for each kind of credentials a config can name; and that each error status
becomes the same openai exception (class, message, body, code).
"""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from factory.teacher import http
from factory.teacher.client import TeacherClient
from factory.teacher.config import Endpoint, RetryPolicy, TeacherConfig

# headers the openai client varies per call (its retry count and timeouts) or that belong to the transport
PER_CALL = {"x-stainless-retry-count", "x-stainless-read-timeout", "x-stainless-timeout", "host", "content-length",
            "connection", "accept-encoding"}
ANSWER = {"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


class Recorder:
    """An HTTP server that records each request and answers with `self.status` / `self.body`."""

    def __init__(self):
        self.seen: list[dict] = []
        self.status, self.body, self.headers = 200, ANSWER, {}
        rec = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _answer(self):
                n = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(n) if n else b""
                rec.seen.append({"method": self.command, "path": self.path, "body": json.loads(raw) if raw else None,
                                 "headers": {k.lower(): v for k, v in self.headers.items()}})
                if self.path.split("?")[0].endswith("/models") and rec.status == 200:
                    data = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()
                else:
                    data = rec.body if isinstance(rec.body, bytes) else json.dumps(rec.body).encode()
                self.send_response(rec.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in rec.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.root = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def rec():
    r = Recorder()
    yield r
    r.close()


ENDPOINTS = {
    "bearer": dict(api_key_env="WIRE_KEY"),
    "bearer+org": dict(api_key_env="WIRE_KEY", headers={"OpenAI-Organization": "org-1", "OpenAI-Project": "p-1"}),
    "azure": dict(api_key_env="WIRE_KEY", auth_header="api-key", query={"api-version": "2024-10-21"}),
    "no key": dict(),
}
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Ünïcode & \"quotes\" 😀"}]
SAMPLING = {"temperature": 0.2, "top_p": 0.9, "max_tokens": 7, "seed": 5, "stop": ["\n\n"]}


def openai_client(ep: Endpoint) -> openai.AsyncOpenAI:
    """The openai client as its documentation configures it for the same endpoint."""
    key = ep.api_key()
    if ep.auth_header.lower() != "authorization":
        return openai.AsyncAzureOpenAI(api_key=key, azure_endpoint=ep.base_url.removesuffix("/openai"),
                                       api_version=ep.query["api-version"], max_retries=0)
    return openai.AsyncOpenAI(base_url=ep.base_url, api_key=key or "none", default_headers=ep.headers or None,
                              max_retries=0)


def comparable(req: dict, drop_auth: bool = False) -> dict:
    h = {k: v for k, v in req["headers"].items() if k not in PER_CALL}
    if drop_auth:
        h.pop("authorization", None)
    return {**req, "headers": h}


@pytest.mark.parametrize("kind", list(ENDPOINTS))
def test_requests_match_the_openai_client(rec, monkeypatch, kind):
    monkeypatch.setenv("WIRE_KEY", "sk-wire-123")
    base = f"{rec.root}/openai" if kind == "azure" else f"{rec.root}/v1"
    ep = Endpoint(base_url=base, model="m", **ENDPOINTS[kind])
    cfg = TeacherConfig(endpoints=[ep], retry=RetryPolicy(max_attempts=1), seed=None)

    async def theirs():
        c = openai_client(ep)
        try:
            await c.chat.completions.create(model="m", messages=MESSAGES, **SAMPLING)
            if kind != "azure":
                [m async for m in c.models.list()]
        finally:
            await c.close()

    async def ours():
        async with TeacherClient(cfg) as t:  # its probe lists the models and sends one tiny completion
            await t._post(0, {"model": "m", "messages": MESSAGES, **SAMPLING})

    asyncio.run(theirs())
    n = len(rec.seen)
    asyncio.run(ours())
    them, us = rec.seen[:n], rec.seen[n:]
    our_chat = [r for r in us if r["method"] == "POST"][-1]
    their_chat = [r for r in them if r["method"] == "POST"][0]
    if kind == "azure":  # the openai Azure client puts the deployment in the path and sends no Bearer
        assert our_chat["headers"]["api-key"] == their_chat["headers"]["api-key"] == "sk-wire-123"
        assert "authorization" not in our_chat["headers"]
        assert our_chat["path"] == "/openai/chat/completions?api-version=2024-10-21"
        assert their_chat["path"] == "/openai/deployments/m/chat/completions?api-version=2024-10-21"
        ours_h, theirs_h = comparable(our_chat)["headers"], comparable(their_chat)["headers"]
        assert ours_h.pop("user-agent").startswith("AsyncOpenAI/") and theirs_h.pop("user-agent").startswith("AsyncAzureOpenAI/")
        assert ours_h == theirs_h
        assert our_chat["body"] == their_chat["body"]
        return
    a, b = comparable(our_chat, kind == "no key"), comparable(their_chat, kind == "no key")
    assert a == b, (sorted(set(a["headers"].items()) ^ set(b["headers"].items())), a["path"], b["path"], a["body"], b["body"])
    if kind == "no key":  # no key configured: no credentials header at all (openai sends its placeholder)
        assert their_chat["headers"]["authorization"] == "Bearer none" and "authorization" not in our_chat["headers"]
    else:
        assert our_chat["headers"]["authorization"] == "Bearer sk-wire-123"
    our_list = next(r for r in us if r["method"] == "GET")
    their_list = next(r for r in them if r["method"] == "GET")
    a, b = comparable(our_list, kind == "no key"), comparable(their_list, kind == "no key")
    assert a == b, (sorted(set(a["headers"].items()) ^ set(b["headers"].items())), a["path"], b["path"])


def test_no_key_configured_sends_no_credentials(rec):
    ep = Endpoint(base_url=f"{rec.root}/v1", model="m")
    asyncio.run(_probe(TeacherConfig(endpoints=[ep], retry=RetryPolicy(max_attempts=1))))
    assert rec.seen and all("authorization" not in r["headers"] for r in rec.seen)


async def _probe(cfg):
    async with TeacherClient(cfg):
        pass


ERRORS = [
    (400, {"error": {"message": "This model's maximum context length is 2048 tokens.", "type": "invalid_request_error",
                     "param": "messages", "code": "context_length_exceeded"}}),
    (401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "param": None,
                     "code": "invalid_api_key"}}),
    (403, {"error": {"message": "forbidden", "type": "invalid_request_error", "param": None, "code": None}}),
    (404, {"object": "error", "message": "The model `x` does not exist.", "type": "NotFoundError", "param": None,
           "code": 404}),
    (409, {"error": {"message": "conflict"}}),
    (422, {"detail": [{"loc": ["body", "messages"], "msg": "field required"}]}),
    (429, {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}),
    (500, {"error": {"message": "The server had an error", "type": "server_error"}}),
    (503, b"upstream connect error"),
    (418, {"error": "teapot"}),
]


@pytest.mark.parametrize("status,body", ERRORS, ids=[str(s) for s, _ in ERRORS])
def test_errors_map_to_the_openai_exceptions(rec, status, body):
    rec.status, rec.body, rec.headers = status, body, {"retry-after-ms": "1500", "x-request-id": "req-1"}
    ep = Endpoint(base_url=f"{rec.root}/v1", model="m")

    async def theirs():
        c = openai.AsyncOpenAI(base_url=ep.base_url, api_key="none", max_retries=0)
        try:
            await c.chat.completions.create(model="m", messages=MESSAGES)
        except openai.APIStatusError as e:
            return e
        finally:
            await c.close()

    async def ours():
        t = TeacherClient(TeacherConfig(endpoints=[ep]))
        await t.start(probe=False)
        try:
            await t._post(0, {"model": "m", "messages": MESSAGES})
        except openai.APIStatusError as e:
            return e
        finally:
            await t.close()

    a, b = asyncio.run(theirs()), asyncio.run(ours())
    assert type(a) is type(b) and a.status_code == b.status_code == status
    assert str(a) == str(b) and a.body == b.body and a.code == b.code and a.type == b.type
    assert http.retry_after_s(b.response.headers) == 1.5 and b.request_id == a.request_id == "req-1"


def test_classes_of_errors():
    def st(status, body=None, headers=None):
        return http.classify(http.status_error(status, headers or {}, json.dumps(body or {}).encode(), "POST", "http://x"))

    assert [st(s).kind for s in (401, 403, 404, 405, 407)] == ["endpoint"] * 5
    assert [st(s).kind for s in (400, 413, 422, 418)] == ["request"] * 4
    assert [st(s).kind for s in (408, 409, 429, 500, 502, 503, 504)] == ["transient"] * 7
    quota = st(429, {"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}})
    assert quota.kind == "endpoint" and quota.reason == "http_429_insufficient_quota"
    assert st(429, headers={"retry-after": "2"}).wait == 2.0
    import ssl

    import aiohttp

    bad_cert = aiohttp.ClientConnectorCertificateError(None, ssl.SSLCertVerificationError("self-signed certificate"))
    assert http.classify(bad_cert).kind == "endpoint" and http.classify(bad_cert).reason == "tls"
    assert http.classify(aiohttp.ClientConnectionError("reset")).kind == "transient"


def test_a_host_that_does_not_resolve_is_one_error_naming_it():
    """A real DNS failure (the .invalid domain never resolves): retried as a blip, then one error naming the
    endpoint and the fix, before any work."""
    from factory.core.errors import FactoryError

    ep = Endpoint(base_url="http://no-such-teacher.invalid/v1", model="m")
    cfg = TeacherConfig(endpoints=[ep], retry=RetryPolicy(max_attempts=2, base_s=0.05, max_s=0.1))
    with pytest.raises(FactoryError, match="no-such-teacher.invalid") as e:
        asyncio.run(_probe(cfg))
    assert "endpoints.0.base_url" in str(e.value) and "2 attempts" in str(e.value)


def test_provider_wait_headers():
    assert http.retry_after_s({"retry-after": "3"}) == 3.0
    assert http.retry_after_s({"retry-after-ms": "250", "retry-after": "1"}) == 0.25
    assert http.retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # a date in the past
    assert http.retry_after_s({"retry-after": "garbage"}) is None
    # OpenAI's own: the reset of the limit that ran out (here requests), in its duration format
    h = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1m2.5s",
         "x-ratelimit-remaining-tokens": "900", "x-ratelimit-reset-tokens": "20ms"}
    assert http.retry_after_s(h) == 62.5
    assert http.retry_after_s({"x-ratelimit-reset-tokens": "6m0s"}) == 360.0
    assert http.duration_s("1h2m3s") == 3723.0 and http.duration_s("soon") is None
    assert http.retry_after_s({}) is None


def test_no_credential_in_config_headers():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="api_key_env"):
        Endpoint(base_url="http://x/v1", model="m", headers={"Authorization": "Bearer sk-live"})
