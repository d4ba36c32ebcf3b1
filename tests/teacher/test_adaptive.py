"""Adaptive concurrency and the per-endpoint circuit breaker, on the fleet simulator (simulated
continuous-batching replicas on loopback, benchmarks/fleet_simulator.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import pytest

from benchmarks.fleet_simulator import MODEL, FleetSimulator
from factory.teacher.adaptive import AdaptiveWindow
from factory.teacher.client import TeacherClient
from factory.teacher.config import AdaptiveOptions, Endpoint, RetryPolicy, TeacherConfig


def sim_cfg(urls, **kw):
    kw.setdefault("sampling", {"max_tokens": 16})
    kw.setdefault("retry", RetryPolicy(base_s=0.02, max_s=0.2, max_attempts=30, eject_after=2, probe_after_s=0.3))
    return TeacherConfig(endpoints=[Endpoint(base_url=u, model=MODEL, api_key_env="FACTORY_TEACHER_KEY") for u in urls], **kw)


async def drive(t: TeacherClient, n: int, start: int = 0, demand: int = 256) -> list:
    sem = asyncio.Semaphore(demand)

    async def one(i):
        async with sem:
            return await t.complete([{"role": "user", "content": f"Tell me about item {i}."}])
    return await asyncio.gather(*(one(i) for i in range(start, start + n)))


def served(fleet) -> int:
    return sum(s.get("served", 0) for s in fleet.stats())


def modelled(w: AdaptiveWindow, epochs: int, per_token: Callable[[int], float]) -> list[int]:
    """Run `w` against a modelled server whose per-token latency at a window of n is per_token(n);
    returns the window after each round."""
    now, seen = time.monotonic(), []
    for _ in range(epochs):
        n = w.limit
        tags = []
        for i in range(n):
            w.moved(i + 1, now)
            tags.append(w.sent())
        now += per_token(n) * 10
        for i, tag in enumerate(tags):
            w.moved(n - i - 1, now)
            w.done(tag, per_token(n) * 10, 10, now)
        seen.append(w.limit)
    return seen


def knee_at(knee: int) -> Callable[[int], float]:
    """Per-token latency flat up to a batch of `knee`, growing with the window past it (queueing)."""
    return lambda n: 0.01 if n <= knee else 0.01 * n / knee


def test_window_search_on_a_modelled_server():
    """Per-token latency slowly rising up to a batch of 64, then growing with the window: the
    window grows past 32 and stops short of a queue many times the batch."""
    w = AdaptiveWindow(4, hi=4096, min_gain=0.05, epoch=8)
    modelled(w, 4000, lambda n: 0.01 * (1 + 0.002 * n) if n <= 64 else 0.01 * (1 + 0.002 * 64) * n / 64)
    assert 32 <= w.limit <= 256, w.report()
    assert w.report()["window_max"] >= 64


def test_window_settles_with_headroom_past_the_knee_once():
    """Past the knee the window keeps a queue at the server (headroom x the last window that paid)
    and probing from there never pads again: it stays within a probe step of that."""
    seen = modelled(AdaptiveWindow(4, hi=4096, epoch=8, headroom=2.0), 600, knee_at(64))
    late = seen[100:]
    assert min(late) == 2 * 64 and max(late) <= 2 * 64 * 1.25, (min(late), max(late))
    plain = modelled(AdaptiveWindow(4, hi=4096, epoch=8, headroom=1.0), 600, knee_at(64))[100:]
    assert min(plain) == 64 and max(plain) <= 64 * 1.25, (min(plain), max(plain))


def test_overload_halves_at_most_once_per_latency():
    w = AdaptiveWindow(64, epoch=4)
    t0 = time.monotonic()
    w.done(None, 1.0, 10, now=t0)  # srtt 1 s
    w.overload(now=t0 + 1.0)
    w.overload(now=t0 + 1.2)  # the same congestion event
    assert w.limit == 32 and w.cuts == 1
    w.overload(now=t0 + 2.5)
    assert w.limit == 16 and w.cuts == 2


def test_sharers_see_the_servers_elasticity():
    """Four clients on one saturated server: each one's own throughput rises by its share when it
    grows; read as the server's, that is no gain, so the window goes back."""
    w = AdaptiveWindow(64, sharers=4, epoch=4, min_gain=0.05)
    w.slow_start = False
    now = time.monotonic()
    for _ in range(3):  # one epoch at 64, two at 80 (one could be noise) while the others hold 3 x 64
        n = w.limit
        share = n / (n + 3 * 64)
        per_token = n / (1000 * share)  # the server makes 1000 tokens/s in all; this client gets its share
        tags = [w.sent() for _ in range(max(4, n))]
        w.moved(n, now)
        now += 1.0
        for tag in tags:
            w.done(tag, per_token * 10, 10, now)
    assert w.limit == 64 and w.hold > 0


