"""Client-side rate limits (requests and tokens per minute) and endpoint health.

RPM is enforced by spacing requests 60/rpm seconds apart (no bursts), so the rate a server
sees matches the configured one closely. TPM uses a sliding 60 s window of estimated tokens,
corrected with the real usage once a response arrives.
"""

from __future__ import annotations

import asyncio
import collections
import time

from factory.teacher.adaptive import AdaptiveWindow


class RateLimiter:
    def __init__(self, rpm: float | None = None, tpm: float | None = None):
        self.interval = 60.0 / rpm if rpm else 0.0
        self.tpm = tpm
        self._next = 0.0
        self._lock = asyncio.Lock()
        self._window: collections.deque[list[float]] = collections.deque()  # [t, tokens]

    async def acquire(self, est_tokens: int = 0) -> list[float] | None:
        """Wait for a request slot; returns a handle to correct the token estimate later."""
        if not self.interval and not self.tpm:  # no limits (a server, not a paid API): nothing to wait for
            return None
        async with self._lock:
            if self.interval:
                now = time.monotonic()
                wait = self._next - now
                if wait > 0:
                    await asyncio.sleep(wait)
                self._next = max(time.monotonic(), self._next) + self.interval
            if not self.tpm:
                return None
            while True:
                now = time.monotonic()
                while self._window and now - self._window[0][0] > 60.0:
                    self._window.popleft()
                used = sum(e[1] for e in self._window)
                if not self._window or used + est_tokens <= self.tpm:
                    entry = [now, float(est_tokens)]
                    self._window.append(entry)
                    return entry
                await asyncio.sleep(max(0.05, 60.0 - (now - self._window[0][0])))

    @staticmethod
    def settle(entry: list[float] | None, tokens: int) -> None:
        if entry is not None:
            entry[1] = float(tokens)


class EndpointState:
    """In-flight count, window and circuit breaker of one endpoint.

    The breaker opens after `eject_after` consecutive failures (ejected), lets one probe request
    through once the wait is over (half-open) and closes on its success. A 429 with Retry-After
    pauses the endpoint for that long: every request waits instead of each one retrying alone.
    """

    def __init__(self, index: int, limit: int, eject_after: int, probe_after_s: float, window: AdaptiveWindow | None = None):
        self.index, self.fixed, self.window = index, limit, window
        self.eject_after, self.probe_after_s = eject_after, probe_after_s
        self.in_flight = 0
        self.failures = 0  # consecutive
        self.ejections = 0
        self.ejected_until = 0.0
        self.paused_until = 0.0
        self.probing = False
        self.opens = self.closes = self.pauses = 0
        self.seen: tuple[int, bool] = (self.limit, False)  # (window, ejected) at the last release

    @property
    def limit(self) -> int:
        return self.window.limit if self.window else self.fixed

    @property
    def ejected(self) -> bool:
        return self.ejected_until > 0

    def available(self, now: float) -> bool:
        if self.ejected_until > 0:  # ejected, half-open: one probe request once the wait is over
            return not self.probing and now >= self.ejected_until and self.in_flight == 0
        return self.in_flight < (self.window.limit if self.window else self.fixed) and now >= self.paused_until

    def moved(self, delta: int) -> None:
        self.in_flight += delta
        if self.window:
            self.window.moved(self.in_flight)

    def ok(self) -> None:
        if self.ejected:
            self.closes += 1
        self.failures, self.ejected_until, self.probing, self.ejections = 0, 0.0, False, 0

    def pause(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        if until > self.paused_until:
            self.pauses += 1
            self.paused_until = until

    def failed(self, others_healthy: bool = True) -> bool:
        """Record a failure; True when this takes the endpoint out (never the last healthy one:
        with nowhere else to go, the retry backoff alone paces the requests)."""
        self.failures += 1
        self.probing = False
        if self.ejected or (self.failures >= self.eject_after and others_healthy):
            self.opens += 0 if self.ejected else 1
            self.ejections += 1
            self.ejected_until = time.monotonic() + min(300.0, self.probe_after_s * 2 ** (self.ejections - 1))
            return True
        return False

    def report(self) -> dict[str, int]:
        rep = {"adaptive": self.window is not None, "window": self.limit, "breaker_opens": self.opens,
               "breaker_closes": self.closes, "paused_429": self.pauses, "open_now": self.ejected}
        return {**rep, **self.window.report()} if self.window else rep


class Balancer:
    """Picks the available endpoint with the fewest requests in flight; waits when none is."""

    def __init__(self, states: list[EndpointState]):
        self.states = states
        self._cond = asyncio.Condition()
        self._rr = 0

    async def acquire(self) -> EndpointState:
        async with self._cond:
            n = len(self.states)
            while True:
                now = time.monotonic()
                best, key = None, 0
                rr = self._rr + 1
                for s in self.states:  # one pass: the fewest in flight, ties taken in turn
                    if s.available(now):
                        k = s.in_flight * n + (s.index - rr) % n
                        if best is None or k < key:
                            best, key = s, k
                if best is not None:
                    self._rr = rr
                    best.moved(1)
                    if best.ejected:
                        best.probing = True
                    return best
                wake = [t - now for s in self.states for t in (s.ejected_until, s.paused_until) if t > now]
                try:
                    await asyncio.wait_for(self._cond.wait(), timeout=min(wake) if wake else None)
                except asyncio.TimeoutError:
                    pass

    async def wake(self) -> None:
        """Every waiter looks again (the windows changed)."""
        async with self._cond:
            self._cond.notify_all()

    def failed(self, state: EndpointState) -> bool:
        return state.failed(others_healthy=any(not s.ejected for s in self.states if s is not state))

    async def release(self, state: EndpointState) -> None:
        async with self._cond:
            state.moved(-1)
            seen = (state.limit, state.ejected)
            if seen == state.seen:  # one slot freed: one waiter
                return self._cond.notify(1)
            state.seen = seen  # its window moved or its breaker closed: as many waiters as there are free slots, not all
            now = time.monotonic()
            self._cond.notify(max(1, sum(s.limit - s.in_flight for s in self.states if s.available(now))))
