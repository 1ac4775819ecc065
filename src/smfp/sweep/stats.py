"""Aggregate statistics for few-seed RL results, after Agarwal et al. (2021), "Deep RL at the edge
of the statistical precipice" (the recommendations behind ``rliable``).

- **IQM** (interquartile mean): the mean of the middle 50% of the scores. As in rliable (which
  calls ``scipy.stats.trim_mean(x, 0.25)``), ``floor(n / 4)`` scores are cut from each end.
- **Percentile bootstrap CI** of a statistic over runs: resample the runs with replacement,
  recompute the statistic, take the ``(1 - c) / 2`` and ``(1 + c) / 2`` percentiles.
- **Stratified bootstrap** across tasks: resample the runs *within each task* (every task keeps
  its number of runs), pool, recompute the statistic. This is rliable's ``StratifiedBootstrap``;
  groups may have different sizes.

rliable itself was tried first and not used: its dependency ``arch`` 7.2 fails to import with
pandas 3 (``deprecate_kwarg() missing ... 'new_arg_name'``), and it pulls in pandas, scipy,
statsmodels and seaborn for these few lines of numpy.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

Statistic = Callable[..., np.ndarray]  # statistic(x, axis=-1) -> reduced array


def iqm(x, axis: int = -1) -> np.ndarray:
    """Interquartile mean along ``axis``: mean after cutting ``floor(n/4)`` values from each end."""
    x = np.sort(np.asarray(x, dtype=float), axis=axis)
    n = x.shape[axis]
    if n == 0:
        raise ValueError("IQM of an empty set of scores")
    cut = int(0.25 * n)
    return np.take(x, np.arange(cut, n - cut), axis=axis).mean(axis=axis)


def mean(x, axis: int = -1) -> np.ndarray:
    return np.asarray(x, dtype=float).mean(axis=axis)


def _percentiles(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    lo, hi = np.percentile(stats, [50.0 * (1.0 - confidence), 50.0 * (1.0 + confidence)])
    return float(lo), float(hi)


def _chunks(reps: int, size: int) -> list[int]:
    # Keep each resample matrix around 4M numbers whatever the number of runs.
    per = max(1, 4_000_000 // max(size, 1))
    return [min(per, reps - i) for i in range(0, reps, per)]


def bootstrap_ci(values, statistic: Statistic = mean, reps: int = 10_000, confidence: float = 0.95,
                 seed: int | np.random.Generator = 0) -> tuple[float, float, float]:
    """``(point, lo, hi)``: the statistic of ``values`` and its percentile-bootstrap CI."""
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ValueError("bootstrap of an empty set of values")
    rng = np.random.default_rng(seed)
    stats = np.concatenate([statistic(x[rng.integers(0, x.size, (r, x.size))], axis=1)
                            for r in _chunks(reps, x.size)])
    return (float(statistic(x, axis=-1)), *_percentiles(stats, confidence))


def stratified_bootstrap_ci(groups: Sequence, statistic: Statistic = iqm, reps: int = 10_000,
                            confidence: float = 0.95, seed: int | np.random.Generator = 0
                            ) -> tuple[float, float, float]:
    """``(point, lo, hi)`` of ``statistic`` over the pooled groups, resampling within each group.

    ``groups``: one array of run scores per task (sizes may differ).
    """
    arrays = [np.asarray(g, dtype=float).ravel() for g in groups]
    if not arrays or any(a.size == 0 for a in arrays):
        raise ValueError("stratified bootstrap needs one or more non-empty groups")
    rng = np.random.default_rng(seed)
    total = sum(a.size for a in arrays)
    stats = []
    for r in _chunks(reps, total):
        pooled = np.concatenate([a[rng.integers(0, a.size, (r, a.size))] for a in arrays], axis=1)
        stats.append(statistic(pooled, axis=1))
    point = float(statistic(np.concatenate(arrays), axis=-1))
    return (point, *_percentiles(np.concatenate(stats), confidence))


def normalise(scores, random_score: float, reference_score: float) -> np.ndarray:
    """``(score - random) / (reference - random)``: random policy = 0, reference = 1."""
    span = float(reference_score) - float(random_score)
    if not np.isfinite(span) or abs(span) < 1e-12:
        raise ValueError(f"reference score {reference_score} equals the random score {random_score}; "
                         "cannot normalise")
    return (np.asarray(scores, dtype=float) - float(random_score)) / span


__all__ = ["iqm", "mean", "bootstrap_ci", "stratified_bootstrap_ci", "normalise"]
