"""A fault and latency injector: an HTTP proxy on loopback in front of the real teacher in tests.

Chat-completion requests (but the client's start-up check, passed through untouched) are answered, at the given rates, with 429 (+Retry-After) or 500,
held past the client's timeout, or cut short (truncated JSON); the rest wait `delay_s` (so a job
is reliably still running when a test stops it) and pass through to the upstream server. Every
request is logged and every completion the teacher computed is counted per request body, so
tests can count teacher calls and repeats after a resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from factory.teacher.client import PROBE_MESSAGES

UNAUTHORIZED = (b'{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","param":null,'
                b'"code":"invalid_api_key"}}')


def send_json(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    """Answer a request of `handler` with a JSON body; a client that went away (a job stopped) only closes it."""
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(body)))
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.end_headers()
    try:
        handler.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):
        handler.close_connection = True


class Served:
    """A test server on loopback (`self.server`, served by `self._thread`) with an upstream client `self._http`:
    `with` starts it and stops all three."""

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._http.close()


class FaultProxy(Served):
    def __init__(self, upstream: str, *, p429: float = 0.0, p500: float = 0.0, phang: float = 0.0,
                 ptrunc: float = 0.0, p400: float = 0.0, hang_s: float = 5.0, retry_after: str = "1", seed: int = 0,
                 get_faults: list[str] | None = None, delay_s: float = 0.0, key: str | None = None):
        self.upstream = upstream.rstrip("/").removesuffix("/v1")
        self.get_faults = list(get_faults or [])  # answers to the next GETs, in order: "503" or "reset"
        self.gets: list[str] = []  # what each GET got: a fault or "ok"
        self.rates = [("429", p429), ("500", p500), ("hang", phang), ("trunc", ptrunc), ("400", p400)]
        self.hang_s, self.retry_after, self.delay_s = hang_s, retry_after, delay_s
        # with `key`: a gateway with keys of its own (as LiteLLM's proxy): it answers 401 unless the request
        # carries that key, and reaches the teacher with the teacher's own key (FACTORY_TEACHER_KEY)
        self.key = key
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.log: list[tuple[float, str, str]] = []  # (time, body sha, outcome)
        self.forwarded: Counter[str] = Counter()  # body sha -> times the teacher answered it
        self._http = httpx.Client(timeout=300)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                send_json(self, status, body, headers)

            def do_GET(self):
                if proxy.refused(self.headers):
                    return self._send(401, UNAUTHORIZED)
                with proxy._lock:
                    fault = proxy.get_faults.pop(0) if proxy.get_faults else None
                with proxy._lock:
                    proxy.gets.append(fault or "ok")
                if fault == "503":
                    return self._send(503, b'{"error":{"message":"loading model (injected)"}}')
                if fault == "reset":  # close with RST, no response
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return None
                r = proxy._http.get(proxy.upstream + self.path, headers=proxy.passed(self.headers))
                self._send(r.status_code, r.content)

            def do_POST(self):
                if proxy.refused(self.headers):
                    self.rfile.read(int(self.headers.get("content-length") or 0))
                    return self._send(401, UNAUTHORIZED)
                try:
                    self._post()
                except (httpx.HTTPError, OSError):  # upstream gone or client hung up: drop the connection
                    self.close_connection = True

            def _post(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if not self.path.endswith("/chat/completions"):
                    r = proxy._http.post(proxy.upstream + self.path, content=body, headers=proxy.passed(self.headers))
                    return self._send(r.status_code, r.content)
                if json.loads(body).get("messages") == PROBE_MESSAGES:  # the client's start-up check: passed
                    r = proxy._http.post(proxy.upstream + self.path, content=body, headers=proxy.passed(self.headers))
                    return self._send(r.status_code, r.content)  # through, neither faulted nor counted
                key = hashlib.sha256(body).hexdigest()[:16]
                fault = proxy._draw()
                proxy._record(key, fault or "ok")
                if fault == "429":
                    return self._send(429, b'{"error":{"message":"rate limited (injected)"}}', {"retry-after": proxy.retry_after})
                if fault == "400":
                    return self._send(400, b'{"error":{"message":"bad request (injected)"}}')
                if fault == "500":
                    return self._send(500, b'{"error":{"message":"server error (injected)"}}')
                if fault == "hang":
                    time.sleep(proxy.hang_s)
                    self.close_connection = True
                    return None
                if proxy.delay_s:
                    time.sleep(proxy.delay_s)
                r = proxy._http.post(proxy.upstream + self.path, content=body, headers=proxy.passed(self.headers))
                if r.status_code == 200:
                    with proxy._lock:
                        proxy.forwarded[key] += 1
                content = r.content[: len(r.content) // 2] if fault == "trunc" else r.content
                self._send(r.status_code, content)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def passed(self, headers) -> dict[str, str]:
        """What goes upstream: the body's type and the client's credentials (the teacher checks them), or
        with `key` the teacher's own."""
        out = {"content-type": "application/json"}
        if self.key is not None:
            out["authorization"] = f"Bearer {os.environ['FACTORY_TEACHER_KEY']}"
        elif headers.get("authorization"):
            out["authorization"] = headers["authorization"]
        return out

    def refused(self, headers) -> bool:
        return self.key is not None and headers.get("authorization") != f"Bearer {self.key}"

    def _draw(self) -> str | None:
        with self._lock:
            x = self._rng.random()
        acc = 0.0
        for name, p in self.rates:
            acc += p
            if x < acc:
                return name
        return None

    def _record(self, key: str, outcome: str) -> None:
        with self._lock:
            self.log.append((time.monotonic(), key, outcome))

    def set_faults(self, **rates: float) -> None:
        self.rates = [(n, rates.get(f"p{n}", 0.0)) for n, _ in self.rates]

    # counts ------------------------------------------------------------------------------------
    @property
    def teacher_calls(self) -> int:
        return sum(self.forwarded.values())

    @property
    def repeated_calls(self) -> int:
        """Completions the teacher computed more than once for the same request body."""
        return sum(n - 1 for n in self.forwarded.values() if n > 1)

    def outcomes(self) -> Counter[str]:
        return Counter(o for _, _, o in self.log)
