"""The generate stage end to end: real Ray, the real llama.cpp teacher, faults in between."""

from __future__ import annotations

import re

import pyarrow.parquet as pq
import pytest
from gen_helpers import gen_cfg, request_keys

from factory.core.errors import FactoryError
from factory.core.schema import extra
from factory.core.stage import read_docs
from factory.generate import run
from factory.teacher.server import free_port
from tests.ecosystem import loads_everywhere
from tests.proxy import FaultProxy


def ids(out) -> list[str]:
    return read_docs(str(out)).column("id").to_pylist()


def test_generate_writes_docs_with_provenance_and_resumes(teacher, ray_local, seeds_file, tmp_path, capfd, monkeypatch):
    seeds = seeds_file(5, bad=[{"id": "x", "text": ""}, {"meta": {"seed_id": "y"}}])
    cfg = gen_cfg(seeds, tmp_path / "out", teacher.endpoints, teacher.model, samples_per_seed=2,
                  teacher_kw={"price": {"prompt_per_1k": 0.001, "completion_per_1k": 0.002}})
    monkeypatch.setenv("FACTORY_PROGRESS_EVERY_S", "0.2")
    capfd.readouterr()
    m = run(cfg)
    # not a terminal (a Ray job's log): plain progress lines while it runs, with rates and an ETA
    lines = re.findall(r"^generate (\d+)/10 \(\d+%\) [\d.]+ units/s elapsed \d:\d\d:\d\d eta (\S+)  .*docs/s.*tok/s",
                       capfd.readouterr().err, re.M)
    assert len(lines) >= 3 and lines[-1] == ("10", "0:00:00"), lines
    assert all(re.fullmatch(r"\d:\d\d:\d\d", eta) for done, eta in lines if int(done) > 0), lines
    got = ids(tmp_path / "out")
    assert len(got) == len(set(got)) == 10  # 5 seeds x 2 samples, none lost or duplicated
    assert m["status"] == "done" and m["counts"]["docs"] == 10 and m["dropped"] == {"malformed_seed": 2}
    acc = m["accounting"]
    assert acc["requests"] == 10 and acc["completion_tokens"] > 0 and acc["cost"] > 0
    tl = m["this_run"]["timeline"]  # where the time went outside the shards: per worker, and Ray's stop after wall_s
    assert len(tl["to_first_shard_s"]) == len(tl["idle_at_end_s"]) == 2 and tl["teardown_s"] >= 0
    assert m["this_run"]["probe_s"] >= 0 and tl["workers_started_before_s"] >= 0
    row = read_docs(str(tmp_path / "out")).to_pylist()[0]
    meta = row["meta"]
    assert meta["recipe"] == "tiny_fact" and meta["seed_id"].startswith("test:") and meta["teacher_model"]
    assert meta["prompt_sha"] and meta["completion_tokens"] > 0 and meta["finish_reason"] in ("stop", "length")
    assert "sample" in extra(row)
    bad = pq.read_table(tmp_path / "out" / "rejected" / "seeds.parquet").to_pylist()
    loads_everywhere(str(tmp_path / "out"), 10, "other")  # seeds from a JSONL file declare no licence
    assert {b["reason"] for b in bad} == {"malformed_seed"}
    # a rerun skips every finished shard and pays for nothing
    m2 = run(cfg, show_progress=False)
    assert sorted(ids(tmp_path / "out")) == sorted(got) and m2["this_run"]["failed_shards"] == []
    assert "requests" not in m2["this_run"]
    # a lost shard is redone from the cache: no teacher call
    (tmp_path / "out" / "data" / "train-shard-00001.parquet").unlink()
    m3 = run(cfg, show_progress=False)
    assert sorted(ids(tmp_path / "out")) == sorted(got)
    assert m3["this_run"]["requests"] == 0 and m3["this_run"]["cache_hits"] > 0


def test_shared_cache_pays_only_for_what_is_new(teacher, ray_local, seeds_file, tmp_path):
    """Another shard count and twice the samples, on the cache of a first run: only the new
    samples reach the teacher, and the old ones come back with the same text."""
    seeds, cache = seeds_file(6), str(tmp_path / "cache")
    run(gen_cfg(seeds, tmp_path / "a", teacher.endpoints, teacher.model, shards=3, cache_dir=cache), show_progress=False)
    with FaultProxy(teacher.endpoints[0]) as px:  # no faults: it counts the calls that reach the teacher
        m = run(gen_cfg(seeds, tmp_path / "b", [px.base_url], teacher.model, shards=2, samples_per_seed=2,
                        cache_dir=cache), show_progress=False)
    assert px.teacher_calls == 6 and m["this_run"]["cache_adopted"] == 6
    texts = lambda out: {(r["meta"]["seed_id"], extra(r).get("sample", 0)): r["text"]  # noqa: E731
                         for r in read_docs(str(out)).to_pylist()}
    a, b = texts(tmp_path / "a"), texts(tmp_path / "b")
    assert len(a) == 6 and len(b) == 12 and {k: b[k] for k in a} == a


def test_faults_lose_and_duplicate_nothing(teacher, ray_local, seeds_file, tmp_path):
    seeds = seeds_file(12)
    clean = gen_cfg(seeds, tmp_path / "clean", teacher.endpoints, teacher.model)
    run(clean, show_progress=False)
    with FaultProxy(teacher.endpoints[0], p429=0.1, p500=0.1, phang=0.05, ptrunc=0.02, hang_s=7, seed=3) as px:
        faulty = gen_cfg(seeds, tmp_path / "faulty", [px.base_url], teacher.model, timeout_s=5)
        m = run(faulty, show_progress=False)
    out = px.outcomes()
    assert out["429"] + out["500"] + out["hang"] + out["trunc"] > 0
    got = ids(tmp_path / "faulty")
    assert len(got) == len(set(got))
    assert request_keys(tmp_path / "faulty") == request_keys(tmp_path / "clean")
    assert m["accounting"]["retries"] > 0


def test_bad_teacher_configs_fail_before_any_work(teacher, seeds_file, tmp_path, monkeypatch):
    seeds = seeds_file(2)
    import ray

    started = ray.is_initialized()  # (another test's local Ray may be up)
    with pytest.raises(FactoryError, match="cannot reach teacher endpoint"):
        run(gen_cfg(seeds, tmp_path / "a", [f"http://127.0.0.1:{free_port()}/v1"], teacher.model), show_progress=False)
    assert ray.is_initialized() == started  # given endpoints are probed before Ray and its workers start
    with pytest.raises(FactoryError, match="not served"):
        run(gen_cfg(seeds, tmp_path / "b", teacher.endpoints, "no-such-model"), show_progress=False)
    monkeypatch.delenv("FACTORY_TEST_KEY", raising=False)
    cfg = gen_cfg(seeds, tmp_path / "c", teacher.endpoints, teacher.model)
    cfg.teacher.endpoints[0].api_key_env = "FACTORY_TEST_KEY"
    with pytest.raises(FactoryError, match="FACTORY_TEST_KEY"):
        run(cfg, show_progress=False)
    with pytest.raises(FactoryError, match="no recipe named"):
        run(gen_cfg(seeds, tmp_path / "d", teacher.endpoints, teacher.model, recipes=["no_such_recipe"]), show_progress=False)
