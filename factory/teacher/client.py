"""TeacherClient: chat completions against one or more OpenAI-compatible endpoints.

It balances requests over endpoints by in-flight load, keeps to RPM/TPM limits, retries what
can succeed later (429 honouring the provider's wait headers, 5xx, timeouts, connection resets,
malformed bodies) with exponential backoff and jitter, quarantines a bad request (400, 413, ...),
stops the run on what nothing can cure (a refused key, an unknown model, a spent quota: one
`EndpointFatal` naming the endpoint, the status and the fix) or when too many recent requests fail
(the error budget), takes out endpoints that keep failing (and probes them back), and reads/writes
the request cache so nothing is paid twice. `factory.teacher.http` says what each answer means.

Per request it costs little CPU, as a client of a fleet must: a completion goes out as one aiohttp
POST per endpoint session (a connection pool as large as the endpoint's window, so connections are
kept, not reopened), with the headers `http.request_headers` builds from the endpoint's config (its
credentials included), and the answer is read as plain JSON. tests/teacher/test_wire.py pins that
these requests are the openai client's, header for header, and that errors map to its exceptions.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import json
import random
import time
from collections import Counter
from typing import Any

import aiohttp

from factory.core.errors import FactoryError
from factory.core.schema import sha
from factory.teacher import http
from factory.teacher.adaptive import AdaptiveWindow
from factory.teacher.cache import CompletionCache, request_key
from factory.teacher.config import TeacherConfig
from factory.teacher.limits import Balancer, EndpointState, RateLimiter
from factory.teacher.types import Completion, EndpointFatal, TeacherError

PROBE_MESSAGES = [{"role": "user", "content": "Say OK."}]  # the start's one-token completion, per endpoint


TALLY: contextvars.ContextVar[Counter | None] = contextvars.ContextVar("teacher_tally", default=None)
"""A Counter that the client's accounting also goes to, for the asyncio task that set it and the tasks
it starts (e.g. one shard of several running at once on one client); `cost` is counted under "cost"."""


class TeacherClient:
    """`async with TeacherClient(cfg) as t: c = await t.complete(messages, sampling, sample)`."""

    def __init__(self, cfg: TeacherConfig, cache: CompletionCache | None = None, where: str = "teacher config",
                 keys: dict[str, str] | None = None):
        if not cfg.endpoints:
            raise FactoryError("no teacher endpoints (start local replicas first)", where=where, field="endpoints",
                               fix="list endpoints, or set local_replicas and run through `factory generate`")
        self.cfg, self.cache, self.where = cfg, cache, where
        # each endpoint's key: from `keys` (the driver's, read where the run started), else from this process's
        # environment (FactoryError when the variable is missing)
        self.keys = [(keys or {}).get(e.api_key_env or "") or e.api_key(where) for e in cfg.endpoints]
        self.model_id = "|".join(sorted({e.model for e in cfg.endpoints}))
        self.stats: Counter[str] = Counter()
        self.cost = 0.0
        self._sessions: list[tuple[aiohttp.ClientSession, str]] = []  # per endpoint: (session, chat completions URL)
        self._inflight: dict[str, asyncio.Future] = {}
        self.endpoints: list[EndpointState] = []
        self.served: list[list[str] | None] = [None] * len(cfg.endpoints)  # the models each endpoint lists
        self.recent: collections.deque[tuple[float, bool, str]] = collections.deque()  # (time, failed, reason)
        self._rng = random.Random(cfg.seed)
        self._started = False

    # lifecycle --------------------------------------------------------------------------------
    async def start(self, probe: bool = True) -> "TeacherClient":
        """Open the HTTP sessions (in this event loop) and check each endpoint: it lists its model and
        answers a one-token chat completion with the configured credentials."""
        if self._started:
            return self
        r = self.cfg.retry
        pool = self.cfg.adaptive.max_window if self.cfg.adaptive_on else None
        share = self.cfg.adaptive.sharers  # clients splitting each endpoint: a pool for all their windows (reshare)
        self._sessions = [(http.session(e, k, share * (pool or e.max_in_flight or self.cfg.max_in_flight), self.cfg.timeout_s),
                           http.url(e, "chat/completions")) for e, k in zip(self.cfg.endpoints, self.keys)]
        states = [EndpointState(i, e.max_in_flight or self.cfg.max_in_flight, r.eject_after, r.probe_after_s,
                                self._window(e.max_in_flight or self.cfg.max_in_flight))
                  for i, e in enumerate(self.cfg.endpoints)]
        self.endpoints = states
        self.balancer = Balancer(states)
        self.limiter = RateLimiter(self.cfg.rpm, self.cfg.tpm)
        self._started = True
        if probe:
            try:
                await asyncio.gather(*(self.check(i) for i in range(len(self._sessions))))
            except BaseException:
                await self.close()
                raise
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

    async def _call(self, i: int, method: str, url: str, body: dict[str, Any] | None = None) -> tuple[Any, Any]:
        """One request to endpoint i: (its JSON answer, its headers), or openai's error for the status."""
        session = self._sessions[i][0]
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        async with session.request(method, url, data=data, headers=http.JSON_BODY if data else None) as r:
            raw = await r.read()
            if r.status < 300:
                return json.loads(raw), r.headers
            raise http.status_error(r.status, r.headers, raw, method, url)

    async def _post(self, i: int, body: dict[str, Any]) -> dict[str, Any]:
        """POST a chat completion to endpoint i; its JSON answer, or openai's error for the status."""
        return (await self._call(i, "POST", self._sessions[i][1], body))[0]

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

    async def check(self, i: int) -> dict[str, Any]:
        """Endpoint i works for this run: it lists the model (GET /models, retried on transient errors
        like a request) and answers a one-token chat completion with the configured credentials.
        Returns what was seen (model, latency, the rate-limit headers); raises one FactoryError (an
        EndpointFatal for what no retry cures: a refused key, an unknown model, a bad request) naming the
        endpoint, the status and the fix. A transient error on the completion is only reported."""
        ep = self.cfg.endpoints[i]
        t0 = time.monotonic()
        answer, _ = await self._probing(i, "GET /models", lambda: self._call(i, "GET", http.url(ep, "models")))
        models = [m.get("id") for m in (answer.get("data") or []) if isinstance(m, dict)]
        self.served[i] = models
        if models and ep.model not in models:
            raise EndpointFatal(f"model '{ep.model}' is not served by {ep.base_url} (it serves: {', '.join(models)})",
                                where=self.where, field=f"endpoints.{i}.model", fix=f"use one of: {', '.join(models)}")
        listed = time.monotonic()
        body = {"model": ep.model, "messages": PROBE_MESSAGES, "max_tokens": 1, "temperature": 0}
        try:  # once: a replica busy or failing now (429, 5xx) is the circuit breaker's, not a reason to stop
            answer, headers = await self._call(i, "POST", self._sessions[i][1], body)
            chat = "ok"
        except (asyncio.CancelledError, FactoryError):
            raise
        except Exception as e:  # noqa: BLE001 - classified here
            v = http.classify(e)
            if not v.retryable:
                raise self.fatal(i, v, e) from None
            answer, headers, chat = {}, getattr(getattr(e, "response", None), "headers", None), v.reason
        return {"base_url": ep.base_url, "model": ep.model, "served_as": answer.get("model") or ep.model,
                "auth": "key sent" if self.keys[i] else "no key", "chat": chat, "models_s": round(listed - t0, 3),
                "chat_s": round(time.monotonic() - listed, 3), "limits": http.limits_seen(headers)}

    async def _probing(self, i: int, what: str, call: Any) -> tuple[Any, Any]:
        """`call()` for the probe: transient errors retried with the request policy (not when nothing
        listens there); any other error is one FactoryError naming endpoint i, what failed and the fix."""
        ep, r = self.cfg.endpoints[i], self.cfg.retry
        for attempt in range(1, r.max_attempts + 1):
            try:
                return await call()
            except (asyncio.CancelledError, FactoryError):
                raise
            except Exception as e:  # noqa: BLE001 - classified here
                v = http.classify(e)
                refused = http.refused(e)  # nothing listens there: no point waiting
                if v.retryable and not refused and attempt < r.max_attempts:
                    await asyncio.sleep(max(self._backoff(attempt), v.wait or 0.0))
                    continue
                if v.kind == "endpoint" or (v.status is not None and not v.retryable):
                    raise self.fatal(i, v, e, what) from None
                tries = f"{attempt} attempt{'s' if attempt > 1 else ''}"
                if refused:
                    fix = "nothing listens there: start the server (e.g. `factory teacher serve`) or correct base_url"
                elif v.status is None:
                    fix = "the server drops or stalls the connection: check its logs, or raise retry.max_attempts"
                else:
                    fix = "wait until the server is ready, or raise retry.max_attempts / retry.max_s"
                raise FactoryError(f"cannot reach teacher endpoint {ep.base_url} ({type(e).__name__}: "
                                   f"{str(e)[:200]}; {tries})", where=self.where, field=f"endpoints.{i}.base_url",
                                   fix=fix) from None
        raise AssertionError("unreachable")

    def fatal(self, i: int, v: http.Verdict, e: BaseException, what: str = "POST /chat/completions") -> FactoryError:
        """The one-line error for endpoint i when nothing sent there can succeed (or a probe's request
        was refused): the endpoint, the status, the provider's message and the fix."""
        ep, key_env = self.cfg.endpoints[i], self.cfg.endpoints[i].api_key_env
        served = self.served[i]
        st = v.status
        field = f"endpoints.{i}.api_key_env"
        if st == 401 and not key_env:
            fix = f"the endpoint needs an API key: set endpoints[{i}].api_key_env to the environment variable holding it"
        elif st == 401:
            fix = f"the key in ${key_env} was refused: export {key_env} with a key this endpoint accepts"
        elif st == 403:
            fix = (f"the key{f' in ${key_env}' if key_env else ''} may not use this endpoint or model "
                   f"'{ep.model}': check its permissions, or use another key")
        elif v.reason.endswith("insufficient_quota"):
            fix = "the account's quota is spent: add credit or use another key"
        elif st == 404 and served and ep.model not in served:
            field, fix = f"endpoints.{i}.model", f"use one of: {', '.join(served)}"
        elif st in (404, 405):
            field = f"endpoints.{i}.base_url"
            fix = ("correct base_url (the API root, usually ending in /v1) or the model name"
                   + (f"; the endpoint serves: {', '.join(served)}" if served else ""))
        elif st == 407:
            fix = "a proxy between here and the endpoint asks for credentials: configure it (HTTPS_PROXY)"
        elif v.reason == "tls":
            field, fix = f"endpoints.{i}.base_url", "its certificate does not verify: use the host name it is issued " \
                "for, or trust its CA (SSL_CERT_FILE)"
        elif v.reason == "dns":
            field, fix = f"endpoints.{i}.base_url", "its host name does not resolve: correct base_url"
        else:
            field, fix = f"endpoints.{i}", "check the request the probe sends against the server's logs"
        status = f"answered {st}" if st else f"failed ({v.reason})"
        return EndpointFatal(f"teacher endpoint {ep.base_url} {status} to {what}: {http.server_message(e)}",
                             where=self.where, field=field, fix=fix)

    async def close(self) -> None:
        for session, _ in self._sessions:
            await session.close()
        self._sessions, self._started = [], False

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
                done = Completion(text=text, finish_reason=choice.get("finish_reason") or "stop", prompt_tokens=pt,
                                  completion_tokens=ct, model=resp.get("model") or ep.model)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - classified below
                v = http.classify(e)
                wait = v.wait
                last = f"{v.reason}: {str(e)[:200]}"
                self.count(f"error_{v.reason}")
                if v.kind == "endpoint":
                    raise self.fatal(state.index, v, e) from None
                if v.kind == "request":
                    self.judge(True, v.reason)
                    raise TeacherError(v.reason, str(e)[:500], retryable=False, status=v.status) from None
                if state.window:  # 429, 5xx, timeouts: the server has too much
                    state.window.lost(tag) if v.reason == "malformed" else state.window.overload()
                if v.reason == "http_429":
                    if wait:
                        state.pause(wait)
                elif self.balancer.failed(state):
                    self.count("ejections")
            else:
                self.judge(False, "ok")
                return done
            finally:
                await self.balancer.release(state)
            if attempt < r.max_attempts:
                self.count("retries")
                await asyncio.sleep(max(self._backoff(attempt), wait or 0.0))
        if last.startswith("dns:"):  # a host that never resolved: nothing later will work either
            raise self.fatal(state.index, http.Verdict("dns", "endpoint"), RuntimeError(last))
        self.judge(True, "retries_exhausted")
        raise TeacherError("retries_exhausted", f"{r.max_attempts} attempts, last: {last}", retryable=True)

    def judge(self, failed: bool, reason: str) -> None:
        """Count a request's outcome into the error budget; over budget, the run stops (FactoryError)."""
        b, now = self.cfg.error_budget, time.monotonic()
        self.recent.append((now, failed, reason))
        while self.recent and now - self.recent[0][0] > b.window_s:
            self.recent.popleft()
        if not failed or len(self.recent) < b.min_requests:
            return
        bad = Counter(x[2] for x in self.recent if x[1])
        n_bad = sum(bad.values())
        if n_bad > b.max_share * len(self.recent):
            top = ", ".join(f"{k} {v}" for k, v in bad.most_common(3))
            raise FactoryError(f"{n_bad} of the last {len(self.recent)} teacher requests failed ({top}): more than "
                               f"the error budget of {b.max_share:.0%}; the run stops", where=self.where,
                               field="error_budget.max_share",
                               fix="read the rejected items' reasons (rejected/*.parquet); fix the requests or the "
                                   "endpoint, or raise error_budget.max_share if these failures are expected")

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
