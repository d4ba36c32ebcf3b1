"""A fault-injecting HTTP reverse proxy on loopback, placed in front of the S3-compatible test server.

Every request passes through unchanged: method, raw path and query, headers (Host and the signature
included), the body streamed both ways (Content-Length kept; `Transfer-Encoding: chunked` uploads
re-chunked; `aws-chunked` payloads are bytes like any other), `Expect: 100-continue` answered the
way S3 does; the one addition is `Content-Length: 0` on a bodiless DELETE/POST/PUT. The requests
that match the faults set at run time with `set(...)` (by method and raw path) are held for
`delay_ms`, or answered with an S3 error instead of going upstream: 503 SlowDown or 500
InternalError with S3's XML body (S3 sends no body to a HEAD). `counts` says what was injected.

    with FlakyStore(s3.endpoint) as proxy:       # proxy.endpoint: http://127.0.0.1:PORT
        proxy.set(fail_every=3, methods={"PUT"})  # the 3rd, 6th, ... PUT get 503 SlowDown
        proxy.set(fail_count=2, status=500)       # the next 2 requests get 500 InternalError
        proxy.set(delay_ms=200)                   # every request waits 200 ms
        proxy.counts["failed"], proxy.counts["delayed"]
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from yarl import URL

# hop-by-hop headers (RFC 9110 7.6.1) and Expect: they describe one connection, not the message
HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer",
       "transfer-encoding", "upgrade", "expect"}
# what aiohttp's client would add on its own; a header the caller sent still goes through
AUTO = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
S3_ERRORS = {503: ("SlowDown", "Please reduce your request rate."),
             500: ("InternalError", "We encountered an internal error. Please try again.")}
CHUNK = 256 * 1024


class _Relayed(web.StreamResponse):
    """A response relayed as received: aiohttp adds `Content-Type: application/octet-stream` to a
    body that comes without one; the upstream's answer had none, so neither does ours."""

    untyped = False

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        if self.untyped:
            self._headers.popall("Content-Type", None)


@dataclass
class Faults:
    """Which requests get a fault. A request matches when its method is in `methods` (None: any) and
    `path` (a regex; None: any) is found in its raw path and query. A matching request fails when
    any of `fail_every` (the Nth, 2Nth, ... matching request since `set`), `fail_count` (the first K
    matching requests since `set`) or `fail_rate` (each with this probability, seeded) says so. Every
    matching request waits `delay_ms` first, failing or not."""

    fail_every: int = 0
    fail_count: int = 0
    fail_rate: float = 0.0
    status: int = 503
    code: str | None = None  # S3 error code; default by status (SlowDown, InternalError)
    delay_ms: float = 0
    methods: frozenset[str] | None = None
    path: str | None = None
    seed: int = 0
    _path_re: re.Pattern | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.methods is not None:
            self.methods = frozenset(m.upper() for m in self.methods)
        self._path_re = re.compile(self.path) if self.path else None
        if self.code is None:
            self.code = S3_ERRORS.get(self.status, ("ServiceUnavailable", ""))[0]

    def matches(self, method: str, target: str) -> bool:
        if not (self.fail_every or self.fail_count or self.fail_rate or self.delay_ms):
            return False  # no faults: nothing to match
        return (self.methods is None or method.upper() in self.methods) and (
            self._path_re is None or bool(self._path_re.search(target)))


