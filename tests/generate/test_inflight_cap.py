"""`concurrency` caps the items a worker has in flight with adaptive windows too: what a killed
worker repays is bounded by it (the bound docs/guide/teacher.md states). Once the windows overrode
the cap (the items in flight were max(concurrency, 2 x the windows)), so a killed driver with `concurrency: 1`
repaid up to a window's worth of requests instead of one per worker. (The stub also answers each
client's start-up check: one completion more.)"""

from __future__ import annotations

import asyncio

import pytest
from gen_helpers import recipe, seed_rows

from benchmarks._stub_server import StubServer
from factory.core.stage import StageDir
from factory.generate.shard import process_shard
from factory.recipes import load_recipe
from factory.teacher.client import TeacherClient
from factory.teacher.config import AdaptiveOptions, Endpoint, TeacherConfig


@pytest.mark.parametrize("concurrency", [1, 3])
def test_concurrency_caps_requests_in_flight_with_adaptive_windows(tmp_path, concurrency):
    rows = seed_rows(24)
    with StubServer(completion_tokens=2, delay_s=0.05) as stub:
        cfg = TeacherConfig(endpoints=[Endpoint(base_url=stub.url, model="stub")], max_in_flight=8,
                            adaptive=AdaptiveOptions(enabled=True, epoch=2), sampling={"temperature": 0.0})

        async def go() -> dict:
            async with TeacherClient(cfg) as client:
                stats = await process_shard(0, rows, [load_recipe(recipe("tiny_word"))], 1, client,
                                            StageDir(str(tmp_path / "out"), "generate", {"t": 1}), str(tmp_path / "cache"),
                                            concurrency)
                return {**stats, "window": client.window_total()}

        stats = asyncio.run(go())
        seen = stub.stats()
    assert stats["docs"] == 24 and seen["served"] == 24 + 1  # and the start-up check
    assert stats["window"] > concurrency  # the window would let more through ...
    assert seen["max_active"] == concurrency  # ... the cap holds


def test_default_items_in_flight_follow_the_windows(tmp_path):
    rows = seed_rows(64)
    with StubServer(completion_tokens=2, delay_s=0.05) as stub:
        cfg = TeacherConfig(endpoints=[Endpoint(base_url=stub.url, model="stub")], max_in_flight=4,
                            adaptive=AdaptiveOptions(enabled=False), sampling={"temperature": 0.0})

        async def go() -> None:
            async with TeacherClient(cfg) as client:
                await process_shard(0, rows, [load_recipe(recipe("tiny_word"))], 1, client,
                                    StageDir(str(tmp_path / "out"), "generate", {"t": 1}), str(tmp_path / "cache"), None)

        asyncio.run(go())
        seen = stub.stats()
    assert seen["served"] == 64 + 1 and seen["max_active"] == 4  # the fixed window bounds what is sent


def test_shards_at_once_share_the_gate_and_keep_their_own_accounting(tmp_path):
    """A worker runs two shards at once (the next fills the window while one drains): one gate bounds
    their items together, and each shard's stats count its own requests and tokens only."""
    from factory.generate.shard import make_gate

    rows = seed_rows(30)
    with StubServer(completion_tokens=3, delay_s=0.03) as stub:
        cfg = TeacherConfig(endpoints=[Endpoint(base_url=stub.url, model="stub")], max_in_flight=8,
                            adaptive=AdaptiveOptions(enabled=False), sampling={"temperature": 0.0})

        async def go() -> list[dict]:
            async with TeacherClient(cfg) as client:
                gate = make_gate(client, 2)
                stage = StageDir(str(tmp_path / "out"), "generate", {"t": 1})
                rec = load_recipe(recipe("tiny_word"))
                return await asyncio.gather(*(process_shard(k, part, [rec], 1, client, stage, str(tmp_path / "cache"), 2, gate=gate)
                                              for k, part in enumerate([rows[:10], rows[10:]])))

        a, b = asyncio.run(go())
        seen = stub.stats()
    assert seen["max_active"] == 2  # the two shards together, not 2 each
    assert (a["requests"], b["requests"]) == (10, 20) and seen["served"] == 30 + 1
    assert b["completion_tokens"] == 2 * a["completion_tokens"] > 0  # each its own: 10 and 20 alike requests


def test_reshare_widens_a_fixed_window(tmp_path):
    """At a run's tail the driver gives the workers still busy the idle ones' share: a client's fixed
    window per endpoint grows to the new share, and what waits is let through."""
    rows = seed_rows(24)
    with StubServer(completion_tokens=2, delay_s=0.2) as stub:
        full = TeacherConfig(endpoints=[Endpoint(base_url=stub.url, model="stub")], max_in_flight=4,
                             adaptive=AdaptiveOptions(enabled=False), sampling={"temperature": 0.0})

        async def go() -> int:
            async with TeacherClient(full.scaled(4)) as client:  # one of 4 workers: 1 in flight
                task = asyncio.create_task(process_shard(0, rows, [load_recipe(recipe("tiny_word"))], 1, client,
                                                         StageDir(str(tmp_path / "out"), "generate", {"t": 1}),
                                                         str(tmp_path / "cache"), 16))
                while (await asyncio.to_thread(stub.stats))["served"] < 3:  # the start-up check, then a few requests through at the small share
                    await asyncio.sleep(0.01)
                before = (await asyncio.to_thread(stub.stats))["max_active"]
                await client.reshare(full.scaled(1))  # the others are done: the whole window
                await task
                return before

        before = asyncio.run(go())
        seen = stub.stats()
    assert before == 1 and seen["max_active"] == 4 and seen["served"] == 24 + 1
