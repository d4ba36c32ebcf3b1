"""TeacherClient: chat completions against one or more OpenAI-compatible endpoints.

It balances requests over endpoints by in-flight load, keeps to RPM/TPM limits, retries what
can succeed later (429 honouring Retry-After, 5xx, timeouts, connection resets, malformed
bodies) with exponential backoff and jitter, never retries other 4xx, takes out endpoints that
keep failing (and probes them back), and reads/writes the request cache so nothing is paid twice.
The openai client's own retries are off (max_retries=0): this policy replaces them.

Per request it costs little CPU, as a client of a fleet must: a completion goes out as one
aiohttp POST per endpoint session (a connection pool as large as the endpoint's window, so
connections are kept, not reopened), with the headers the openai client would send (its auth,
user agent and platform headers, read from `AsyncOpenAI.default_headers`), and the answer is read
as plain JSON. A non-2xx answer becomes the openai client's own error for that status, so the
retry policy sees what openai would raise. (Through openai's `post`, each request was rebuilt
as an httpx request, then again as an aiohttp one: about half of the client's CPU per request.)
The openai client serves the rest: the endpoint probes, listing models, the Batch API.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import functools
import importlib
import json
import random
import time
from collections import Counter
from typing import Any

import aiohttp
import openai

from factory.errors import FactoryError
from factory.schema import sha
from factory.teacher.cache import CompletionCache, request_key
from factory.teacher.config import TeacherConfig
from factory.teacher.adaptive import AdaptiveWindow
from factory.teacher.limits import Balancer, EndpointState, RateLimiter
from factory.teacher.types import Completion, TeacherError

RETRY_STATUS = {408, 409, 429}
# the HTTP library under the openai client (httpx, or httpx2 in newer releases): its Response is what
# the low-level `post` returns unparsed
_httpx = importlib.import_module(openai.DefaultAsyncHttpxClient.__mro__[1].__module__.split(".")[0])
_Response = _httpx.Response


@functools.cache
def tls_context() -> Any:
    """The process's TLS context for the openai clients, made once: each client would otherwise load
    the CA bundle again (~50 ms of CPU a client, more than a hundred requests cost)."""
    return _httpx.create_ssl_context()


def http_client(timeout_s: float, connections: int) -> Any:
    """openai's aiohttp-backed client with a pool of `connections` (httpx's when aiohttp is missing).
    A pool smaller than the window closes a connection after each request beyond it."""
    limits = _httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    try:
        return openai.DefaultAioHttpClient(timeout=timeout_s, limits=limits, verify=tls_context())
    except (AttributeError, RuntimeError):  # an openai without it, or aiohttp not installed
        return openai.DefaultAsyncHttpxClient(timeout=timeout_s, limits=limits, verify=tls_context())


def retry_after_s(headers: Any) -> float | None:
    """Seconds from a Retry-After (or retry-after-ms) header, if any."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    val = headers.get("retry-after")
    if not val:
        return None
    try:
        return max(0.0, float(val))
    except ValueError:
        when = email.utils.parsedate_to_datetime(val)
        return max(0.0, when.timestamp() - time.time()) if when else None


def classify(exc: BaseException) -> tuple[str, bool, float | None, int | None]:
    """(reason, retryable, retry_after_s, status) for an exception raised by a request."""
    if isinstance(exc, (openai.APITimeoutError, asyncio.TimeoutError)):
        return "timeout", True, None, None
    if isinstance(exc, (openai.APIConnectionError, aiohttp.ClientError, ConnectionError)):
        return "connection", True, None, None
    if isinstance(exc, openai.APIStatusError):
        st = exc.status_code
        ra = retry_after_s(exc.response.headers) if exc.response is not None else None
        if st in RETRY_STATUS or st >= 500:
            return f"http_{st}", True, ra, st
        return f"http_{st}", False, None, st
    if isinstance(exc, (openai.APIResponseValidationError, ValueError, KeyError, TypeError, IndexError, AttributeError)):
        return "malformed", True, None, None  # json.JSONDecodeError is a ValueError
    return type(exc).__name__, False, None, None