class FlakyStore:
    """The proxy: `start()` (or `with`) serves on 127.0.0.1 (`endpoint`) from a thread of its own.

    `counts`: "requests" (all), "matched" (by the faults in force), "failed" and "failed <METHOD>"
    (answered with an error by the proxy; also `injected`), "delayed"; `log`: (method, raw path,
    outcome) per request. Both go on across `set`; `reset_counts()` empties them."""

    def __init__(self, upstream: str, host: str = "127.0.0.1") -> None:
        self.upstream = upstream.rstrip("/")
        self.host = host
        self.port = 0
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.log: list[tuple[str, str, str]] = []  # (method, raw path, outcome: "ok 200", "failed 503", ...)
        self.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.ServerRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # -- run-time settings ---------------------------------------------------------------------------
    def set(self, **faults) -> None:
        """Replace the faults (see `Faults`; no argument: none); the counts go on."""
        if "methods" in faults and faults["methods"] is not None and isinstance(faults["methods"], str):
            faults["methods"] = {faults["methods"]}
        f = Faults(**faults)
        with self._lock:
            self.faults = f
            self._matched = 0
            self._rng = random.Random(f.seed)

    def clear(self) -> None:
        """No faults from now on."""
        self.set()

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.log.clear()

    @property
    def injected(self) -> int:
        """Errors answered by the proxy itself."""
        return self.counts["failed"]

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _decide(self, method: str, target: str) -> tuple[Faults, bool, float]:
        """(faults in force, fail?, delay in s) for one request; counts it."""
        with self._lock:
            f = self.faults
            self.counts["requests"] += 1
            if not f.matches(method, target):
                return f, False, 0.0
            self._matched += 1
            self.counts["matched"] += 1
            fail = bool((f.fail_every and self._matched % f.fail_every == 0) or self._matched <= f.fail_count
                        or (f.fail_rate and self._rng.random() < f.fail_rate))
            if fail:
                self.counts["failed"] += 1
                self.counts[f"failed {method}"] += 1
            if f.delay_ms:
                self.counts["delayed"] += 1
            return f, fail, f.delay_ms / 1000

    def _record(self, method: str, target: str, outcome: str) -> None:
        with self._lock:
            self.log.append((method, target, outcome))

    # -- serving ------------------------------------------------------------------------------------
    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        method, target = request.method, request.raw_path
        faults, fail, delay = self._decide(method, target)
        if delay:
            await asyncio.sleep(delay)
        if fail:
            self._record(method, target, f"failed {faults.status}")
            return self._error(request, faults)  # before any 100 Continue, as S3 answers: the body is not sent
        if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP]
        data = self._body(request.content) if request.body_exists else None
        async with self._session.request(method, URL(self.upstream + target, encoded=True), headers=headers,
                                         data=data, allow_redirects=False, skip_auto_headers=AUTO) as up:
            resp = _Relayed(status=up.status, reason=up.reason)
            for k, v in up.headers.items():
                if k.lower() not in HOP:
                    resp.headers.add(k, v)
            resp.untyped = "Content-Type" not in up.headers
            await resp.prepare(request)
            if method != "HEAD":
                async for chunk in up.content.iter_chunked(CHUNK):
                    await resp.write(chunk)
            await resp.write_eof()
        self._record(method, target, f"ok {up.status}")
        return resp

    @staticmethod
    async def _body(content: aiohttp.StreamReader):
        async for chunk in content.iter_chunked(CHUNK):
            yield chunk

    @staticmethod
    def _error(request: web.BaseRequest, f: Faults) -> web.Response:
        rid = uuid.uuid4().hex[:16].upper()
        message = S3_ERRORS.get(f.status, ("", "Injected error."))[1] or "Injected error."
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{f.code}</Code><Message>{message}</Message>'
                f"<Resource>{request.path}</Resource><RequestId>{rid}</RequestId><HostId>flaky-store</HostId></Error>")
        headers = {"x-amz-request-id": rid, "x-amz-id-2": "flaky-store"}
        if request.method == "HEAD":  # S3 answers a HEAD with the status alone
            resp = web.Response(status=f.status, headers=headers)
        else:
            resp = web.Response(status=f.status, body=body.encode(), content_type="application/xml", headers=headers)
        if request.body_exists:
            # the body is not read (with `Expect: 100-continue` it is never sent): the connection
            # cannot carry another request, so it ends here (`Connection: close`)
            resp.force_close()
        return resp

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(
            auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            connector=aiohttp.TCPConnector(limit=0))
        self._runner = web.ServerRunner(web.Server(self._handle), handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        await self._runner.cleanup()
        await self._session.close()
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]  # idle keep-alive connections
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def start(self) -> "FlakyStore":
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="flaky-store", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
            self._loop = None

    def __enter__(self) -> "FlakyStore":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
