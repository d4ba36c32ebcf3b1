"""A latency injector on loopback in front of the real teacher: every chat completion waits
`delay_s` before it is forwarded, so a job is reliably still running when the test stops it.
It counts the completions the teacher computed, per request body, to see repeats after a resume."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


class LatencyProxy:
    def __init__(self, upstream: str, delay_s: float = 1.0):
        self.upstream = upstream.rstrip("/").removesuffix("/v1")
        self.delay_s = delay_s
        self.forwarded: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=300)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _relay(self, r: httpx.Response) -> None:
                self.send_response(r.status_code)
                self.send_header("content-type", r.headers.get("content-type", "application/json"))
                self.send_header("content-length", str(len(r.content)))
                self.end_headers()
                try:
                    self.wfile.write(r.content)
                except (BrokenPipeError, ConnectionResetError):  # the client went away (job stopped)
                    self.close_connection = True

            def do_GET(self):
                self._relay(proxy._http.get(proxy.upstream + self.path))

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path.endswith("/chat/completions"):
                    time.sleep(proxy.delay_s)
                r = proxy._http.post(proxy.upstream + self.path, content=body,
                                     headers={"content-type": "application/json"})
                if r.status_code == 200 and self.path.endswith("/chat/completions"):
                    with proxy._lock:
                        proxy.forwarded[hashlib.sha256(body).hexdigest()] += 1
                self._relay(r)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def teacher_calls(self) -> int:
        return sum(self.forwarded.values())

    @property
    def repeated_calls(self) -> int:
        return sum(n - 1 for n in self.forwarded.values() if n > 1)

    def __enter__(self) -> "LatencyProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._http.close()
