"""The generate run's timeline: where a run's time goes outside the shards, per worker process."""

from __future__ import annotations

from factory.generate.workers import timeline


def test_timeline_splits_start_hand_offs_and_idle_end_per_worker():
    t0 = 100.0
    results = {  # worker 1: shards 0 and 2 with a 0.5 s hand-off; worker 2: shard 1, done 3 s before the end
        0: {"pid": 1, "began": 101.0, "ended": 105.0},
        2: {"pid": 1, "began": 105.5, "ended": 110.0},
        1: {"pid": 2, "began": 102.0, "ended": 107.0},
        3: {"pid": 2, "deferred": 1},  # a result without times (e.g. a batch-mode deferral) is left out
    }
    tl = timeline(t0, results, done_at=110.0)
    assert tl == {"to_first_shard_s": [1.0, 2.0], "between_shards_s": [0.5, 0.0], "idle_at_end_s": [0.0, 3.0]}


def test_timeline_of_no_timed_shards_is_empty():
    assert timeline(0.0, {}, 1.0) == {"to_first_shard_s": [], "between_shards_s": [], "idle_at_end_s": []}
