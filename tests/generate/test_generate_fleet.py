"""The generate stage on simulated continuous-batching replicas (benchmarks/fleet_simulator.py):
adaptive windows in the progress line and the manifest, every item written once."""

from __future__ import annotations

import re

from gen_helpers import gen_cfg

from benchmarks.fleet_simulator import MODEL, FleetSimulator
from factory.core.stage import read_docs
from factory.generate import run


def test_generate_on_a_fleet_grows_the_windows_and_loses_nothing(ray_local, seeds_file, tmp_path, capfd, monkeypatch):
    seeds = seeds_file(240)
    monkeypatch.setenv("FACTORY_PROGRESS_EVERY_S", "0.2")
    with FleetSimulator(replicas=2, speed=20) as fleet:
        cfg = gen_cfg(seeds, tmp_path / "out", fleet.urls, MODEL, shards=2, workers=2, concurrency=None)
        capfd.readouterr()
        m = run(cfg)
        served = sum(s["served"] for s in fleet.stats())
    err = capfd.readouterr().err
    assert re.search(r"window \d+ \(adaptive\)", err), err[-2000:]
    ids = read_docs(str(tmp_path / "out")).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 240 and served == 240 + len(fleet.urls)  # each item asked once, written once (and
    # the driver's start-up check on each replica)
    eps = m["this_run"]["endpoints"]
    assert sorted(e["base_url"] for e in eps) == sorted(fleet.urls)
    assert all(e["adaptive"] and e["window_max"] > 4 for e in eps), eps  # grown from 2 per worker per replica
    assert all(e["breaker_opens"] == 0 and e["in_flight"] == 0 for e in eps)
