"""Adaptive concurrency: the in-flight window of one endpoint, searched while the run goes.

A continuous-batching server (vLLM, SGLang) serves more tokens per second the more requests it
batches, until its batch or KV cache is full; past that, requests only queue: latency rises
with the window and throughput stays flat, then 429s and timeouts come. The window moves in
epochs, each measured on a cohort of requests sent at the epoch's window (`epoch` of them in
slow start, then at least a quarter of the window), all awaited, so short answers coming back
first do not bias it. By Little's law throughput is (mean requests in flight) / (latency per
completion token), so two epochs give the throughput's elasticity to the window,
e = 1 - dlog(latency) / dlog(in flight), without timing the epochs themselves. The window
doubles while e >= 0.1 (slow start while e >= 0.5), then grows by half while e >= `min_gain`;
after two epochs in a row below that it settles at `headroom` times the last window that paid
(the knee; at the window it had if no step up ever paid) and holds there a few epochs before
probing again. Past the knee a larger window costs latency, not throughput: the extra requests
wait in the server's queue, so its batch never waits on the client's turnaround (a sweep of
fixed windows on the simulator finds the best one past the batch size). A probe from the
settled window that finds no gain goes back to it: the headroom is added once. A 429, a
timeout or a 5xx halves the window at once (at most once per latency, as TCP does per round
trip); so does a latency past half the request timeout.

Several clients (Ray workers) share an endpoint and each sees only its own share: when one of k
grows its window it takes a larger share of a saturated server (its own e looks like 1 - 1/k),
so each estimates the server's e as 1 - k * (1 - e_own) (Vegas-like: all act alike).
"""

from __future__ import annotations

import math
import time


