"""Pilot and forecast (`factory generate CONFIG --pilot N`): generate and curate N seeds, then
extrapolate to the full seed set with intervals. On the fleet simulator (simulated replicas with
output lengths that vary per prompt), checked against the full run on the same simulator."""

from __future__ import annotations

import pytest
from gen_helpers import gen_cfg

from benchmarks.fleet_simulator import MODEL, FleetSimulator
from factory.generate import run
from factory.generate.forecast import estimate, rows, run_pilot, spread
from factory.teacher.config import Price


def test_estimate_is_exact_when_the_pilot_is_everything():
    e = estimate([1.0, 3.0, 5.0], 3)
    assert e["total"] == e["low"] == e["high"] == 9.0
    e = estimate([1.0, 3.0, 5.0], 300)
    assert e["low"] < e["total"] < e["high"] and e["total"] == pytest.approx(900.0)
    assert spread(list(range(10)), 5) == [0, 2, 4, 6, 8] and spread([1, 2], 5) == [1, 2]


def test_pilot_forecast_brackets_the_full_run(ray_local, seeds_file, tmp_path):
    seeds = seeds_file(120)
    price = Price(prompt_per_1k=0.5, completion_per_1k=1.5)
    with FleetSimulator(replicas=2, speed=20, output="mixed") as fleet:
        cfg = gen_cfg(seeds, tmp_path / "gen", fleet.urls, MODEL, shards=3, recipe_sampling={"max_tokens": 64},
                      teacher_kw={"price": price})
        fc = run_pilot(cfg, 30, replicas=8, show_progress=False)
        full = run(cfg, show_progress=False)
    assert fc["seeds"] == 120 and fc["pilot_seeds"] == 30 and fc["pilot_requests"] == 30
    acc = full["accounting"]
    ct, cost = fc["completion_tokens"], fc["cost"]
    assert ct["low"] < ct["total"] < ct["high"]  # output lengths vary per prompt: a real interval
    assert ct["low"] <= acc["completion_tokens"] <= ct["high"], (ct, acc["completion_tokens"])
    assert cost["low"] <= acc["cost"] <= cost["high"]
    assert fc["documents_generated"]["total"] == 120  # one document per seed in the pilot: 120 forecast
    assert 0 <= fc["documents_kept"]["total"] <= 120
    assert fc["wall_hours"]["total"] == pytest.approx(fc["replica_hours"]["total"] / 8)
    assert (tmp_path / "gen-pilot" / "forecast.json").exists() and (tmp_path / "gen-pilot" / "curated" / "manifest.json").exists()
    table = {r[0]: r for r in rows(fc)}
    assert "documents kept after curation" in table and table["seeds"][1] == "120"


def test_pilot_on_the_local_teacher(teacher, ray_local, seeds_file, tmp_path):
    """The real llama.cpp teacher: 2 of 8 seeds through generate and curate, a forecast for 8."""
    cfg = gen_cfg(seeds_file(8), tmp_path / "gen", teacher.endpoints, teacher.model, shards=2,
                  teacher_kw={"price": Price(prompt_per_1k=0.001, completion_per_1k=0.002)})
    fc = run_pilot(cfg, 2, replicas=4, show_progress=False)
    assert fc["seeds"] == 8 and fc["pilot_seeds"] == 2 and fc["pilot_requests"] == 2
    ct = fc["completion_tokens"]
    assert 0 < ct["low"] <= ct["total"] <= ct["high"] and ct["total"] == pytest.approx(4 * ct["per_seed"] * 2)
    assert fc["cost"]["total"] > 0 and fc["completion_tok_s_per_replica"] > 0
    assert fc["wall_hours"]["total"] == pytest.approx(fc["replica_hours"]["total"] / 4)
    assert not (tmp_path / "gen").exists()  # the pilot writes beside the run's folder, never into it
