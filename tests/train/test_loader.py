"""The mixed loader: blend, epochs, resume, rank disjointness, plan checks (shards written here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from train.loader import MixLoader, PlanMismatch, blend_schedule

SEQ = 8


def write_source(folder: Path, name: str, doc_lengths: list[int], base: int, vocab: int = 1000, files: int = 1) -> Path:
    """A datatrove-format source whose token at stream position p is base + p (mod vocab), readable back."""
    folder = folder / name
    folder.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if vocab <= 65536 else np.uint32
    pos, parts = 0, np.array_split(np.array(doc_lengths), files)
    for r, part in enumerate(parts):
        n = int(part.sum())
        toks = ((np.arange(pos, pos + n) + base) % vocab).astype(dtype)
        f = folder / f"{name}_{r:05d}_unshuffled.ds"
        toks.tofile(f)
        np.cumsum(part).astype("<u8").tofile(f"{f}.index")
        Path(f"{f}.metadata").write_text(f"tok|{dtype().itemsize}\n{n}\n{n}")
        pos += n
    return folder


def make_plan(tmp: Path, phases: list[dict[str, int]], sizes: dict[str, int], seed: int = 0, files: int = 1,
              vocab: int = 1000) -> dict:
    paths = {k: str(write_source(tmp, k, [97] * (v // 97) + ([v % 97] if v % 97 else []), base=100 * i, files=files, vocab=vocab))
             for i, (k, v) in enumerate(sizes.items())}
    out = []
    for j, counts in enumerate(phases):
        n = sum(counts.values())
        out.append({"name": f"p{j}", "tokens": n * SEQ, "sources": [
            {"name": k, "path": paths[k], "kind": "web", "share": c / n, "unique_tokens": sizes[k], "tokens": c * SEQ,
             "epochs": 0.0, "max_epochs": None} for k, c in counts.items()]})
    return {"mix": "t", "seq_len": SEQ, "seed": seed, "tokenizer": "", "vocab_size": vocab,
            "total_tokens": sum(p["tokens"] for p in out), "phases": out}


# the blend -----------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 60), min_size=1, max_size=8).filter(lambda c: sum(c) > 0))
def test_blend_within_one_sample_at_every_prefix(counts):
    sched = blend_schedule(counts)
    n = sum(counts)
    assert len(sched) == n
    onehot = np.zeros((n, len(counts)), dtype=np.int64)
    onehot[np.arange(n), sched] = 1
    drawn = np.cumsum(onehot, axis=0)  # drawn[k-1, s]: draws of s among the first k samples
    k = np.arange(1, n + 1)[:, None]
    err = np.abs(drawn * n - np.array(counts)[None, :] * k)  # |d_s(k) - share_s * k|, times n
    assert err.max() < n  # strictly within one sample at every prefix: floor <= drawn <= ceil
    assert drawn[-1].tolist() == list(counts)  # a full phase draws exactly the planned counts
    assert np.array_equal(blend_schedule(counts), sched)  # deterministic


def test_blend_case_where_the_plain_greedy_falls_behind():
    counts = [1, 1, 1, 14, 14]
    sched = blend_schedule(counts)
    drawn = np.cumsum(np.eye(5, dtype=int)[sched], axis=0)
    k = np.arange(1, 32)[:, None]
    assert (np.abs(drawn * 31 - np.array(counts) * k) < 31).all()


def test_blend_interleaves_rather_than_runs():
    sched = blend_schedule([50, 50])
    assert sched.tolist()[:6] == [0, 1, 0, 1, 0, 1]


# epochs --------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(st.integers(1, 400), st.integers(20, 300), st.integers(0, 3))
def test_every_window_once_per_epoch(draws, size, seed):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        plan = make_plan(Path(d), [{"a": draws}], {"a": size}, seed=seed)
        ld = MixLoader(plan, 0, 1, 1)
        w = ld.streams[0].windows
        assert w == (size - 1) // SEQ
        seen = [ld.window_of(g) for g in range(draws)]
        for e in range(draws // w + 1):
            wins = [j for (_, ep, j) in seen if ep == e]
            assert len(wins) == len(set(wins))  # no window twice within an epoch
            if len(wins) == w:
                assert sorted(wins) == list(range(w))  # a full epoch is a permutation of all windows
        assert ld.epochs_seen(draws) == {"a": round(draws / w, 6)}
        assert ld.tokens_drawn(draws) == {"a": draws * SEQ}


def test_windows_are_the_stream_packed_across_files(tmp_path):
    plan = make_plan(tmp_path, [{"a": 40}], {"a": 300}, files=3)
    ld = MixLoader(plan, 0, 1, 1)
    for g in range(40):
        _, _, j = ld.window_of(g)
        row = ld.batch(g)[0].numpy()
        assert row.tolist() == [(j * SEQ + t) % 1000 for t in range(SEQ + 1)]  # consecutive tokens, across file ends


def test_permutations_differ_per_epoch_and_seed(tmp_path):
    plan = make_plan(tmp_path, [{"a": 200}], {"a": 400})
    ld = MixLoader(plan, 0, 1, 1)
    assert not np.array_equal(ld._perm(0, 0), ld._perm(0, 1))
    other = MixLoader({**plan, "seed": 1}, 0, 1, 1)
    assert not np.array_equal(ld._perm(0, 0), other._perm(0, 0))


# resume and ranks ----------------------------------------------------------------------------
def test_resume_mid_epoch_is_exact(tmp_path):
    plan = make_plan(tmp_path, [{"a": 300, "b": 100}, {"a": 20, "b": 60}], {"a": 500, "b": 900}, files=2)
    full = list(MixLoader(plan, 1, 2, 3))
    first = MixLoader(plan, 1, 2, 3)
    it = iter(first)
    for _ in range(17):
        next(it)
    state = json.loads(json.dumps(first.state_dict()))
    assert state == {"step": 17}
    resumed = MixLoader(plan, 1, 2, 3)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(full) - 17
    assert all(torch.equal(a, b) for a, b in zip(full[17:], rest))


def test_ranks_are_disjoint_and_cover_the_stream(tmp_path):
    plan = make_plan(tmp_path, [{"a": 70, "b": 50}], {"a": 2000, "b": 3000})
    world, batch = 3, 4
    loaders = [MixLoader(plan, r, world, batch) for r in range(world)]
    steps = loaders[0].steps_total()
    assert steps == 120 // (world * batch)
    picked = []
    for r, ld in enumerate(loaders):
        for step in range(steps):
            g0 = step * world * batch + r * batch
            picked += [ld.window_of(g0 + i) for i in range(batch)]
        out = torch.cat(list(ld))
        assert out.shape == (steps * batch, SEQ + 1) and out.dtype == torch.long
    assert len(picked) == len(set(picked)) == steps * world * batch  # no (source, epoch, window) twice
    # the same stream at another world size: same samples, other split
    single = torch.cat(list(MixLoader(plan, 0, 1, world * batch)))
    interleaved = torch.stack([torch.cat(list(MixLoader(plan, r, world, batch)))for r in range(world)])
    assert torch.equal(single.view(steps, world, batch, -1), interleaved.view(world, steps, batch, -1).transpose(0, 1))


def test_phase_only_and_steps_total(tmp_path):
    plan = make_plan(tmp_path, [{"a": 64, "b": 32}, {"a": 8, "b": 24}], {"a": 900, "b": 900})
    ld = MixLoader(plan, 0, 1, 4, phase="p1")
    assert ld.steps_total() == 8 and ld.steps_total(8) == 4
    list(ld)
    assert ld.tokens_drawn() == {"a": 8 * SEQ, "b": 24 * SEQ}
    assert ld.check_against_plan()["phases"]["p1"]["complete"]
    with pytest.raises(ValueError, match="unknown phase"):
        MixLoader(plan, 0, 1, 4, phase="nope")


# checks against the plan ---------------------------------------------------------------------
def test_check_against_plan_full_and_partial(tmp_path):
    plan = make_plan(tmp_path, [{"a": 30, "b": 70}, {"a": 50, "b": 50}], {"a": 500, "b": 500})
    ld = MixLoader(plan, 0, 2, 3)
    list(ld)  # 200 samples, global batch 6: 33 steps, the last phase drawn in part
    rep = ld.check_against_plan()
    assert rep["phases"]["p0"]["complete"] and not rep["phases"]["p1"]["complete"]
    assert rep["phases"]["p0"]["sources"]["a"] == {"planned_tokens": 30 * SEQ, "drawn_tokens": 30 * SEQ}
    assert rep["epochs_seen"]["a"] == round(sum(ld.src[:198] == 0) / ld.streams[0].windows, 6)


def test_check_against_plan_catches_a_wrong_draw(tmp_path):
    plan = make_plan(tmp_path, [{"a": 500, "b": 500}], {"a": 5000, "b": 5000})
    ld = MixLoader(plan, 0, 1, 10)
    ld.src = ld.src.copy()
    ld.src[np.flatnonzero(ld.src == 0)[:2]] = 1  # a broken blend: two of a's samples go to b (0.4% off)
    ld.load_state_dict({"step": ld.steps_total()})
    with pytest.raises(PlanMismatch, match="more than 0.1% off"):
        ld.check_against_plan()


def test_plan_tokens_not_a_multiple_of_seq_len_are_caught(tmp_path):
    plan = make_plan(tmp_path, [{"a": 10, "b": 10}], {"a": 500, "b": 500})
    plan["phases"][0]["sources"][0]["tokens"] += SEQ - 1  # a hand-edited plan the loader cannot meet
    plan["phases"][0]["tokens"] += SEQ - 1
    ld = MixLoader(plan, 0, 1, 4)
    list(ld)
    with pytest.raises(PlanMismatch, match="source 'a'"):
        ld.check_against_plan()


def test_bad_plans(tmp_path):
    plan = make_plan(tmp_path, [{"a": 10, "b": 10}], {"a": 500, "b": 5})
    with pytest.raises(PlanMismatch, match="too few for one window"):
        MixLoader(plan, 0, 1, 1)
    plan = make_plan(tmp_path / "x", [{"a": 10}], {"a": 500})
    plan["phases"][0]["tokens"] = 99 * SEQ
    with pytest.raises(PlanMismatch, match="do not add up"):
        MixLoader(plan, 0, 1, 1)
    plan = make_plan(tmp_path / "y", [{"a": 10}], {"a": 500})
    for f in Path(plan["phases"][0]["sources"][0]["path"]).glob("*.ds"):
        f.unlink()
    with pytest.raises(PlanMismatch, match="no .ds files"):
        MixLoader(plan, 0, 1, 1)
    with pytest.raises(ValueError, match="rank"):
        MixLoader(make_plan(tmp_path / "z", [{"a": 10}], {"a": 500}), 2, 2, 1)


def test_uint32_shards(tmp_path):
    plan = make_plan(tmp_path, [{"a": 20}], {"a": 400}, vocab=100_000)
    ld = MixLoader(plan, 0, 1, 2)
    b = next(iter(ld))
    _, _, j = ld.window_of(0)
    assert b[0].tolist() == [j * SEQ + t for t in range(SEQ + 1)]


def test_plan_from_a_file(tmp_path):
    plan = make_plan(tmp_path, [{"a": 20}], {"a": 400})
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(plan))
    assert torch.equal(torch.cat(list(MixLoader(str(p), 0, 1, 2))), torch.cat(list(MixLoader(plan, 0, 1, 2))))


def test_loader_imports_only_what_a_gpu_host_has():
    code = ("import sys, train.loader; bad = [m for m in ('pydantic', 'datatrove', 'ray', 'factory') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert r.returncode == 0, r.stdout + r.stderr
