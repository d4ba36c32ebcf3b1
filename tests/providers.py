"""A conformance proxy (test code, named as such): answers as hosted providers and vLLM do, in front
of the real local teacher.

It checks the API key itself (Bearer, or Azure's `api-key` header and `api-version` query) and answers
as the provider would: a missing or wrong key 401, an unknown model 404, a prompt over the context
400, a request over its request limit 429 with the provider's rate-limit headers (OpenAI:
`x-ratelimit-*`; Azure: `retry-after-ms` and `retry-after`), a spent quota OpenAI's 429
`insufficient_quota`; and on demand 500, 503 and slow first bytes. The bodies are the providers'
error JSON. Everything else goes to the real teacher, with the teacher's own key.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.proxy import Served, send_json


def _err(style: str, status: int, message: str, type_: str, code: str | int | None, param: str | None = None) -> dict:
    if style == "vllm":
        return {"object": "error", "message": message, "type": type_, "param": param, "code": status}
    if style == "azure":
        return {"error": {"code": str(code or status), "message": message}}
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class ProviderProxy(Served):
    """`with ProviderProxy(teacher, key="sk-test", style="openai", rpm=3) as p: p.base_url` (with /v1)."""

    def __init__(self, teacher, *, key: str, style: str = "openai", n_ctx: int = 2048, rpm: int | None = None,
                 window_s: float = 60.0, quota: int | None = None, first_byte_s: float = 0.0,
                 api_version: str = "2024-10-21"):
        import os

        self.upstream = teacher.endpoints[0].rstrip("/")
        self.upstream_auth = {"authorization": f"Bearer {os.environ[teacher.api_key_env]}"}
        self.models = [teacher.model]
        self.key, self.style, self.n_ctx, self.rpm, self.window_s = key, style, n_ctx, rpm, window_s
        self.quota, self.first_byte_s, self.api_version = quota, first_byte_s, api_version
        self.fail_next: list[int] = []  # statuses (500, 503) for the next chat completions, in order
        self.log: list[dict] = []  # per request: t, path, body sha, status, reset_s, authorized
        self._sent: deque[float] = deque()
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=300)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, status: int, obj: dict, headers: dict[str, str] | None = None) -> None:
                if proxy.first_byte_s:
                    time.sleep(proxy.first_byte_s)
                send_json(self, status, json.dumps(obj).encode(), headers)

            def do_GET(self):
                status, obj, headers = proxy.answer("GET", self.path, self.headers, b"")
                self._send(status, obj, headers)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                status, obj, headers = proxy.answer("POST", self.path, self.headers, body)
                self._send(status, obj, headers)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        root = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.base_url = f"{root}/openai" if style == "azure" else f"{root}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # what a provider answers ---------------------------------------------------------------------
    def _auth(self, headers) -> str | None:
        """None when the key is right, else 'missing' or 'wrong'."""
        if self.style == "azure":
            given = headers.get("api-key")
        else:
            auth = headers.get("authorization") or ""
            given = auth[7:] if auth.lower().startswith("bearer ") else None
        return None if given == self.key else ("wrong" if given else "missing")

    def _unauthorized(self, why: str) -> tuple[int, dict, dict]:
        s = self.style
        if s == "vllm":
            return 401, {"error": "Unauthorized"}, {}
        if s == "azure":
            return 401, _err(s, 401, "Access denied due to invalid subscription key or wrong API endpoint. Make sure "
                             "to provide a valid key for an active subscription and use a correct regional API "
                             "endpoint for your resource.", "", 401), {}
        if why == "missing":
            return 401, _err(s, 401, "You didn't provide an API key. You need to provide your API key in an "
                             "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                             "invalid_request_error", None), {}
        return 401, _err(s, 401, "Incorrect API key provided: sk-te***st. You can find your API key at "
                         "https://platform.openai.com/account/api-keys.", "invalid_request_error", "invalid_api_key"), {}

    def _limits(self, now: float) -> dict[str, str]:
        if not self.rpm or self.style != "openai":
            return {}
        left = max(0, self.rpm - len(self._sent))
        reset = (self._sent[0] + self.window_s - now) if self._sent and left == 0 else 0.0
        return {"x-ratelimit-limit-requests": str(self.rpm), "x-ratelimit-remaining-requests": str(left),
                "x-ratelimit-reset-requests": f"{max(0.0, reset):.3f}s", "x-ratelimit-limit-tokens": "200000",
                "x-ratelimit-remaining-tokens": "199000", "x-ratelimit-reset-tokens": "0.3s"}

    def answer(self, method: str, path: str, headers, body: bytes) -> tuple[int, dict, dict]:
        url = urlsplit(path)
        rec = {"t": time.monotonic(), "path": url.path, "sha": hashlib.sha256(body).hexdigest()[:16], "reset_s": None}
        status, obj, hdrs = self._answer(method, url, headers, body, rec)
        rec["status"] = status
        with self._lock:
            self.log.append(rec)
        return status, obj, hdrs

    def _answer(self, method: str, url, headers, body: bytes, rec: dict) -> tuple[int, dict, dict]:
        s = self.style
        if s == "azure" and parse_qs(url.query).get("api-version") != [self.api_version]:
            return 404, _err(s, 404, "Resource not found", "", 404), {}
        why = self._auth(headers)
        if why:
            return self._unauthorized(why)
        if method == "GET" and url.path.endswith("/models"):
            return 200, {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "local"} for m in self.models]}, {}
        if method != "POST" or not url.path.endswith("/chat/completions"):
            return 404, _err(s, 404, f"Invalid URL ({method} {url.path})", "invalid_request_error", None), {}
        req = json.loads(body)
        model = req.get("model")
        if model not in self.models:
            msg = f"The model `{model}` does not exist" + (" or you do not have access to it." if s != "vllm" else ".")
            return 404, _err(s, 404, msg, "NotFoundError" if s == "vllm" else "invalid_request_error", "model_not_found"), {}
        tokens = len(json.dumps(req.get("messages"))) // 4 + int(req.get("max_tokens") or 0)
        if tokens > self.n_ctx:
            msg = (f"This model's maximum context length is {self.n_ctx} tokens. However, your messages resulted in "
                   f"{tokens} tokens. Please reduce the length of the messages.")
            return 400, _err(s, 400, msg, "BadRequestError" if s == "vllm" else "invalid_request_error",
                             "context_length_exceeded", "messages"), {}
        with self._lock:
            now = time.monotonic()
            while self._sent and now - self._sent[0] >= self.window_s:
                self._sent.popleft()
            if self.quota is not None and self.quota <= 0:
                return 429, _err(s, 429, "You exceeded your current quota, please check your plan and billing details.",
                                 "insufficient_quota", "insufficient_quota"), {}
            if self.rpm and len(self._sent) >= self.rpm:
                reset = self._sent[0] + self.window_s - now
                rec["reset_s"] = reset
                if s == "azure":
                    return 429, _err(s, 429, f"Requests to the ChatCompletions_Create Operation have exceeded call rate "
                                     f"limit. Please retry after {math.ceil(reset)} seconds.", "", 429), \
                        {"retry-after-ms": str(int(reset * 1000)), "retry-after": str(math.ceil(reset))}
                return 429, _err(s, 429, f"Rate limit reached on requests per min (RPM): Limit {self.rpm}, Used "
                                 f"{self.rpm}, Requested 1. Please try again in {reset:.3f}s.", "requests",
                                 "rate_limit_exceeded"), self._limits(now)
            if self.fail_next:
                st = self.fail_next.pop(0)
                return st, _err(s, st, "The server had an error while processing your request." if st == 500 else
                                "The engine is currently overloaded, please try again later.", "server_error", None), {}
            self._sent.append(now)
            if self.quota is not None:
                self.quota -= 1
            limits = self._limits(now)
        r = self._http.post(self.upstream + "/chat/completions", content=body,
                            headers={"content-type": "application/json", **self.upstream_auth})
        return r.status_code, r.json(), limits

    # reading the log -------------------------------------------------------------------------------
    def statuses(self) -> Counter:
        return Counter(r["status"] for r in self.log if r["path"].endswith("/chat/completions"))

    def early_retries(self) -> list[float]:
        """For each 429 that named a wait: how much sooner than told the same request came back (none
        when every wait was honoured)."""
        out, chats = [], [r for r in self.log if r["path"].endswith("/chat/completions")]
        for i, r in enumerate(chats):
            if r["status"] == 429 and r["reset_s"] is not None:
                nxt = next((x for x in chats[i + 1:] if x["sha"] == r["sha"]), None)
                if nxt is not None and nxt["t"] - r["t"] < r["reset_s"] - 0.02:
                    out.append(round(r["reset_s"] - (nxt["t"] - r["t"]), 3))
        return out
