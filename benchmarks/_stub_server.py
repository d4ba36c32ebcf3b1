"""A zero-latency OpenAI-compatible stub on loopback, for measuring client-side overhead.

It answers `POST /v1/chat/completions` at once with a fixed completion and usage (the model
name is echoed from the request), `GET /v1/models` with one model, and `GET /stats` with the
requests served and the most requests it ever held at once (to check a client's concurrency).
`delay_s` holds every completion that long (a latency injector, off by default). HTTP/1.1
keep-alive and `Connection: close` are both honoured. It runs in its own process, so the
client being measured does not share an event loop (or a core) with it:

    with StubServer() as s:  # s.url ends in /v1, s.base does not
        ...
    python benchmarks/_stub_server.py --port 8000   # by hand
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MODEL = "stub"
TEXT = ("A fixed completion from the benchmark stub: it stands in for a teacher that answers "
        "instantly, so only the client's own cost per request is left to measure.")


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection: parse requests from the byte stream, answer each in order."""

    def __init__(self, srv: "_Stub"):
        self.srv, self.buf, self.tr = srv, b"", None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tr = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            n = int(headers.get("content-length") or 0)
            if len(self.buf) < end + 4 + n:
                return  # wait for the rest of the body
            body, self.buf = self.buf[end + 4:end + 4 + n], self.buf[end + 4 + n:]
            method, path = (head[0].split(" ") + ["", ""])[:2]
            close = headers.get("connection", "").lower() == "close"
            self.srv.handle(self, method, path, body, close)

    def send(self, status: int, payload: bytes, close: bool, headers: dict[str, str] | None = None) -> None:
        if self.tr is None or self.tr.is_closing():
            return
        reason = {200: "OK", 404: "Not Found", 400: "Bad Request", 429: "Too Many Requests",
                  503: "Service Unavailable"}.get(status, "OK")
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.tr.write(f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(payload)}\r\n"
                      f"{extra}connection: {'close' if close else 'keep-alive'}\r\n\r\n".encode() + payload)
        if close:
            self.tr.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tr = None


class _Stub:
    def __init__(self, text: str, completion_tokens: int, delay_s: float):
        self.text, self.completion_tokens, self.delay_s = text, completion_tokens, delay_s
        self.served = self.active = self.max_active = 0
        self.models = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "stub"}]}).encode()

    def completion(self, body: bytes) -> bytes:
        req: dict[str, Any] = json.loads(body or b"{}")
        pt = sum(len(str(m.get("content", ""))) for m in req.get("messages", [])) // 4
        ct = min(self.completion_tokens, int(req.get("max_tokens") or self.completion_tokens))
        self.served += 1
        return json.dumps({
            "id": f"chatcmpl-stub-{self.served}", "object": "chat.completion", "created": int(time.time()),
            "model": req.get("model") or MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.text}, "finish_reason": "stop",
                         "logprobs": None}],
            "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}}).encode()

    def handle(self, conn: _Conn, method: str, path: str, body: bytes, close: bool) -> None:
        path = path.split("?", 1)[0].rstrip("/")
        if method == "GET" and path.endswith("/models"):
            return conn.send(200, self.models, close)
        if method == "GET" and path == "/stats":
            return conn.send(200, json.dumps({"served": self.served, "max_active": self.max_active}).encode(), close)
        if method == "POST" and path.endswith("/chat/completions"):
            try:
                payload = self.completion(body)
            except ValueError as e:
                return conn.send(400, json.dumps({"error": {"message": f"bad JSON: {e}"}}).encode(), close)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            if self.delay_s > 0:
                asyncio.get_running_loop().call_later(self.delay_s, self._done, conn, payload, close)
            else:
                self._done(conn, payload, close)
            return None
        return conn.send(404, b'{"error": {"message": "not found"}}', close)

    def _done(self, conn: _Conn, payload: bytes, close: bool) -> None:
        self.active -= 1
        conn.send(200, payload, close)


async def serve(host: str = "127.0.0.1", port: int = 0, text: str = TEXT, completion_tokens: int = 32,
                delay_s: float = 0.0, ready=None) -> None:
    stub = _Stub(text, completion_tokens, delay_s)
    server = await asyncio.get_running_loop().create_server(lambda: _Conn(stub), host, port, backlog=4096)
    if ready:
        ready(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


class ChildServer:
    """A server script run as a child process that prints `<ready> <ports>` once it listens;
    stopped on exit (terminate, then kill). The stub and the fleet simulator both start this way."""

    ready = "port"

    def __init__(self, script: str, args: list[str]):
        self.script, self.args = script, args
        self.proc: subprocess.Popen | None = None
        self.ports: list[int] = []

    def start(self):
        self.proc = subprocess.Popen([sys.executable, self.script, *self.args], stdout=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith(self.ready + " "):
            self.stop()
            raise RuntimeError(f"{Path(self.script).stem} did not start: {line!r}")
        self.ports = [int(p) for p in line.split()[1].split(",")]
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def die_with_parent() -> None:
    """In the child: end with the parent process, even after its SIGKILL (Linux)."""
    if sys.platform == "linux":
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class StubServer(ChildServer):
    """The stub in a child process: `with StubServer(completion_tokens=16) as s: s.url`."""

    def __init__(self, completion_tokens: int = 32, delay_s: float = 0.0, text: str = TEXT):
        super().__init__(__file__, ["--port", "0", "--completion-tokens", str(completion_tokens), "--delay-s", str(delay_s),
                                    "--text", text])

    @property
    def port(self) -> int:
        return self.ports[0] if self.ports else 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base + "/v1"

    def stats(self) -> dict[str, int]:
        import httpx

        return httpx.get(self.base + "/stats", timeout=10).json()


def cli(argv: list[str] | None = None) -> int:  # not `main`: run_all.py runs every main()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--completion-tokens", type=int, default=32)
    ap.add_argument("--delay-s", type=float, default=0.0)
    ap.add_argument("--text", default=TEXT)
    a = ap.parse_args(argv)
    die_with_parent()
    try:
        asyncio.run(serve(a.host, a.port, a.text, a.completion_tokens, a.delay_s,
                          ready=lambda p: print(f"port {p}", flush=True)))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
