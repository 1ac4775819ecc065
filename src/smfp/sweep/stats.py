"""Aggregate statistics for few-seed RL results with ``rliable`` (Agarwal et al. 2021, "Deep RL at
the edge of the statistical precipice"), the library the field uses for them.

- **IQM and mean** of normalised scores across tasks, with stratified-bootstrap CIs (runs
  resampled within each task): ``rliable.library.get_interval_estimates`` with
  ``rliable.metrics.aggregate_iqm`` / ``aggregate_mean``.
- **Probability of improvement** of an algorithm over another, with a CI:
  ``rliable.metrics.probability_of_improvement`` through ``get_interval_estimates``.
- **Performance profiles** (score distributions, with CI bands):
  ``rliable.library.create_performance_profile``; plotted by ``rliable.plot_utils``.

Scores are ``{task: 1-D array of run scores}``. When every task has the same number of runs they
are passed to rliable as its ``(num_runs x num_tasks)`` matrix, exactly as its documentation
does. When the numbers of runs differ (e.g. a sweep that is still running), rliable's list form
is used (``StratifiedIndependentBootstrap``: one ``(n_task x 1)`` array per task, each resampled
on its own), with the same estimators: IQM of the pooled runs, mean of the per-task means,
probability of improvement and score distribution averaged over tasks.

Reproducibility: rliable 1.2.0's bootstraps draw their resampling indices from NumPy's *global*
generator (``np.random.choice`` in ``StratifiedBootstrap.update_indices``); the ``random_state``
argument it forwards to ``arch`` is not used by those draws (checked: two different
``random_state`` values give the same CI, one global seed gives the same CI every time). Every
estimate below therefore runs inside :func:`seeded`, which seeds the global generator with
``seed`` (and passes ``random_state=RandomState(seed)`` as rliable's API asks), then restores the
caller's global state.

rliable and its dependencies (arch, pandas, scipy, statsmodels, seaborn) are imported only when
an estimate is computed; they come with the ``sweep`` extra, which pins the versions that import
together (docs/sweeps.md).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Mapping, Sequence

import numpy as np


class RliableMissing(ImportError):
    """rliable (or one of its dependencies) cannot be imported."""


def _rliable():
    """``(library, metrics)`` of rliable, or :class:`RliableMissing` saying how to install them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from rliable import library, metrics
    except (ImportError, TypeError) as exc:  # TypeError: arch 7 under pandas 3 (deprecate_kwarg)
        raise RliableMissing(f"rliable cannot be imported ({type(exc).__name__}: {exc}); install the "
                             "sweep extra, which pins versions that work together: "
                             "pip install -e \".[sweep]\"") from None
    return library, metrics


@contextlib.contextmanager
def seeded(seed: int):
    """Seed NumPy's global generator (what rliable 1.2.0 resamples with) and restore it afterwards.

    Yields the ``RandomState`` to pass as rliable's ``random_state``. arch's FutureWarning about
    that argument is silenced: rliable 1.2.0 has no other way to be given one.
    """
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*random_state.*", category=FutureWarning)
            yield np.random.RandomState(seed)
    finally:
        np.random.set_state(saved)


def _columns(scores: Mapping[str, Sequence[float]], tasks: Sequence[str]) -> list[np.ndarray]:
    cols = [np.asarray(scores[t], dtype=float).reshape(-1, 1) for t in tasks]
    if not cols or any(c.size == 0 for c in cols):
        raise ValueError("rliable estimates need one or more tasks, each with one or more runs")
    return cols


def score_matrix(scores: Mapping[str, Sequence[float]], tasks: Sequence[str]) -> np.ndarray | None:
    """rliable's ``(num_runs x num_tasks)`` matrix of ``tasks``, or None if their numbers of runs differ."""
    cols = _columns(scores, tasks)
    return np.hstack(cols) if len({c.shape[0] for c in cols}) == 1 else None


