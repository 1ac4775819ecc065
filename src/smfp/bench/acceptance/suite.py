"""``smfp bench bandit``: the fixed-Q acceptance suite of the actor update.

No critic and no environment: one state, a known ``Q(a)`` on ``[-1, 1]^d`` and a fixed
temperature, so the update's optimum is known (``exp(Q / alpha)``, and with mirror descent the
same target approached by anchor steps). The policy and the update are *exactly* what
``smfp train`` builds: a ``Learner`` from the library's ``TrainConfig`` defaults for the algorithm,
whose ``actor_step`` runs against the known Q instead of the critic (the temperature is held
fixed at the case's alpha). For every (target, policy, seed) the suite reports the
total-variation distance of 50 000 sampled actions to the target on a grid, the share of actions
near each peak and the target's own shares.

Pass (SMFP): TV <= 0.15 and every share within 0.07 of the target's share. The 6-D case (two modes
along the first axis, one in each of the other five; ``Q`` a sum over axes, so ``exp(Q/alpha)`` is a
product of per-axis targets) is judged per axis: the shares along the first axis within 0.07 of the
target's, and the TV of every other axis's marginal (1-D grid of 40 bins) <= 0.15; its ``tv`` is the
largest of those five.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from smfp.bench.acceptance.bandit import (KnownQ, _max_of_bumps, bandit_obs, boltzmann_bins, histogram, peak_shares,
                               sample_actions, total_variation)
from smfp.config import TrainConfig
from smfp.precision import matmul_precision
from smfp.update import Learner

TV_MAX = 0.15
SHARE_TOL = 0.07
SHARE_RADIUS = 0.25
SAMPLES = 50_000
BINS = {1: 40, 2: 20}  # bins per side: 2-D keeps the sampling noise of the histogram small (~0.03 TV)


def _bumps(name: str, centers: Sequence[Sequence[float]], width: float, heights: Sequence[float]) -> KnownQ:
    centers = tuple(tuple(float(v) for v in c) for c in centers)
    fns = [_max_of_bumps((c,), width, h) for c, h in zip(centers, heights)]

    def fn(a: torch.Tensor) -> torch.Tensor:
        return torch.stack([f(a) for f in fns], dim=0).max(dim=0).values
    return KnownQ(name, len(centers[0]), fn, centers)


@dataclass(frozen=True)
class SeparableQ(KnownQ):
    """``Q(a) = sum_i Q_i(a_i)``: one 1-D ``KnownQ`` per axis (``exp(Q/alpha)`` is their product)."""

    axes: tuple[KnownQ, ...] = ()


def separable(name: str, axes: Sequence[KnownQ]) -> SeparableQ:
    axes = tuple(axes)

    def fn(a: torch.Tensor) -> torch.Tensor:
        return sum(q.fn(a[:, i:i + 1]) for i, q in enumerate(axes))
    return SeparableQ(name, len(axes), fn, axes[0].peaks, axes)


def two_modes_6d(alpha: float) -> SeparableQ:
    """6-D, MuJoCo-sized: two equal bumps along the first axis (+-0.6, w 0.2), one bump on each of the other five."""
    first = _bumps("two equal bumps", ((-0.6,), (0.6,)), 0.2, (2.0, 2.0))
    rest = [_bumps("unimodal", ((c,),), 0.3, (2.0,)) for c in (0.3, -0.3, 0.0, 0.5, -0.5)]
    return separable("6-D two modes x unimodal", [first, *rest])


def target_shares(q: KnownQ, alpha: float, radius: float = SHARE_RADIUS, grid: int = 400) -> list[float]:
    """Mass of ``exp(Q/alpha)`` within ``radius`` of each peak (midpoint rule)."""
    g = -1.0 + (torch.arange(grid, dtype=torch.float64) + 0.5) * 2.0 / grid
    pts = torch.cartesian_prod(*([g] * q.dim)).reshape(-1, q.dim)
    logits = q.fn(pts) / alpha
    w = torch.exp(logits - logits.max())
    w = w / w.sum()
    return [float(w[(pts - torch.as_tensor(p, dtype=pts.dtype)).norm(dim=-1) <= radius].sum()) for p in q.peaks]


def unequal_pair(alpha: float, ratio: float = 2.0, peak: float = 0.5, width: float = 0.15,
                 height: float = 2.0) -> KnownQ:
    """Two bumps at ``-peak`` / ``+peak`` whose target masses are ``ratio : 1`` at this alpha (bisection)."""
    lo, hi = 0.0, height
    for _ in range(50):
        cut = 0.5 * (lo + hi)
        q = _bumps("tmp", ((-peak,), (peak,)), width, (height, height - cut))
        s = target_shares(q, alpha)
        lo, hi = (cut, hi) if s[0] / max(s[1], 1e-12) < ratio else (lo, cut)
    return _bumps(f"unequal {ratio:g}:1", ((-peak,), (peak,)), width, (height, height - 0.5 * (lo + hi)))


@dataclass(frozen=True)
class Case:
    target: str
    alpha: float
    make: Callable[[float], KnownQ]
    fast: bool = False  # also a unit test


def _cases() -> list[Case]:
    two = lambda a: _bumps("two equal bumps", ((-0.6,), (0.6,)), 0.2, (2.0, 2.0))  # noqa: E731
    five = lambda a: _bumps("five peaks (2-D)", ((-0.6, -0.6), (-0.6, 0.6), (0.6, -0.6), (0.6, 0.6), (0.0, 0.0)),  # noqa: E731
                            0.15, (2.0,) * 5)
    one = lambda a: _bumps("unimodal", ((0.3,),), 0.3, (2.0,))  # noqa: E731
    cases = []
    for alpha, sharp in ((0.2, True), (0.6, False)):
        cases += [Case("two equal bumps", alpha, two, fast=sharp), Case("unequal 2:1", alpha, unequal_pair),
                  Case("five peaks (2-D)", alpha, five), Case("unimodal", alpha, one, fast=sharp)]
    three = lambda a: unequal_pair(a, ratio=3.0)  # noqa: E731
    cases += [Case("unequal 3:1", 0.2, three), Case("6-D two modes", 0.2, two_modes_6d)]
    return cases


CASES = _cases()


def bandit_learner(algo: str, dim: int, alpha: float, seed: int,
                   overrides: Optional[Callable[[TrainConfig], None]] = None) -> Learner:
    """The learner ``smfp train --algo ALGO`` builds, for a one-state task with ``dim`` actions, at a fixed alpha."""
    cfg = TrainConfig(algo=algo, run_dir="unused")
    cfg.update = dataclasses.replace(cfg.update, alpha=alpha, autotune_alpha=False)
    if overrides is not None:
        overrides(cfg)
    torch.manual_seed(seed)
    return Learner(cfg.resolved(), obs_dim=1, act_dim=dim)


def run_case(case: Case, algo: str, seed: int, steps: int = 5000,
             overrides: Optional[Callable[[TrainConfig], None]] = None) -> dict:
    q = case.make(case.alpha)
    learner = bandit_learner(algo, q.dim, case.alpha, seed, overrides)
    obs = bandit_obs(learner.cfg.update.batch_size, 1)
    start = time.perf_counter()
    with matmul_precision(learner.matmul_dtype):  # the precision training's updates run in (--precision)
        for _ in range(steps):
            if learner.actor_step(obs, q) is None:
                raise RuntimeError(f"non-finite actor update on {case.target} (seed {seed})")
    seconds = time.perf_counter() - start
    torch.manual_seed(10_000 + seed)
    actions = sample_actions(learner.policy, SAMPLES, "sample")
    row = score(q, case.alpha, actions)
    return {"target": case.target, "policy": learner.policy.kind, "algo": algo, "alpha": case.alpha, "seed": seed,
            **row, "steps": steps, "seconds": round(seconds, 2)}


def score(q: KnownQ, alpha: float, actions: torch.Tensor) -> dict:
    """TV, peak shares, target shares and the verdict of ``actions`` (N, d) against ``exp(Q/alpha)``.

    A ``SeparableQ`` is judged per axis: shares along the first axis, TV of each other axis's marginal
    (``tv``: the largest; ``tv_axes``: all of them, the first axis's included, for the record).
    """
    if isinstance(q, SeparableQ):
        bins = BINS[1]
        tvs = [total_variation(histogram(actions[:, i:i + 1], bins), boltzmann_bins(axis, alpha, bins))
               for i, axis in enumerate(q.axes)]
        tv = max(tvs[1:])
        shares = peak_shares(actions[:, :1], q.axes[0].peaks, SHARE_RADIUS)
        want = target_shares(q.axes[0], alpha)
        extra = {"tv_axes": [round(t, 4) for t in tvs]}
    else:
        bins = BINS[q.dim]
        tv = total_variation(histogram(actions, bins), boltzmann_bins(q, alpha, bins))
        shares = peak_shares(actions, q.peaks, SHARE_RADIUS)
        want = target_shares(q, alpha)
        extra = {}
    ok = tv <= TV_MAX and all(abs(s - w) <= SHARE_TOL for s, w in zip(shares, want))
    return {"tv": round(tv, 4), "shares": [round(s, 4) for s in shares],
            "target_shares": [round(w, 4) for w in want], "pass": ok, **extra}


def run_suite(seeds: Sequence[int] = (0, 1, 2), algos: Sequence[str] = ("smfp", "sac"), steps: int = 5000,
              fast_only: bool = False, progress: Optional[Callable[[dict], None]] = None,
              overrides: Optional[Callable[[TrainConfig], None]] = None,
              cases: Optional[Sequence[str]] = None) -> dict:
    """Every case (or those whose target is in ``cases``, case-insensitive) x algo x seed."""
    results = []
    wanted = None if cases is None else {c.lower() for c in cases}
    for case in CASES:
        if fast_only and not case.fast or wanted is not None and case.target.lower() not in wanted:
            continue
        for algo in algos:
            for seed in seeds:
                row = run_case(case, algo, seed, steps, overrides)
                results.append(row)
                if progress is not None:
                    progress(row)
    smfp_rows = [r for r in results if r["policy"] == "smfp"]
    passed = {algo: [sum(r["pass"] for r in results if r["algo"] == algo), sum(r["algo"] == algo for r in results)]
              for algo in algos}
    return {"results": results, "steps": steps, "tv_max": TV_MAX, "share_tol": SHARE_TOL,
            "share_radius": SHARE_RADIUS, "samples": SAMPLES, "eval_mode": "sample", "passed": passed,
            "smfp_pass": bool(smfp_rows) and all(r["pass"] for r in smfp_rows)}


def format_row(r: dict) -> str:
    return (f"{r['target']:18s} alpha {r['alpha']:<4g} {r['policy']:8s} seed {r['seed']}: TV {r['tv']:.3f}  shares "
            f"{' '.join(f'{s:.2f}' for s in r['shares'])}  (target {' '.join(f'{s:.2f}' for s in r['target_shares'])})"
            f"  {'pass' if r['pass'] else 'FAIL'}  [{r['seconds']:.0f}s]")


__all__ = ["CASES", "Case", "SeparableQ", "TV_MAX", "SHARE_TOL", "bandit_learner", "format_row", "run_case",
           "run_suite", "score", "separable", "target_shares", "two_modes_6d", "unequal_pair"]
