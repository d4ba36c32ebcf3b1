"""The request cache on object storage (a real S3-compatible server): immutable segments, the
node-local spool, and the bound on what a killed worker or a lost node repays."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import fsspec
import pytest

from factory.teacher.cache import SPOOL_ENV, CompletionCache, adopt, shard_file
from factory.teacher.types import Completion


def comp(i: int) -> Completion:
    return Completion(text=f"answer {i}", finish_reason="stop", prompt_tokens=3, completion_tokens=2, model="m")


def segments(url: str) -> list[str]:
    fs, p = fsspec.core.url_to_fs(url[: -len(".jsonl")])
    fs.invalidate_cache()
    return fs.glob(f"{p}/seg-*.jsonl")


def uploaded(url: str) -> int:
    """Records in the shard's segments on the store."""
    fs, _ = fsspec.core.url_to_fs(url)
    return sum(len(fs.cat_file(s).splitlines()) for s in segments(url))


@pytest.fixture
def node(tmp_path, monkeypatch):
    """Switch this process to another node: a node-local spool folder of its own."""
    def switch(name: str) -> None:
        monkeypatch.setenv(SPOOL_ENV, str(tmp_path / f"spool-{name}"))
    switch("a")
    return switch


def test_segments_flush_every_n_and_at_close(s3_bucket, node):
    url = shard_file(f"{s3_bucket}/cache/layout-x", 0)
    c = CompletionCache(url, flush_every=4, flush_s=3600)
    for i in range(10):
        c.put(f"k{i}", comp(i), seed=f"s{i}")
    c.drain()
    assert 8 <= uploaded(url) <= 10 and len(segments(url)) <= 2  # uploads of >= 4 records each, in the background
    assert c.log.exists() and len(c.log.read_bytes().splitlines()) == 10
    c.close()
    assert uploaded(url) == 10 and not c.log.exists()  # the rest went up; the spool is gone
    node("b")  # another node reads what this one paid for
    again = CompletionCache(url)
    assert len(again) == 10 and again.get("k9").text == "answer 9" and again.get("k9").cached
    again.close()


def test_lost_node_repays_at_most_one_window(s3_bucket, node, tmp_path):
    url = shard_file(f"{s3_bucket}/cache/layout-x", 1)
    c = CompletionCache(url, flush_every=4, flush_s=3600)
    for i in range(10):
        c.put(f"k{i}", comp(i))
    c.drain()
    # the node disappears with its disk: no close, no spool
    node("b")
    after = CompletionCache(url, flush_every=4)
    assert 8 <= len(after) <= 10 and "k0" in after  # fewer than flush_every completions to repay
    after.close()


def test_killed_worker_on_a_live_node_loses_nothing(s3_bucket, node):
    url = shard_file(f"{s3_bucket}/cache/layout-x", 2)
    c = CompletionCache(url, flush_every=4, flush_s=3600)
    for i in range(10):
        c.put(f"k{i}", comp(i))
    c.drain()
    # the worker process dies (no close); the next open on the same node uploads its spool
    again = CompletionCache(url, flush_every=4)
    assert len(again) == 10 and uploaded(url) == 10
    again.close()
    node("b")
    assert len(CompletionCache(url)) == 10


def test_time_window_flush(s3_bucket, node):
    url = shard_file(f"{s3_bucket}/cache/layout-x", 3)
    c = CompletionCache(url, flush_every=1000, flush_s=0.2)
    c.put("k0", comp(0))
    assert not c.flush_due()
    time.sleep(0.3)
    assert c.flush_due()
    c.flush()
    assert len(segments(url)) == 1 and not c.flush_due()
    c.close()


def test_racing_writers_keep_both_and_never_overwrite(s3_bucket, node):
    """A late node and its replacement both write the same shard: every record survives once."""
    url = shard_file(f"{s3_bucket}/cache/layout-x", 4)
    a = CompletionCache(url, flush_every=2)
    node("b")
    b = CompletionCache(url, flush_every=2)
    for i in range(4):
        a.put(f"k{i}", comp(i))
        b.put(f"k{i + 2}", comp(i + 2))
    a.close()
    b.close()
    node("c")
    assert sorted(CompletionCache(url)._data) == [f"k{i}" for i in range(6)]


def test_adopt_from_another_layout_on_the_store(s3_bucket, node):
    root = f"{s3_bucket}/cache"
    old = CompletionCache(shard_file(f"{root}/layout-old", 0), flush_every=1)
    for i in range(6):
        old.put(f"k{i}", comp(i), seed=f"seed{i}")
    old.close()
    here = f"{root}/layout-new"
    shard_of = {f"seed{i}": i % 2 for i in range(4)}  # seeds 4 and 5 are not in this run
    assert adopt(root, here, shard_of) == 4
    assert adopt(root, here, shard_of) == 0  # each record is adopted once
    got = {k: set(CompletionCache(shard_file(here, k))._data) for k in (0, 1)}
    assert got == {0: {"k0", "k2"}, 1: {"k1", "k3"}}


def test_local_cache_is_one_append_log(tmp_path):
    url = shard_file(str(tmp_path / "cache"), 0)
    c = CompletionCache(url, flush_every=2)
    for i in range(5):
        c.put(f"k{i}", comp(i))
    assert len((tmp_path / "cache" / "shard-00000.jsonl").read_bytes().splitlines()) == 5  # flushed as they came
    assert not (tmp_path / "cache" / "shard-00000").exists()  # no segments on a local disk
    c.close()


WRITER = """
import sys, time
from factory.teacher.cache import CompletionCache
from factory.teacher.types import Completion
c = CompletionCache(sys.argv[1], flush_every=5, flush_s=3600)
i = 0
while True:
    c.put(f"k{i}", Completion(text=str(i), finish_reason="stop", prompt_tokens=1, completion_tokens=1, model="m"))
    i += 1
    print(i, flush=True)
    time.sleep(0.01)
"""


@pytest.mark.slow
def test_sigkilled_writer_on_a_lost_node(s3_bucket, node, tmp_path):
    """SIGKILL a real writer process and drop its node's disk: what it had flushed survives, and
    what is lost is less than two windows (one filling, one uploading: 2 x flush_every)."""
    url = shard_file(f"{s3_bucket}/cache/layout-x", 5)
    p = subprocess.Popen([sys.executable, "-c", WRITER, url], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    written = 0
    for line in p.stdout:
        written = int(line)
        if written >= 23:
            break
    p.send_signal(signal.SIGKILL)
    p.wait()
    node("b")
    got = CompletionCache(url)
    assert written - 10 < len(got) <= written
    assert all(json.loads(b)["key"] for s in segments(url) for b in fsspec.open(f"s3://{s}").open().read().splitlines())