def _interval(library, data, func, reps: int, confidence: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    with seeded(seed) as rs:
        point, ci = library.get_interval_estimates({"x": data}, func, reps=reps,
                                                   confidence_interval_size=confidence, random_state=rs)
    return np.asarray(point["x"], dtype=float), np.asarray(ci["x"], dtype=float)


def iqm_and_mean(scores: Mapping[str, Sequence[float]], reps: int = 50_000, confidence: float = 0.95,
                 seed: int = 0) -> dict:
    """``{"iqm": (point, lo, hi), "mean": (point, lo, hi)}`` over the runs of all tasks of ``scores``.

    ``rliable.metrics.aggregate_iqm`` and ``aggregate_mean``, stratified-bootstrap percentile CIs
    from ``rliable.library.get_interval_estimates`` (one bootstrap for both, as rliable's examples do).
    """
    library, metrics = _rliable()
    tasks = list(scores)
    matrix = score_matrix(scores, tasks)
    if matrix is not None:
        data = matrix
        func = lambda x: np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x)])  # noqa: E731
    else:
        data = _columns(scores, tasks)
        func = lambda *c: np.array([metrics.aggregate_iqm(np.vstack(c)),  # noqa: E731
                                    np.mean([metrics.aggregate_mean(x) for x in c])])
    point, ci = _interval(library, data, func, reps, confidence, seed)
    return {name: (float(point[i]), float(ci[0, i]), float(ci[1, i])) for i, name in enumerate(("iqm", "mean"))}


def probability_of_improvement(x: Mapping[str, Sequence[float]], y: Mapping[str, Sequence[float]],
                               reps: int = 2000, confidence: float = 0.95, seed: int = 0
                               ) -> tuple[float, float, float]:
    """``(point, lo, hi)`` of P(X > Y) averaged over the tasks both ran (``rliable.metrics.
    probability_of_improvement``), with rliable's stratified independent-bootstrap CI."""
    library, metrics = _rliable()
    tasks = [t for t in x if t in y]
    mx, my = score_matrix(x, tasks), score_matrix(y, tasks)
    if mx is not None and my is not None:
        data, func = [mx, my], metrics.probability_of_improvement
    else:
        k = len(tasks)
        data = _columns(x, tasks) + _columns(y, tasks)
        func = lambda *c: np.mean([metrics.probability_of_improvement(c[i], c[k + i])  # noqa: E731
                                   for i in range(k)])
    point, ci = _interval(library, data, func, reps, confidence, seed)
    lo, hi = ci.ravel()  # (2, 1) for a scalar estimate
    return float(point), float(lo), float(hi)


def performance_profile(scores: Mapping[str, Sequence[float]], tau: Sequence[float], reps: int = 2000,
                        confidence: float = 0.95, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fraction, lo, hi)`` at every threshold of ``tau``: the score distribution (fraction of runs
    with a normalised score above tau), ``rliable.library.create_performance_profile``, with its
    stratified-bootstrap CI band."""
    library, _ = _rliable()
    tasks = list(scores)
    tau = np.asarray(tau, dtype=float)
    matrix = score_matrix(scores, tasks)
    with seeded(seed) as rs:
        if matrix is not None:
            prof, ci = library.create_performance_profile({"x": matrix}, tau, reps=reps,
                                                          confidence_interval_size=confidence)
        else:  # create_performance_profile takes matrices only: same estimator, per task, averaged
            func = lambda *c: np.mean([library.score_distributions(x, tau) for x in c], axis=0)  # noqa: E731
            prof, ci = library.get_interval_estimates({"x": _columns(scores, tasks)}, func, reps=reps,
                                                      confidence_interval_size=confidence, random_state=rs)
    ci = np.asarray(ci["x"], dtype=float)
    return np.asarray(prof["x"], dtype=float), ci[0], ci[1]


def bootstrap_ci(values, reps: int = 10_000, confidence: float = 0.95,
                 seed: int | np.random.Generator = 0) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the mean of ``values`` and its percentile-bootstrap CI.

    Kept by hand for the per-task CI over seeds (and the learning curves' bands): rliable has no
    per-task function (its estimators are across tasks), and its bootstrap calls the statistic
    once per resample in Python, too slow for one CI per task, algorithm and evaluation step.
    """
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ValueError("bootstrap of an empty set of values")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    per = max(1, 4_000_000 // x.size)  # keep each resample matrix around 4M numbers
    means = np.concatenate([x[rng.integers(0, x.size, (min(per, reps - i), x.size))].mean(axis=1)
                            for i in range(0, reps, per)])
    lo, hi = np.percentile(means, [50.0 * (1.0 - confidence), 50.0 * (1.0 + confidence)])
    return float(x.mean()), float(lo), float(hi)


def normalise(scores, random_score: float, reference_score: float) -> np.ndarray:
    """``(score - random) / (reference - random)``: random policy = 0, reference = 1."""
    span = float(reference_score) - float(random_score)
    if not np.isfinite(span) or abs(span) < 1e-12:
        raise ValueError(f"reference score {reference_score} equals the random score {random_score}; "
                         "cannot normalise")
    return (np.asarray(scores, dtype=float) - float(random_score)) / span


__all__ = ["RliableMissing", "seeded", "score_matrix", "iqm_and_mean", "probability_of_improvement",
           "performance_profile", "bootstrap_ci", "normalise"]
