"""One-state "bandit" harness: optimise a policy's actor loss alone against a known Q.

There is no critic and no environment: a single state, a fixed ``Q(a)`` on ``[-1, 1]^d`` and the
library's own entropic mirror-descent actor loss (``smfp.update.losses.actor_loss``, called with
``q_fn``). With ``lambda = 0`` and a fixed ``alpha`` the optimum of that loss is the soft-improvement
target ``exp(Q / alpha)`` (normalised on the box); with an anchor ``pi_k`` it is
``pi_k^(lambda/(alpha+lambda)) exp(Q/(alpha+lambda))``. This makes the update rule testable against
known answers: the harness offers known Q functions, ``optimise`` and measures (total-variation
distance of the action histogram to ``exp(Q/alpha)``, share of actions near each peak, KL to an anchor).

Densities are over the bounded action ``a = tanh(x)`` (the policies' ``log_prob`` includes the tanh
log-det), so ``exp(Q/alpha)`` is a density w.r.t. Lebesgue measure on ``[-1, 1]^d``.

Settings used by the tests (``tests/behaviour/test_bandit.py``, ``tests/behaviour/test_mirror_descent.py``): SMFP MLP 128-128
SiLU, the double-well Q (``double_well_q``, depth 10) at alpha = 0.5, 256 samples per step as 4 groups of
M = 64, Adam 1e-3 decayed linearly to 1e-4 over 2000 steps (fewer steps and a higher lr than the prototype
of the project's starting design: 6000 steps at 3e-4, 32 groups of M = 8). With the prototype's Gaussian-bump Q
(``bimodal_q``) and M = 8 the library's SMFP often stalls with a wide output noise sigma and a contracted
map, a histogram close to uniform (measured: TV 0.45-0.46, 25-28% of actions per peak, seeds 0-1).
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import torch

from smfp.policies import GaussianPolicy, Policy
from smfp.policies.distributions import gaussian_kl
from smfp.update.losses import actor_loss

QFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --- known Q functions ----------------------------------------------------------------------------
@dataclass(frozen=True)
class KnownQ:
    """A fixed ``Q(a)`` on ``[-1, 1]^dim`` usable as the ``q_fn(obs, act) -> (N,)`` of ``actor_loss``."""

    name: str
    dim: int
    fn: Callable[[torch.Tensor], torch.Tensor]  # actions (N, dim) -> (N,)
    peaks: tuple[tuple[float, ...], ...] = ()

    def __call__(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.fn(act)


def _bump(a: torch.Tensor, center: Sequence[float], width: float) -> torch.Tensor:
    c = torch.as_tensor(center, dtype=a.dtype)
    return torch.exp(-(a - c).pow(2).sum(-1) / (2.0 * width ** 2))


def _max_of_bumps(centers: Sequence[Sequence[float]], width: float, height: float):
    def fn(a: torch.Tensor) -> torch.Tensor:
        return height * torch.stack([_bump(a, c, width) for c in centers], dim=0).max(dim=0).values
    return fn


def bimodal_q(peak: float = 0.6, width: float = 0.2, height: float = 2.0) -> KnownQ:
    """1-D: ``height * max(bump(a - peak), bump(a + peak))``, Gaussian bumps of std ``width``."""
    centers = ((-peak,), (peak,))
    return KnownQ(f"bimodal(+-{peak}, w={width}, h={height})", 1, _max_of_bumps(centers, width, height), centers)


def double_well_q(peak: float = 0.6, depth: float = 10.0, dim: int = 1) -> KnownQ:
    """``-depth * sum_i (a_i^2 - peak^2)^2``: smooth equal peaks at ``+-peak`` per coordinate, no flat background.

    ``dim = 1``: two peaks at ``+-peak``; ``dim = 2``: four at the corners ``(+-peak, +-peak)``.
    ``exp(Q/alpha)`` is a product over coordinates of near-Gaussian two-peak densities (peak std
    about ``sqrt(alpha / (8 depth peak^2))``, valley ``depth peak^4 / alpha`` nats below the peaks).
    """
    def fn(a: torch.Tensor) -> torch.Tensor:
        return -depth * (a.pow(2) - peak ** 2).pow(2).sum(-1)
    centers = tuple(itertools.product((-peak, peak), repeat=dim))
    return KnownQ(f"double_well(+-{peak}, depth={depth}, dim={dim})", dim, fn, centers)


def corners_q(peak: float = 0.6, width: float = 0.2, height: float = 2.0) -> KnownQ:
    """2-D: four equal bumps at ``(+-peak, +-peak)``."""
    centers = tuple(itertools.product((-peak, peak), repeat=2))
    return KnownQ(f"corners(+-{peak}, w={width}, h={height})", 2, _max_of_bumps(centers, width, height), centers)


def unimodal_q(center: float = 0.3, width: float = 0.3, height: float = 2.0, dim: int = 1) -> KnownQ:
    """One bump at ``(center, ..., center)``."""
    c = (center,) * dim
    return KnownQ(f"unimodal({center}, w={width}, h={height})", dim, _max_of_bumps((c,), width, height), (c,))


def quadratic_q(center: float = 0.0, curvature: float = 1.0, dim: int = 1) -> KnownQ:
    """``-curvature / 2 * ||a - center||^2`` on the bounded action."""
    def fn(a: torch.Tensor) -> torch.Tensor:
        return -0.5 * curvature * (a - center).pow(2).sum(-1)
    return KnownQ(f"quadratic({center}, c={curvature})", dim, fn, ((center,) * dim,))


def presquash_quadratic_q(center: float, curvature: float, alpha: float, dim: int = 1) -> KnownQ:
    """A quadratic in the PRE-squash variable ``x = atanh(a)``, made exactly Gaussian-solvable.

    ``Q(a) = -curvature/2 * ||atanh(a) - center||^2 - alpha * sum log(1 - a^2)``. The second term
    cancels the tanh log-det inside ``alpha * log pi(a)``, so the actor loss per sample becomes
    ``alpha log p(x) + curvature/2 ||x - center||^2`` (+ lambda KL, which is invariant under the
    squash): the mirror-descent target is then exactly Gaussian in ``x`` (``md_gaussian_target``).
    """
    def fn(a: torch.Tensor) -> torch.Tensor:
        a = a.clamp(-1.0 + 1e-12, 1.0 - 1e-12) if a.dtype == torch.float64 else a.clamp(-1.0 + 1e-6, 1.0 - 1e-6)
        x = torch.atanh(a)
        return (-0.5 * curvature * (x - center).pow(2) - alpha * torch.log1p(-a.pow(2))).sum(-1)
    return KnownQ(f"presquash_quadratic({center}, c={curvature}, alpha={alpha})", dim, fn,
                  ((math.tanh(center),) * dim,))


def md_gaussian_target(anchor_mean: float, anchor_std: float, center: float, curvature: float, alpha: float,
                       md_lambda: float) -> tuple[float, float]:
    """Mean and std (pre-squash) of ``pi_k^(lambda/(alpha+lambda)) exp(Q_x/(alpha+lambda))``.

    ``pi_k = N(anchor_mean, anchor_std^2)`` and ``Q_x(x) = -curvature/2 (x - center)^2``; a product of
    Gaussians: precisions add (``beta / s_k^2 + c / (alpha+lambda)``, ``beta = lambda/(alpha+lambda)``)
    and the mean is the precision-weighted average.
    """
    temp = alpha + md_lambda
    beta = md_lambda / temp
    prec_k, prec_q = beta / anchor_std ** 2, curvature / temp
    prec = prec_k + prec_q
    return (prec_k * anchor_mean + prec_q * center) / prec, prec ** -0.5


def set_constant_gaussian(policy: GaussianPolicy, mean: Sequence[float] | float,
                          std: Sequence[float] | float) -> GaussianPolicy:
    """Make a Gaussian policy output ``N(mean, std^2)`` (pre-squash) for every state.

    Zeroes the last layer's weights and sets its bias (inverting the log-std bound).
    """
    d = policy.act_dim
    mean_t = torch.as_tensor(mean, dtype=torch.float64).expand(d)
    log_std = torch.log(torch.as_tensor(std, dtype=torch.float64)).expand(d)
    lo, hi = policy.log_std_min, policy.log_std_max
    u = 2.0 * (log_std - lo) / (hi - lo) - 1.0
    if not bool(((u > -1) & (u < 1)).all()):
        raise ValueError(f"std {std} is outside the policy's log-std bounds [{lo}, {hi}]")
    raw = log_std if policy.log_std_squash == "clip" else torch.atanh(u)
    last = policy.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.cat([mean_t, raw]).to(last.bias.dtype))
    return policy


# --- optimisation ---------------------------------------------------------------------------------
def bandit_obs(n: int, obs_dim: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``n`` copies of the single state (all zeros)."""
    return torch.zeros(n, obs_dim, dtype=dtype)


