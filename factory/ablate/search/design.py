"""Proxy mixes: share vectors inside the feasible region, spread over it.

The region is a box (each varied source's [min, max], its max share under `max_epochs` at a given
token budget) cut by the plane where the varied shares sum to what the fixed sources leave. It is
convex, so averages of feasible points stay feasible.
"""

from __future__ import annotations

import numpy as np

from factory.core.errors import FactoryError


def check(lo: np.ndarray, hi: np.ndarray, mass: float, names: list[str], where: str, why: str) -> None:
    """Refuse bounds that leave no mix: the mins must fit in `mass` and the maxes reach it."""
    if lo.sum() > mass + 1e-9:
        raise FactoryError(f"the minimum shares of {', '.join(names)} sum to {lo.sum():.3f}, more than the "
                           f"{mass:.3f} the other sources leave", where=where, field="vary",
                           fix="lower some `min` or the fixed sources' shares in the base mix")
    if hi.sum() < mass - 1e-9:
        raise FactoryError(f"the largest shares of {', '.join(names)} sum to {hi.sum():.3f} ({why}), less than the "
                           f"{mass:.3f} they must fill", where=where, field="vary",
                           fix="raise some `max` or `max_epochs`, add data, or lower the token budget")


def sample(lo: np.ndarray, hi: np.ndarray, mass: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points of the region: sources in a random order, each uniform within what keeps the rest feasible."""
    k = len(lo)
    out = np.empty((n, k))
    for r in range(n):
        order = rng.permutation(k)
        left, w = mass, np.empty(k)
        for j, i in enumerate(order):
            rest = order[j + 1:]
            a = max(lo[i], left - hi[rest].sum())
            b = min(hi[i], left - lo[rest].sum())
            w[i] = b if not len(rest) else rng.uniform(a, max(a, b))
            left -= w[i]
        out[r] = w
    return out


def dirichlet(lo: np.ndarray, hi: np.ndarray, mass: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """n Dirichlet(1) draws scaled to `mass` and kept when inside the box; the rest from `sample`."""
    got = []
    for _ in range(200):
        d = rng.dirichlet(np.ones(len(lo)), size=max(64, 4 * n)) * mass
        got += list(d[np.all((d >= lo - 1e-12) & (d <= hi + 1e-12), axis=1)])
        if len(got) >= n:
            return np.array(got[:n])
    return np.vstack([np.array(got).reshape(-1, len(lo)), sample(lo, hi, mass, n - len(got), rng)])


def space_filling(lo: np.ndarray, hi: np.ndarray, mass: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """n points picked greedily from 64n candidates, each the farthest from those already picked (maximin)."""
    cand = sample(lo, hi, mass, 64 * n, rng)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    z = (cand - lo) / span
    first = int(np.argmin(((z - z.mean(0)) ** 2).sum(1)))
    picked, dist = [first], ((z - z[first]) ** 2).sum(1)
    for _ in range(n - 1):
        nxt = int(np.argmax(dist))
        picked.append(nxt)
        dist = np.minimum(dist, ((z - z[nxt]) ** 2).sum(1))
    return cand[picked]


DESIGNS = {"space_filling": space_filling, "dirichlet": dirichlet}
