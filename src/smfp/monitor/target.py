"""Does the *task* need several actions? The critic's soft-greedy target at a state, for any run.

A policy's own modes say what it learnt, not what the task asks: a Gaussian (SAC) is one mode by
construction, whatever its critic has found. The target that soft policy improvement moves every
policy toward is ``pi*(a | s) ∝ exp(Q(s, a) / alpha)`` (Q: the min over the critic ensemble, alpha: the
run's temperature; actions in [-1, 1]^d). Its modes are counted with the same rule as a policy's
(``smfp.monitor.modes.count_modes``) on draws from it, so "the target has 2 modes, the policy 1" compares
like with like:

- ``d <= 2``: the target is evaluated at the centres of a grid of cells tiling the action box (``GRID``
  cells per side, a whole number of them in each histogram bin below: the midpoint rule, so that a bin's
  mass is its own cells' and no point on a bin edge is counted in one bin only) and ``DRAWS`` points are
  drawn from the cells by their probability (uniform within a cell);
- ``d > 2``: a grid cannot cover the box, so self-normalised importance sampling: ``CANDIDATES``
  proposals, half uniform on the box and half the policy's own samples, weighted by
  ``exp(Q / alpha) / q`` with ``q`` the proposals' mixture density (the policy's density from its
  semi-implicit estimate with 256 components); the effective sample size of the weights is reported,
  and ``DRAWS`` resampled points are counted.

The policy's distance to the target is the total variation between the two on a histogram of the box
(``TV_BINS`` bins per side) for ``d <= 2``, and the mean over action dimensions of the per-dimension
marginal TV above (stated in ``tv_kind``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from smfp.monitor.modes import DEFAULT_MIN_MASS, count_modes, sample_actions, union_pairs

GRID = {1: 400, 2: 120}  # cells per side: 10 and 6 per histogram bin
GRID_RULE = "cell centres"  # recorded beside TVs: before 2026-12-06 the grid ran edge to edge (1-D 401, 2-D 121
# points; biased TV on targets piled at the box edge: 0.07 for an exact sampler, tests/unit/test_target.py)
TV_BINS = {1: 40, 2: 20}
DRAWS = 2000
CANDIDATES = 20_000
POLICY_SAMPLES = 20_000
# `smfp inspect`'s verdict (and the demo's) counts two modes of the target as distinct only where Q_min dips between
# them by more than this many times the critic ensemble's disagreement (``merge_within_noise``). Chosen on 2026-12-07
# between what was measured: a converged SAC Pendulum run's bumps (seeds 0-2, 24 states) dip 0.1-1.9x the disagreement,
# MultiGoal's goals (7 runs, SAC and SMFP) 17.8x and more (docs/experiments.md).
VERDICT_NOISE_FACTOR = 4.0


@dataclass
class TargetReport:
    state: list[float]
    alpha: float
    method: str  # "grid" or "importance"
    modes: int
    masses: list[float]
    centers: list[list[float]]
    tv_to_target: float
    tv_kind: str
    policy_modes: int
    ess: float | None = None
    draws: np.ndarray = field(default=None, repr=False)  # (DRAWS, d) points drawn from the target
    policy_actions: np.ndarray = field(default=None, repr=False)
    grid_density: np.ndarray | None = field(default=None, repr=False)  # (G,) or (G, G) for the plot

    def to_json(self) -> dict:
        return {"state": self.state, "alpha": self.alpha, "method": self.method, "target_modes": self.modes,
                "target_masses": self.masses, "target_centers": self.centers, "tv_to_target": self.tv_to_target,
                "tv_kind": self.tv_kind, "policy_modes": self.policy_modes,
                **({"ess": self.ess} if self.ess is not None else {})}


def _ticks(d: int) -> np.ndarray:
    """The cell centres along one side of the box."""
    n = GRID[d]
    return -1.0 + (np.arange(n) + 0.5) * 2.0 / n


def _grid(d: int) -> np.ndarray:
    ticks = _ticks(d)
    if d == 1:
        return ticks[:, None]
    a, b = np.meshgrid(ticks, ticks, indexing="ij")
    return np.stack([a.ravel(), b.ravel()], axis=1)


@torch.no_grad()
def _q(critic, obs: np.ndarray, actions: np.ndarray, chunk: int = 8192) -> np.ndarray:
    o = torch.as_tensor(np.asarray(obs, dtype=np.float32)).reshape(1, -1)
    out = []
    for i in range(0, len(actions), chunk):
        a = torch.as_tensor(actions[i:i + chunk], dtype=torch.float32)
        out.append(critic.min_q(o.expand(len(a), -1), a))
    return torch.cat(out).double().numpy()


def _softmax(logits: np.ndarray) -> np.ndarray:
    w = np.exp(logits - logits.max())
    return w / w.sum()


def _histogram(points: np.ndarray, weights: np.ndarray | None, bins: int) -> np.ndarray:
    edges = [np.linspace(-1.0, 1.0, bins + 1)] * points.shape[1]
    h, _ = np.histogramdd(np.clip(points, -1.0, 1.0), bins=edges, weights=weights)
    return h / h.sum()


def _tv(p_points, p_weights, q_points, bins) -> float:
    return float(0.5 * np.abs(_histogram(p_points, p_weights, bins) - _histogram(q_points, None, bins)).sum())


@torch.no_grad()
def _policy_log_density(policy, obs: np.ndarray, actions: np.ndarray, components: int = 256) -> np.ndarray:
    """log pi(a | s) in [-1, 1]^d units: the semi-implicit estimate with ``components`` noises (exact for a Gaussian)."""
    from smfp.policies.distributions import semi_implicit_log_prob, tanh_log_det

    o = torch.as_tensor(np.asarray(obs, dtype=np.float32)).reshape(1, -1)
    m = components if policy.is_mixture else 1
    noise = policy.draw_noise(1, m, o)
    mean, log_std = policy.components(o, noise)  # (1, m, d), (1, 1 or m, d)
    out = []
    for i in range(0, len(actions), 1000):
        a = torch.as_tensor(np.clip(actions[i:i + 1000], -1 + 1e-6, 1 - 1e-6), dtype=torch.float32).unsqueeze(0)
        x = torch.atanh(a)  # (1, k, d) pre-squash points; the density in [-1, 1]^d adds the squash's log-det
        out.append((semi_implicit_log_prob(x, mean, log_std) - tanh_log_det(x).sum(-1)).reshape(-1))
    return torch.cat(out).double().numpy()


def assess_target(policy, critic, obs, alpha: float, rng: np.random.Generator, policy_actions: np.ndarray,
                  policy_modes: int, min_mass: float = DEFAULT_MIN_MASS, noise_factor: float = 0.0) -> TargetReport:
    """The critic's soft-greedy target at ``obs`` (see the module docstring) against the policy's samples; with
    ``noise_factor`` > 0 its modes are then merged where the critic cannot tell them apart (``merge_within_noise``)."""
    obs = np.asarray(obs, dtype=np.float32).reshape(-1)
    d = policy_actions.shape[1]
    ess = None
    grid_density = None
    if d <= 2:
        points = _grid(d)
        probs = _softmax(_q(critic, obs, points) / alpha)
        cell = 2.0 / GRID[d]
        pick = rng.choice(len(points), size=DRAWS, p=probs)
        draws = points[pick] + rng.uniform(-cell / 2, cell / 2, (DRAWS, d))
        tv = _tv(points, probs, policy_actions, TV_BINS[d])
        method, tv_kind = "grid", f"histogram TV, {TV_BINS[d]} bins per side"
        grid_density = probs.reshape((GRID[d],) * d)
    else:
        half = CANDIDATES // 2
        uniform = rng.uniform(-1.0, 1.0, (half, d))
        own = policy_actions[rng.choice(len(policy_actions), size=half)]
        cand = np.concatenate([uniform, own])
        log_q = np.logaddexp(np.log(0.5) - d * math.log(2.0), np.log(0.5) + _policy_log_density(policy, obs, cand))
        w = _softmax(_q(critic, obs, cand) / alpha - log_q)
        ess = float(1.0 / np.sum(w ** 2))
        draws = cand[rng.choice(len(cand), size=DRAWS, p=w)]
        tv = float(np.mean([_tv(cand[:, [k]], w, policy_actions[:, [k]], TV_BINS[1]) for k in range(d)]))
        method, tv_kind = "importance", f"mean of the {d} per-dimension marginal TVs, {TV_BINS[1]} bins"
    res = count_modes(draws, min_mass=min_mass)
    centers, masses = res.centers, res.masses
    if noise_factor > 0 and res.count > 1:
        centers, masses = merge_within_noise(critic, obs, centers, masses, noise_factor)
    return TargetReport(state=[float(v) for v in obs], alpha=float(alpha), method=method, modes=len(masses),
                        masses=[round(float(m), 4) for m in masses],
                        centers=[[round(float(v), 4) for v in c] for c in centers], tv_to_target=round(tv, 4),
                        tv_kind=tv_kind, policy_modes=policy_modes, ess=None if ess is None else round(ess, 1),
                        draws=draws, policy_actions=policy_actions, grid_density=grid_density)


def assess_targets(policy, critic, states, alpha: float, policy_modes: list[int], seed: int = 0,
                   min_mass: float = DEFAULT_MIN_MASS, noise_factor: float = 0.0) -> list[TargetReport]:
    """``assess_target`` at each of ``states`` (``smfp inspect``'s assessment), the policy's own samples drawn there."""
    rng = np.random.default_rng(seed)
    return [assess_target(policy, critic, s, alpha, rng, sample_actions(policy, s, POLICY_SAMPLES)[0], k, min_mass,
                          noise_factor)
            for s, k in zip(states, policy_modes)]


def merge_within_noise(critic, obs, centers: np.ndarray, masses: np.ndarray, factor: float,
                       points: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """The target's modes (``centers`` heaviest first, their ``masses``) with every pair merged whose dip is within the
    critic's noise: along the segment joining the two (the heavier groups' centres), the drop of ``Q_min`` below the
    lower of its two ends is at most ``factor`` times the ensemble's mean disagreement ``max_k Q_k - min_k Q_k`` there.
    A small temperature turns wiggles of a flat critic into modes of ``exp(Q / alpha)`` (a converged SAC Pendulum run:
    dips 0.1-1.9x the disagreement; MultiGoal's goals: 17-75x; docs/experiments.md, 2026-12-07). Returns the merged
    groups' heaviest centres and summed masses, heaviest first."""
    centers = np.asarray(centers, dtype=np.float64)
    o = torch.as_tensor(np.asarray(obs, dtype=np.float32)).reshape(1, -1).expand(points, -1)
    ts = np.linspace(0.0, 1.0, points)[:, None]

    def joined(ri: int, rj: int) -> bool:
        seg = torch.as_tensor(centers[ri] + ts * (centers[rj] - centers[ri]), dtype=torch.float32)
        with torch.no_grad():
            qs = critic(o, seg).reshape(-1, points).double().numpy()  # (num_q, points)
        q_min = qs.min(0)
        return min(q_min[0], q_min[-1]) - q_min.min() <= factor * float((qs.max(0) - qs.min(0)).mean())

    roots = union_pairs(len(centers), joined)
    groups: dict[int, float] = {}
    for r, m in zip(roots, masses):
        groups[int(r)] = groups.get(int(r), 0.0) + float(m)
    order = sorted(groups, key=lambda r: -groups[r])
    return centers[order], np.array([groups[r] for r in order])


def policy_against_target(reports: list[TargetReport]) -> str:
    """How the policy's mode counts compare with its critic's target's at the same states: where the policy has
    modes the target lacks (its own, not the task's), where both have several, where the target has several and
    the policy one."""
    own = sum(r.policy_modes > 1 and r.modes == 1 for r in reports)
    both = [r for r in reports if r.policy_modes > 1 and r.modes > 1]
    missed = sum(r.policy_modes == 1 and r.modes > 1 for r in reports)
    parts = []
    if own:
        parts.append(f"at {own} of them the critic's target has one mode: there the extra modes are the policy's "
                     "own, not the task's")
    if both:
        tv = float(np.mean([r.tv_to_target for r in both]))
        parts.append(f"at {len(both)} the target has several too (the policy's TV to it {tv:.2f})")
    if missed:
        parts.append(f"at {missed} state(s) the target has several modes and the policy one: it follows one of them")
    return "; ".join(parts) if parts else "so is the critic's target there"


def target_verdict(reports: list[TargetReport]) -> str:
    if not reports:
        return "no states probed"
    multi = [r for r in reports if r.modes > 1]
    if not multi:
        return f"the critic's target is unimodal at all {len(reports)} probed states: a Gaussian policy will do"
    ks = sorted({r.modes for r in multi})
    k_text = f"{ks[0]}" if len(ks) == 1 else f"{ks[0]}-{ks[-1]}"
    return (f"the critic's target has {k_text} modes at {100.0 * len(multi) / len(reports):.0f}% of probed states "
            f"({len(multi)}/{len(reports)}): a Gaussian cannot follow it; try --algo smfp --multimodal")


def plot_target(report: TargetReport, path, title: str = ""):
    """The target (grid density, or the resampled draws above 2-D) with the policy's samples over it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    pol = report.policy_actions[:2000]
    d = pol.shape[1]
    if report.grid_density is not None and d == 1:
        ax.plot(_ticks(1), report.grid_density / (2.0 / GRID[1]), color="k", lw=1.2, label="critic target")
        ax.hist(pol[:, 0], bins=TV_BINS[1], range=(-1, 1), density=True, alpha=0.4, label="policy samples")
        ax.set_xlabel("action")
    elif report.grid_density is not None:
        ax.imshow(report.grid_density.T, origin="lower", extent=(-1, 1, -1, 1), cmap="Greys", aspect="auto")
        ax.scatter(pol[:, 0], pol[:, 1], s=2, alpha=0.3, color="C1", label="policy samples")
        ax.set_xlabel("action 1")
        ax.set_ylabel("action 2")
    else:
        ax.scatter(report.draws[:, 0], report.draws[:, 1], s=2, alpha=0.3, color="k", label="target draws")
        ax.scatter(pol[:, 0], pol[:, 1], s=2, alpha=0.3, color="C1", label="policy samples")
        ax.set_xlabel("action 1 (of %d)" % d)
        ax.set_ylabel("action 2")
    ax.set_title(title or f"target {report.modes} mode(s), policy {report.policy_modes}; TV {report.tv_to_target:.2f}",
                 fontsize=8)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


__all__ = ["VERDICT_NOISE_FACTOR", "TargetReport", "assess_target", "assess_targets", "merge_within_noise",
           "plot_target", "target_verdict"]