@dataclass
class BanditResult:
    steps: int
    seconds: float
    anchor: Optional[Policy]
    loss: list[float] = field(default_factory=list)  # every log_every steps
    kl: list[float] = field(default_factory=list)  # shared-noise KL to the anchor, same steps


def optimise(policy: Policy, q_fn: QFn, alpha: float, md_lambda: float = 0.0,
             anchor: Union[Policy, str, None] = "copy", steps: int = 3000, components: int = 8, states: int = 32,
             lr: float = 3e-4, anchor_period: int = 100, final_lr_fraction: float = 1.0, log_every: int = 100,
             meanflow_coef: float = 0.0, generator_seed: Optional[int] = None) -> BanditResult:
    """Minimise ``actor_loss`` at one state against the fixed ``q_fn``, in place.

    Each step draws ``states`` groups (copies of the one state) of ``components`` actions (M; a
    Gaussian policy uses M = 1, so pass ``states`` = its batch). ``anchor``: ``"copy"`` freezes a copy
    of ``policy`` as it is now; a ``Policy`` is used as given; ``None`` drops the KL term (only with
    ``md_lambda = 0``). ``anchor_period > 0`` copies the policy into the anchor every that many steps
    (the anchor must then have the policy's architecture); ``0`` keeps the anchor fixed. The learning
    rate decays linearly to ``final_lr_fraction * lr``. ``meanflow_coef > 0`` adds SMFP's MeanFlow loss.
    """
    if anchor is None and md_lambda != 0:
        raise ValueError("md_lambda > 0 needs an anchor")
    if isinstance(anchor, str):
        if anchor != "copy":
            raise ValueError(f"anchor must be a Policy, 'copy' or None, got {anchor!r}")
        anchor = copy.deepcopy(policy)
    if anchor is not None:
        anchor.requires_grad_(False)
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    dtype = next(policy.parameters()).dtype
    obs = bandit_obs(states, policy.obs_dim, dtype)
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 1.0 - (1.0 - final_lr_fraction) * min(i, steps) / max(steps, 1))
    result = BanditResult(steps, 0.0, anchor)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        loss, _, kl, _ = actor_loss(policy, q_fn, anchor, obs, alpha, md_lambda, components)
        if meanflow_coef > 0 and hasattr(policy, "meanflow_loss"):
            loss = loss + meanflow_coef * policy.meanflow_loss(obs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps:
            result.loss.append(float(loss.detach()))
            result.kl.append(float(kl.detach()))
        if anchor is not None and anchor_period > 0 and step % anchor_period == 0:
            with torch.no_grad():
                for pa, pp in zip(anchor.parameters(), policy.parameters()):
                    pa.copy_(pp)
    result.seconds = time.perf_counter() - start
    return result


# --- measures -------------------------------------------------------------------------------------
@torch.no_grad()
def sample_actions(policy: Policy, n: int = 20_000, mode: str = "sample", q_fn: Optional[QFn] = None,
                   num_candidates: int = 16) -> torch.Tensor:
    """``n`` actions (n, d) of ``policy.act`` at the bandit state."""
    obs = bandit_obs(n, policy.obs_dim, next(policy.parameters()).dtype)
    return policy.act(obs, mode, num_candidates=num_candidates, q_fn=q_fn).float()


def _bin_index(actions: torch.Tensor, bins: int) -> torch.Tensor:
    idx = ((actions.double().clamp(-1.0, 1.0) + 1.0) * 0.5 * bins).long().clamp(0, bins - 1)  # (N, d)
    flat = torch.zeros(actions.shape[0], dtype=torch.long)
    for j in range(actions.shape[1]):
        flat = flat * bins + idx[:, j]
    return flat


def histogram(actions: torch.Tensor, bins: int = 40) -> torch.Tensor:
    """Bin frequencies (bins^d,) of actions (N, d) on ``[-1, 1]^d``."""
    d = actions.shape[1]
    counts = torch.bincount(_bin_index(actions, bins), minlength=bins ** d).double()
    return counts / counts.sum()


def boltzmann_bins(q: KnownQ, alpha: float, bins: int = 40, sub: int = 8) -> torch.Tensor:
    """Probability of each bin under ``exp(Q/alpha)`` on ``[-1, 1]^d`` (midpoint rule, ``sub`` points per bin side)."""
    n = bins * sub
    grid1 = -1.0 + (torch.arange(n, dtype=torch.float64) + 0.5) * 2.0 / n
    pts = torch.cartesian_prod(*([grid1] * q.dim)).reshape(-1, q.dim)
    logits = q.fn(pts) / alpha
    w = torch.exp(logits - logits.max())
    mass = torch.zeros(bins ** q.dim, dtype=torch.float64).index_add_(0, _bin_index(pts, bins), w)
    return mass / mass.sum()


def total_variation(p: torch.Tensor, r: torch.Tensor) -> float:
    return 0.5 * float((p - r).abs().sum())


def tv_to_boltzmann(actions: torch.Tensor, q: KnownQ, alpha: float, bins: int = 40) -> float:
    """Total-variation distance between the action histogram and ``exp(Q/alpha)`` on the same bins."""
    return total_variation(histogram(actions, bins), boltzmann_bins(q, alpha, bins))


def peak_shares(actions: torch.Tensor, peaks: Sequence[Sequence[float]], radius: float = 0.25) -> list[float]:
    """Share of actions within Euclidean ``radius`` of each peak."""
    a = actions.double()
    return [float(((a - torch.as_tensor(p, dtype=a.dtype)).norm(dim=-1) <= radius).double().mean()) for p in peaks]


@torch.no_grad()
def shared_noise_kl(policy: Policy, anchor: Policy, n: int = 4096) -> float:
    """``E_z KL(N(mu(s,z), s^2) || N(mu_k(s,z), s_k^2))`` at the bandit state (the loss's KL term)."""
    obs = bandit_obs(1, policy.obs_dim, next(policy.parameters()).dtype)
    noise = policy.draw_noise(1, n, obs)
    mean, log_std = policy.components(obs, noise)
    mean_k, log_std_k = anchor.components(obs, noise)
    return float(gaussian_kl(mean, log_std, mean_k, log_std_k).mean())


__all__ = ["KnownQ", "BanditResult", "bimodal_q", "double_well_q", "corners_q", "unimodal_q", "quadratic_q", "presquash_quadratic_q",
           "md_gaussian_target", "set_constant_gaussian", "bandit_obs", "optimise", "sample_actions", "histogram",
           "boltzmann_bins", "total_variation", "tv_to_boltzmann", "peak_shares", "shared_noise_kl"]