def test_window_rises_on_an_idle_fleet():
    # answers take ~0.1 s (32 tokens at 5x a real replica's speed): the replica's time, not the client's, decides
    with FleetSimulator(replicas=2, speed=5) as fleet:
        cfg = sim_cfg(fleet.urls, max_in_flight=2, sampling={"max_tokens": 32})

        async def go():
            async with TeacherClient(cfg) as t:
                res = await drive(t, 1000)
                return t, res

        t, res = asyncio.run(go())
        assert len(res) == 1000 and all(c.completion_tokens == 32 for c in res)
        wins = t.windows()
        assert all(w["adaptive"] for w in wins)
        assert all(w["window_max"] >= 8 for w in wins), wins  # grown from 2 on each replica
        assert max(s["max_batch"] for s in fleet.stats()) >= 8
        assert served(fleet) == 1000 + len(fleet.urls)  # and the start-up check's one completion per replica


@pytest.mark.parametrize("http", ["aiohttp", "fast"])  # the simulator's two HTTP layers behave alike
def test_window_falls_on_429s_and_nothing_is_lost(http):
    # a small replica: a batch of 4 and a queue of 4; the client starts at 64 in flight
    with FleetSimulator(replicas=1, speed=20, max_batch=4, max_queue=4, retry_after_s=1.0, http=http) as fleet:
        cfg = sim_cfg(fleet.urls, max_in_flight=64)

        async def go():
            async with TeacherClient(cfg) as t:
                res = await drive(t, 300)
                return t, res

        t, res = asyncio.run(go())
        st = fleet.stats()[0]
        w = t.windows()[0]
    assert st["rejected_429"] > 0 and t.stats["error_http_429"] == st["rejected_429"]
    assert w["window_cuts"] >= 1 and w["window"] < 64 and w["paused_429"] >= 1
    assert len(res) == 300 and st["served"] == 300 + 1  # every request answered once (and the start-up check)


def test_fixed_window_for_paid_apis_and_when_switched_off():
    assert not TeacherConfig(endpoints=[Endpoint(base_url="http://x/v1", model="m")], rpm=60).adaptive_on
    assert TeacherConfig(endpoints=[Endpoint(base_url="http://x/v1", model="m")]).adaptive_on
    with FleetSimulator(replicas=1, speed=20) as fleet:
        cfg = sim_cfg(fleet.urls, max_in_flight=3, adaptive=AdaptiveOptions(enabled=False))

        async def go():
            async with TeacherClient(cfg) as t:
                await drive(t, 200)
                return t

        t = asyncio.run(go())
        assert t.windows()[0]["window"] == 3 and not t.windows()[0]["adaptive"]
        assert fleet.stats()[0]["max_batch"] <= 3


@pytest.mark.parametrize("http", ["aiohttp", "fast"])
def test_breaker_opens_on_a_failing_replica_and_closes_when_it_heals(http):
    with FleetSimulator(replicas=2, speed=20, http=http) as fleet:
        fleet.configure(1, fail=1.0)
        cfg = sim_cfg(fleet.urls, max_in_flight=4)

        async def go():
            async with TeacherClient(cfg) as t:
                first = await drive(t, 200)
                opened = t.windows()[1]
                fleet.configure(1, fail=0.0)
                # the probe comes probe_after_s x 2^(ejections - 1) after the last ejection: a slow first
                # phase ejects it more often, so keep sending until it is back (or 20 s have passed)
                second, deadline = [], time.monotonic() + 20
                while len(second) < 400 or (t.windows()[1]["open_now"] and time.monotonic() < deadline):
                    second += await drive(t, 100, start=1000 + len(second))
                    await asyncio.sleep(0.1)
                return t, first, opened, second

        t, first, opened, second = asyncio.run(go())
        healed = t.windows()[1]
        st = fleet.stats()
    assert opened["breaker_opens"] >= 1 and opened["open_now"]
    assert st[1]["failed_503"] <= 10  # taken out after 2 failures, probed a few times, not hammered
    assert healed["breaker_closes"] >= 1 and not healed["open_now"]
    assert len(first) == 200 and len(second) >= 400
    # back in use, nothing lost (and replica 0 answered the start-up check; replica 1 failed it, and the run went on)
    assert st[0]["served"] + st[1]["served"] == 200 + len(second) + 1 and st[1]["served"] > 0


@pytest.mark.parametrize("sharers", [1, 3])
def test_limits_split_between_workers_keep_the_window_bounds(sharers):
    cfg = TeacherConfig(endpoints=[Endpoint(base_url="http://x/v1", model="m")], adaptive=AdaptiveOptions(max_window=300))
    share = cfg.scaled(sharers)
    assert share.adaptive.sharers == sharers
    assert share.adaptive.max_window == -(-300 // sharers)
