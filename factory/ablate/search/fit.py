"""Regressions from mix shares to the target score, chosen by cross-validated rank correlation.

- `loglinear`: score = a + sum_i b_i log(w_i + eps), ridge-regularised (the log-linear form of
  Olmix-style mixture laws; diminishing returns per source).
- `gbm`: scikit-learn's GradientBoostingRegressor on the shares (RegMix fits a boosted model).

`cross_validate` scores each by the Spearman correlation of held-out predictions (k folds); the
best one is refit on all proxies, and a bootstrap of refits gives the spread of its prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

EPS = 1e-3


@dataclass
class Model:
    name: str
    predict: Callable[[np.ndarray], np.ndarray]


def loglinear(X: np.ndarray, y: np.ndarray, ridge: float = 1e-3) -> Model:
    F = np.log(X + EPS)
    mu, sd = F.mean(0), F.std(0) + 1e-12
    Z = np.c_[np.ones(len(F)), (F - mu) / sd]
    reg = ridge * np.eye(Z.shape[1])
    reg[0, 0] = 0.0
    coef = np.linalg.solve(Z.T @ Z + reg, Z.T @ y)
    return Model("loglinear", lambda W: np.c_[np.ones(len(W)), (np.log(W + EPS) - mu) / sd] @ coef)


def gbm(X: np.ndarray, y: np.ndarray, seed: int = 0) -> Model:
    from sklearn.ensemble import GradientBoostingRegressor

    m = GradientBoostingRegressor(n_estimators=150, max_depth=2, learning_rate=0.05, subsample=0.8,
                                  min_samples_leaf=2, random_state=seed).fit(X, y)
    return Model("gbm", m.predict)


FITS: dict[str, Callable[..., Model]] = {"loglinear": loglinear, "gbm": gbm}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def cross_validate(X: np.ndarray, y: np.ndarray, folds: int = 6, seed: int = 0) -> dict[str, dict]:
    """Per model: held-out predictions, their Spearman correlation with y and their RMSE."""
    idx = np.random.default_rng(seed).permutation(len(y))
    parts = np.array_split(idx, min(folds, len(y)))
    out = {}
    for name, fit in FITS.items():
        pred = np.empty(len(y))
        for p in parts:
            train = np.setdiff1d(idx, p)
            pred[p] = fit(X[train], y[train]).predict(X[p])
        out[name] = {"pred": pred, "spearman": spearman(pred, y), "rmse": float(np.sqrt(np.mean((pred - y) ** 2)))}
    return out


def best(cv: dict[str, dict]) -> str:
    """The model with the highest held-out rank correlation (the simpler log-linear on a tie)."""
    return max(cv, key=lambda k: (round(cv[k]["spearman"], 3), k == "loglinear"))


def bootstrap(name: str, X: np.ndarray, y: np.ndarray, at: np.ndarray, n: int = 200, seed: int = 0) -> np.ndarray:
    """Predictions at the rows of `at` from `n` refits on resampled proxies (n x len(at))."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, len(at)))
    for b in range(n):
        s = rng.integers(0, len(y), len(y))
        out[b] = FITS[name](X[s], y[s]).predict(at)
    return out
