"""MinHash pair helpers of the decide job: each distinct candidate pair kept once, and the
vectorized whole-signature check equal to the definition, pair by pair."""

from __future__ import annotations

import numpy as np

from factory.curate.dedup import first_pairs, verified


def test_pair_verification_equals_the_jaccard_estimate_of_each_pair():
    """The vectorized check gives, pair by pair, what the definition says: the share of equal
    signature values against the threshold (pairs within a file and across files, both orders)."""
    rng = np.random.default_rng(0)
    sigs = {f: rng.integers(0, 4, size=(50, 30)).astype(np.uint64) for f in (0, 1, 7)}
    pairs = np.array([(rng.choice([0, 1, 7]), rng.integers(50), rng.choice([0, 1, 7]), rng.integers(50))
                      for _ in range(400)], dtype="<u4")
    expect = [float(np.mean(sigs[int(a)][int(i)] == sigs[int(b)][int(j)])) >= 0.3 for a, i, b, j in pairs]
    got = verified(pairs, sigs, 0.3)
    assert got.tolist() == expect and 0 < sum(expect) < len(expect)
    assert verified(pairs[:0], sigs, 0.3).shape == (0,)


def test_each_distinct_pair_is_kept_once_at_its_first_appearance():
    rng = np.random.default_rng(1)
    chunks = [np.array([(rng.integers(3), rng.integers(6), rng.integers(3), rng.integers(6)) for _ in range(60)],
                       dtype="<u4") for _ in range(4)]
    pairs, source = first_pairs(chunks)
    seen, expect = set(), []
    for i, c in enumerate(chunks):
        for f1, d1, f2, d2 in c.tolist():
            key = frozenset([(f1, d1), (f2, d2)])
            if key not in seen:
                seen.add(key)
                expect.append((i, (f1, d1, f2, d2)))
    assert [(int(s), tuple(p)) for s, p in zip(source, pairs.tolist())] == expect
    assert len(expect) < sum(map(len, chunks))  # the draw repeats pairs, in both orders
    assert first_pairs([])[0].shape == (0, 4)


def test_a_pair_with_a_reference_document_needs_the_reference_threshold():
    """Within the synthetic set a pair goes at `threshold`; a synthetic document and a reference
    (seed, web) document only at `reference_threshold`: a paraphrase of its seed stays, a copy goes."""
    from factory.curate.dedup import REF_OFFSET

    base = np.arange(100, dtype=np.uint64)
    half = np.where(np.arange(100) < 50, base, base + 1000)      # agrees on 0.5 of the values
    most = np.where(np.arange(100) < 90, base, base + 1000)      # agrees on 0.9
    sigs = {0: np.stack([half, most, half]), REF_OFFSET: base[None, :]}
    pairs = np.array([(0, 0, REF_OFFSET, 0), (0, 1, REF_OFFSET, 0), (REF_OFFSET, 0, 0, 2), (0, 0, 0, 2)], dtype="<u4")
    assert verified(pairs, sigs, 0.3, 0.7).tolist() == [False, True, False, True]
    assert verified(pairs, sigs, 0.3).tolist() == [True, True, True, True]  # without it: every pair at 0.3