class AdaptiveWindow:
    def __init__(self, initial: int, lo: int = 1, hi: int = 1024, sharers: int = 1, min_gain: float = 0.1,
                 epoch: int = 16, hold: int = 2, timeout_s: float = 120.0, headroom: float = 2.0):
        self.lo, self.hi = max(1, lo), max(1, hi)
        self.w = float(min(self.hi, max(self.lo, initial)))
        self.limit = int(self.w)  # the window in requests (read on every request: an attribute, kept by _set)
        self.sharers, self.min_gain, self.epoch, self.hold_epochs = max(1, sharers), min_gain, epoch, hold
        self.timeout_s, self.headroom = timeout_s, max(1.0, headroom)
        self.padded = False  # settled at headroom x the knee
        self.paid = False  # some step up raised throughput since the start or the last cut
        self.slow_start = True
        self.doubt = False
        self.hold = 0
        self.prev: tuple[float, float, float] | None = None  # (window, mean in flight, s per token) of the last epoch
        self.good = self.w  # the last window that paid
        self.srtt = 0.0
        self.last_cut = 0.0
        self.low, self.high, self.changes, self.cuts = int(self.w), int(self.w), 0, 0
        self.gen = 0
        self._reset(time.monotonic(), 0)

    def _reset(self, now: float, in_flight: int) -> None:
        self.t0 = self.t_last = now
        self.area = 0.0
        self.in_flight = in_flight
        self.n = self.tokens = self.members = self.outstanding = 0
        self.lat = 0.0
        self.gen += 1  # a new cohort: what was sent before says nothing about this epoch

    def bound(self, hi: int, sharers: int) -> None:
        """New upper bound and sharer count (the client's share of the endpoint changed)."""
        self.hi, self.sharers = max(1, hi), max(1, sharers)
        self._set(self.w)

    def _set(self, w: float) -> None:
        w = min(float(self.hi), max(float(self.lo), w))
        if int(w) != int(self.w):
            self.changes += 1
        self.w, self.limit = w, int(w)
        self.low, self.high = min(self.low, self.limit), max(self.high, self.limit)

    def moved(self, in_flight: int, now: float | None = None) -> None:
        """The endpoint's in-flight count changed to `in_flight` (keeps its time average)."""
        now = time.monotonic() if now is None else now
        self.area += self.in_flight * (now - self.t_last)
        self.t_last, self.in_flight = now, in_flight

    def sent(self) -> int | None:
        """A request goes out: its cohort tag, if it is one of this epoch's measured requests."""
        if self.members >= self._cohort():
            return None
        self.members += 1
        self.outstanding += 1
        return self.gen

    def done(self, tag: int | None, latency_s: float, completion_tokens: int, now: float | None = None) -> None:
        """A request (tagged by `sent`) came back after `latency_s` with that many completion tokens."""
        now = time.monotonic() if now is None else now
        self.srtt = latency_s if not self.srtt else 0.9 * self.srtt + 0.1 * latency_s
        if self.srtt > 0.5 * self.timeout_s:
            return self.overload(now)
        if tag is None or tag != self.gen:
            return
        self.n += 1
        self.tokens += max(1, completion_tokens)
        self.lat += latency_s
        self._returned(now)

    def lost(self, tag: int | None) -> None:
        """A tagged request ended without an answer that says anything about the window."""
        if tag is not None and tag == self.gen:
            self._returned(time.monotonic())

    def _cohort(self) -> int:
        return min(self.epoch, 2 * self.limit) if self.slow_start else max(self.epoch, self.limit // 4)

    def _returned(self, now: float) -> None:
        self.outstanding -= 1
        if self.outstanding <= 0 and self.members >= self._cohort():
            self._epoch_end(now)

    def overload(self, now: float | None = None) -> None:
        """A 429, timeout or 5xx (or latency near the timeout): halve, once per latency."""
        now = time.monotonic() if now is None else now
        if now - self.last_cut < max(self.srtt, 0.05):
            return
        self.last_cut = now
        self.cuts += 1
        self._set(self.w / 2)
        self.good = self.w
        self.slow_start, self.prev, self.hold, self.padded, self.paid = False, None, self.hold_epochs, False, False
        self._reset(now, self.in_flight)

    def _epoch_end(self, now: float) -> None:
        self.moved(self.in_flight, now)
        elapsed = now - self.t0
        mean_in_flight = self.area / elapsed if elapsed > 0 else 0.0
        per_token = self.lat / self.tokens
        cur = (self.w, mean_in_flight, per_token)
        prev, self.prev = self.prev, cur
        self._reset(now, self.in_flight)
        if mean_in_flight < 0.8 * self.limit:  # the client sent less than the window: nothing learnt
            return
        if self.hold:
            self.hold -= 1
            return
        if prev is None or cur[0] <= prev[0]:  # a first epoch, or one after a step back: probe up
            return self._set(self.w * (2 if self.slow_start else 1.25))
        dn = math.log(max(1e-9, mean_in_flight) / max(1e-9, prev[1]))
        if dn < 0.05:
            return self._set(self.w * 1.25)
        e_own = 1 - math.log(per_token / prev[2]) / dn
        e = 1 - self.sharers * (1 - e_own)
        if e >= self.min_gain:  # worth it: a step that grows with the gain
            self.good, self.doubt, self.padded, self.paid = self.w, False, False, True
            self.slow_start = self.slow_start and e >= 0.5
            return self._set(self.w * (2 if self.slow_start or e >= 0.1 else 1.5))
        self.slow_start = False
        if not self.doubt:  # one epoch may be noise: measure this window once more against the same baseline
            self.doubt, self.prev = True, prev
            return None
        self.doubt = False  # no longer worth it: back to the window that paid (with headroom once), hold, probe later
        w = prev[0] * self.headroom if self.paid and not self.padded else prev[0]
        self._set(w)
        self.good, self.hold, self.prev, self.padded = self.w, self.hold_epochs, None, True

    def report(self) -> dict[str, int]:
        return {"window": self.limit, "window_min": self.low, "window_max": self.high, "window_changes": self.changes,
                "window_cuts": self.cuts}