def _refused(exc: BaseException) -> bool:
    """The connection could not be opened at all (refused, unknown host), not dropped after."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError) or type(seen).__name__ == "ConnectError":
            return True
        seen = seen.__cause__ or seen.__context__
    return False


TALLY: contextvars.ContextVar[Counter | None] = contextvars.ContextVar("teacher_tally", default=None)
"""A Counter that the client's accounting also goes to, for the asyncio task that set it and the tasks
it starts (e.g. one shard of several running at once on one client); `cost` is counted under "cost"."""


class TeacherClient:
    """`async with TeacherClient(cfg) as t: c = await t.complete(messages, sampling, sample)`."""

    def __init__(self, cfg: TeacherConfig, cache: CompletionCache | None = None, where: str = "teacher config"):
        if not cfg.endpoints:
            raise FactoryError("no teacher endpoints (start local replicas first)", where=where, field="endpoints",
                               fix="list endpoints, or set local_replicas and run through `factory generate`")
        self.cfg, self.cache, self.where = cfg, cache, where
        self.keys = [e.api_key(where) for e in cfg.endpoints]  # FactoryError when an env var is missing
        self.model_id = "|".join(sorted({e.model for e in cfg.endpoints}))
        self.stats: Counter[str] = Counter()
        self.cost = 0.0
        self._clients: list[openai.AsyncOpenAI] = []
        self._sessions: list[tuple[aiohttp.ClientSession, str]] = []  # per endpoint: (session, chat completions URL)
        self._inflight: dict[str, asyncio.Future] = {}
        self.endpoints: list[EndpointState] = []
        self._rng = random.Random(cfg.seed)
        self._started = False

    # lifecycle --------------------------------------------------------------------------------
    async def start(self, probe: bool = True) -> "TeacherClient":
        """Create the HTTP clients (in this event loop) and check each endpoint serves its model."""
        if self._started:
            return self
        r = self.cfg.retry
        pool = self.cfg.adaptive.max_window if self.cfg.adaptive_on else None
        share = self.cfg.adaptive.sharers  # clients splitting each endpoint: a pool for all their windows (reshare)
        self._clients = [openai.AsyncOpenAI(base_url=e.base_url, api_key=k, max_retries=0, timeout=self.cfg.timeout_s,
                                            http_client=http_client(self.cfg.timeout_s,
                                                                    pool or e.max_in_flight or self.cfg.max_in_flight))
                         for e, k in zip(self.cfg.endpoints, self.keys)]
        self._sessions = [self._session(c, share * (pool or e.max_in_flight or self.cfg.max_in_flight)) for c, e in
                          zip(self._clients, self.cfg.endpoints)]
        states = [EndpointState(i, e.max_in_flight or self.cfg.max_in_flight, r.eject_after, r.probe_after_s,
                                self._window(e.max_in_flight or self.cfg.max_in_flight))
                  for i, e in enumerate(self.cfg.endpoints)]
        self.endpoints = states
        self.balancer = Balancer(states)
        self.limiter = RateLimiter(self.cfg.rpm, self.cfg.tpm)
        self._started = True
        if probe:
            await asyncio.gather(*(self._probe(i) for i in range(len(self._clients))))
        return self

    async def reshare(self, share: TeacherConfig) -> None:
        """Take another share of the limits (TeacherConfig.scaled, e.g. for fewer workers still busy at the
        end of a run): fixed windows, the adaptive windows' bound and sharers, RPM and TPM."""
        if self._started:
            for st, e in zip(self.endpoints, share.endpoints):
                st.fixed = e.max_in_flight or share.max_in_flight
                if st.window:
                    st.window.bound(share.adaptive.max_window, share.adaptive.sharers)
            self.limiter.interval, self.limiter.tpm = (60.0 / share.rpm if share.rpm else 0.0), share.tpm
        self.cfg = share
        if self._started:
            await self.balancer.wake()

    def _session(self, c: openai.AsyncOpenAI, connections: int) -> tuple[aiohttp.ClientSession, str]:
        """The session that sends completions to the endpoint of openai client `c` (with its headers), and the URL."""
        headers = {k: v for k, v in c.default_headers.items() if isinstance(v, str)}
        conn = aiohttp.TCPConnector(limit=connections, limit_per_host=0, ttl_dns_cache=None)
        session = aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
                                        cookie_jar=aiohttp.DummyCookieJar(), headers=headers)
        return session, f"{str(c.base_url).rstrip('/')}/chat/completions"

    async def _post(self, i: int, body: dict[str, Any]) -> dict[str, Any]:
        """POST a chat completion to endpoint i; its JSON answer, or openai's error for the status."""
        session, url = self._sessions[i]
        async with session.post(url, data=json.dumps(body, ensure_ascii=False).encode()) as r:
            data = await r.read()
            if r.status < 300:
                return json.loads(data)
            req = _httpx.Request("POST", url)
            resp = _Response(r.status, headers=list(r.headers.items()), content=data, request=req)
        raise self._clients[i]._make_status_error_from_response(resp)

    def _window(self, initial: int) -> AdaptiveWindow | None:
        a = self.cfg.adaptive
        if not self.cfg.adaptive_on:
            return None
        return AdaptiveWindow(initial, hi=a.max_window, sharers=a.sharers, min_gain=a.min_gain, epoch=a.epoch,
                              timeout_s=self.cfg.timeout_s, headroom=a.headroom)

    def window_total(self) -> int:
        """Requests the endpoints take at once now (the sum of their windows)."""
        return sum(st.limit for st in self.endpoints)

    def windows(self) -> list[dict[str, Any]]:
        """Per endpoint: its window (adaptive or fixed) and circuit-breaker counts."""
        return [{"base_url": e.base_url, "in_flight": st.in_flight, **st.report()}
                for e, st in zip(self.cfg.endpoints, self.endpoints)]

    async def _probe(self, i: int) -> None:
        """GET /models, retried on transient errors (connection, timeout, 429, 5xx) like a request."""
        ep, r = self.cfg.endpoints[i], self.cfg.retry
        for attempt in range(1, r.max_attempts + 1):
            try:
                models = [m.id async for m in self._clients[i].models.list()]
                break
            except openai.AuthenticationError:
                raise FactoryError(f"endpoint {ep.base_url} refused the API key", where=self.where,
                                   field=f"endpoints.{i}.api_key_env", fix=f"check the value of {ep.api_key_env}") from None
            except (openai.APIConnectionError, openai.APIStatusError) as e:
                reason, retryable, wait, status = classify(e)
                refused = _refused(e)  # nothing listens there: no point waiting
                if retryable and not refused and attempt < r.max_attempts:
                    await asyncio.sleep(max(self._backoff(attempt), wait or 0.0))
                    continue
                tries = f"{attempt} attempt{'s' if attempt > 1 else ''}"
                if refused:
                    fix = "nothing listens there: start the server (e.g. `factory teacher serve`) or correct base_url"
                elif status is None:
                    fix = "the server drops or stalls the connection: check its logs, or raise retry.max_attempts"
                elif status == 404:
                    fix = "correct base_url: it is the API root, usually ending in /v1"
                elif retryable:
                    fix = "wait until the server is ready, or raise retry.max_attempts / retry.max_s"
                else:
                    fix = "check base_url and the server's logs"
                raise FactoryError(f"cannot reach teacher endpoint {ep.base_url} ({type(e).__name__}: "
                                   f"{str(e)[:200]}; {tries})", where=self.where, field=f"endpoints.{i}.base_url",
                                   fix=fix) from None
        if ep.model not in models:
            raise FactoryError(f"model '{ep.model}' is not served by {ep.base_url} (it serves: {', '.join(models) or 'nothing'})",
                               where=self.where, field=f"endpoints.{i}.model", fix=f"use one of: {', '.join(models)}")

    async def close(self) -> None:
        for c in self._clients:
            await c.close()
        for session, _ in self._sessions:
            await session.close()
        self._clients, self._sessions, self._started = [], [], False

    async def __aenter__(self) -> "TeacherClient":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # calls ------------------------------------------------------------------------------------
    def sampling_for(self, sampling: dict[str, Any] | None) -> dict[str, Any]:
        return {**self.cfg.sampling, **(sampling or {})}

    def key(self, messages: list[dict[str, Any]], sampling: dict[str, Any] | None = None, sample: int = 0) -> str:
        return request_key(self.model_id, messages, self.sampling_for(sampling), sample, self.cfg.seed)

    def request_seed(self, key: str) -> int | None:
        """A per-request seed derived from the config's seed and the request key (reproducible)."""
        return None if self.cfg.seed is None else int(sha(self.cfg.seed, key, n=8), 16) & 0x7FFFFFFF

    def count(self, key: str, n: float = 1) -> None:
        """Add to the client's accounting (and to the current task's TALLY, if one is set)."""
        if key == "cost":
            self.cost += n
        else:
            self.stats[key] += n
        tally = TALLY.get()
        if tally is not None:
            tally[key] += n

    async def complete(self, messages: list[dict[str, Any]], sampling: dict[str, Any] | None = None, sample: int = 0,
                       *, cache: CompletionCache | None | str = "default") -> Completion:
        """One completion: from the cache if it was ever paid for, else from the teacher.

        `sample` tells apart independent samples of the same prompt (it is part of the cache key
        and of the derived request seed); `cache` overrides the client's cache for this call.
        """
        if not self._started:
            await self.start()
        if cache == "default":
            cache = self.cache
        samp = self.sampling_for(sampling)
        key = request_key(self.model_id, messages, samp, sample, self.cfg.seed)
        if cache is not None and (hit := cache.get(key)) is not None:
            self.count("cache_hits")
            return hit
        if key in self._inflight:  # the same request already on its way: share its answer
            self.count("coalesced")
            return await asyncio.shield(self._inflight[key])
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            result = await self._request(messages, samp, self.request_seed(key))
            if cache is not None:
                cache.put(key, result)
            fut.set_result(result)
            return result
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved
            raise
        finally:
            self._inflight.pop(key, None)

    async def _request(self, messages: list[dict[str, Any]], sampling: dict[str, Any], seed: int | None) -> Completion:
        r = self.cfg.retry
        # a token estimate is only needed to reserve TPM budget
        est = len(json.dumps(messages)) // 4 + int(sampling.get("max_tokens") or 256) if self.cfg.tpm else 0
        last = "unknown"
        for attempt in range(1, r.max_attempts + 1):
            state = await self.balancer.acquire()
            ep = self.cfg.endpoints[state.index]
            wait: float | None = None
            tag: int | None = None
            try:
                slot = await self.limiter.acquire(est)
                self.count("requests")
                kw = dict(sampling)
                if seed is not None:
                    kw.setdefault("seed", seed)
                sent, tag = time.monotonic(), state.window.sent() if state.window else None
                resp = await self._post(state.index, {"model": ep.model, "messages": messages, **kw})
                choice = resp["choices"][0]
                text = choice["message"]["content"]
                if text is None or not isinstance(text, str):
                    raise ValueError("response without message content")
                usage = resp.get("usage") or {}
                pt, ct = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
                self.limiter.settle(slot, pt + ct)
                state.ok()
                if state.window:
                    state.window.done(tag, time.monotonic() - sent, ct)
                self.count("prompt_tokens", pt)
                self.count("completion_tokens", ct)
                self.count("ok")
                self.count("cost", self.cfg.price.cost(pt, ct))
                return Completion(text=text, finish_reason=choice.get("finish_reason") or "stop", prompt_tokens=pt,
                                  completion_tokens=ct, model=resp.get("model") or ep.model)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - classified below
                reason, retryable, wait, status = classify(e)
                last = f"{reason}: {str(e)[:200]}"
                self.count(f"error_{reason}")
                if not retryable:
                    raise TeacherError(reason, str(e)[:500], retryable=False, status=status) from None
                if state.window:  # 429, 5xx, timeouts: the server has too much
                    state.window.lost(tag) if reason == "malformed" else state.window.overload()
                if reason == "http_429":
                    if wait:
                        state.pause(wait)
                elif self.balancer.failed(state):
                    self.count("ejections")
            finally:
                await self.balancer.release(state)
            if attempt < r.max_attempts:
                self.count("retries")
                await asyncio.sleep(max(self._backoff(attempt), wait or 0.0))
        raise TeacherError("retries_exhausted", f"{r.max_attempts} attempts, last: {last}", retryable=True)

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter after the `attempt`-th failure."""
        r = self.cfg.retry
        backoff = min(r.max_s, r.base_s * 2 ** (attempt - 1))
        return backoff * (1 - r.jitter) + backoff * r.jitter * self._rng.random()

    def accounting(self) -> dict[str, Any]:
        s = self.stats
        return {"requests": s["requests"], "retries": s["retries"], "cache_hits": s["cache_hits"],
                "prompt_tokens": s["prompt_tokens"], "completion_tokens": s["completion_tokens"],
                "cost": round(self.cost, 6), "errors": {k[6:]: v for k, v in s.items() if k.startswith("error_")},
                "ejections": s["ejections"]}
