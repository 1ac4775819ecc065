"""The ``fit`` actor update: fit the one-step map to the mirror-descent step's closed-form target.

One entropic mirror-descent step has the closed form
``p*(a) ~ pi_k(a)^(lambda/(alpha+lambda)) exp(Q(a)/(alpha+lambda))`` (``lambda = 0``: SAC's
``exp(Q/alpha)``). Instead of only following the reparameterised (reverse-KL) gradient, which is
local and blind to mixing proportions, the ``fit`` update scores candidate actions by that target and
fits the policy to them with a mass-covering loss (docs/method.md, "The fit update"):

* **candidates** per state (``fit_candidates``): samples of the anchor's components (its M components
  at the step's noises), local perturbations of the policy's own components (their means with the
  output noise widened ``local_scale`` times) and points uniform on the box. Their mixture density
  ``q`` is known, so self-normalised importance weights ``w ~ p*/q`` make them a weighted sample of
  ``p*``; the anchor's log-density comes from the same semi-implicit M-component table as the
  entropy surrogate.
* **losses**: the coupled one-step regression (``coupled_regression_loss``: resample N targets per
  state by the weights, pair them with the policy's N noises by the optimal assignment for
  ``|z - y|^2``, pull each pre-squash mean ``mean(s, z_n)`` toward its partner), or the weighted
  energy score of the policy's samples (``weighted_energy_score``, strictly proper: minimised by
  ``p*`` itself).

Everything here is a function of tensors (no state); ``smfp.update.losses.fit_actor_loss`` composes them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from smfp.policies.distributions import LOG_2, semi_implicit_log_prob, tanh_log_det

ATANH_CLIP = 1.0 - 1e-4  # targets are clipped to |a| <= this before atanh (|x| <= ~4.95)


@dataclass
class Candidates:
    """Weighted candidate actions per state: pre-squash ``x`` (B, K, d), normalised weights ``w`` (B, K)."""

    x: torch.Tensor
    w: torch.Tensor
    ess: torch.Tensor  # mean over states of 1 / sum w^2, as a fraction of K
    log_w: torch.Tensor  # unnormalised log-weights (B, K): log p*(a) - log q(a), up to a per-state constant


def _pick_components(b: int, n: int, m: int) -> torch.Tensor:
    """``n`` component indices per state in [0, m): every component equally often (stratified), remainder random."""
    reps = torch.arange(n) % m
    shift = torch.randint(0, m, (b, 1))
    return (reps.unsqueeze(0) + shift) % m  # (B, n): a random rotation keeps the remainder unbiased


@torch.no_grad()
def fit_candidates(q_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], obs: torch.Tensor,
                   alpha: torch.Tensor | float, md_lambda: torch.Tensor | float,
                   anchor: Optional[tuple[torch.Tensor, torch.Tensor]], policy: tuple[torch.Tensor, torch.Tensor],
                   n_anchor: int, n_local: int, n_uniform: int, local_scale: float) -> Candidates:
    """Candidate actions per state and their self-normalised weights for the target ``p*``.

    ``anchor``: the anchor's component means (B, M, d) and log-stds (B, 1 or M, d) at the step's noises
    (None without mirror descent: the target is ``exp(Q/alpha)``, and the policy's own components
    take the anchor's place as the proposal); ``policy``: the policy's (detached) components at the
    same noises. Proposals: ``n_anchor`` draws from the anchor's components, ``n_local`` from the
    policy's components with the std widened ``local_scale`` times, ``n_uniform`` uniform on the box.
    Densities are of the squashed action ``a = tanh(x)``.
    """
    p_mean, p_log_std = policy
    b, m, d = p_mean.shape
    dtype = p_mean.dtype
    temp = alpha + md_lambda
    beta = md_lambda / temp if float(md_lambda) > 0 else 0.0
    if anchor is None:
        anchor = (p_mean, p_log_std)
    a_mean, a_log_std = anchor
    a_log_std = a_log_std.expand(a_mean.shape)  # the anchor may have its own number of components
    p_log_std = p_log_std.expand(b, m, d)
    loc_log_std = p_log_std + math.log(local_scale)
    parts, kinds = [], []
    if n_anchor > 0:
        idx = _pick_components(b, n_anchor, a_mean.shape[1]).unsqueeze(-1).expand(b, n_anchor, d)
        mu, ls = torch.gather(a_mean, 1, idx), torch.gather(a_log_std, 1, idx)
        parts.append(mu + ls.exp() * torch.randn_like(mu))
        kinds.append(("anchor", n_anchor))
    if n_local > 0:
        idx = _pick_components(b, n_local, m).unsqueeze(-1).expand(b, n_local, d)
        mu, ls = torch.gather(p_mean, 1, idx), torch.gather(loc_log_std, 1, idx)
        parts.append(mu + ls.exp() * torch.randn_like(mu))
        kinds.append(("local", n_local))
    if n_uniform > 0:
        u = torch.rand(b, n_uniform, d, dtype=dtype) * 2.0 - 1.0
        parts.append(torch.atanh(u.clamp(-ATANH_CLIP, ATANH_CLIP)))
        kinds.append(("uniform", n_uniform))
    if not parts:
        raise ValueError("the fit update needs at least one candidate per state (anchor, local or uniform)")
    x = torch.cat(parts, dim=1)  # (B, K, d)
    k = x.shape[1]
    log_det = tanh_log_det(x).sum(-1)  # density of a = tanh(x): pre-squash density minus this
    log_anchor = semi_implicit_log_prob(x, a_mean, a_log_std) - log_det
    terms = []
    for kind, n in kinds:
        if kind == "anchor":
            dens = log_anchor
        elif kind == "local":
            dens = semi_implicit_log_prob(x, p_mean, loc_log_std) - log_det
        else:
            dens = torch.full_like(log_anchor, -d * LOG_2)
        terms.append(dens + math.log(n / k))
    log_q = torch.logsumexp(torch.stack(terms, 0), dim=0)
    q = q_fn(obs.unsqueeze(1).expand(b, k, obs.shape[-1]).reshape(b * k, -1), torch.tanh(x).reshape(b * k, d))
    log_target = q.reshape(b, k) / temp
    if beta > 0:
        log_target = log_target + beta * log_anchor
    log_w = (log_target - log_q).float()
    w = torch.softmax(log_w, dim=1).to(dtype)
    ess = (1.0 / w.float().pow(2).sum(1)).mean() / k
    return Candidates(x, w, ess, log_w)


def _pairwise_dist(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distances (B, N, K) between rows of a (B, N, d) and b (B, K, d), with a finite gradient at 0."""
    return ((a.unsqueeze(2) - b.unsqueeze(1)).pow(2).sum(-1) + eps).sqrt()


def weighted_energy_score(a: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Mean over states of ``sum_k w_k mean_m |a_m - y_k| - 1/2 mean_{m != m'} |a_m - a_m'|``.

    ``a``: the policy's samples (B, M, d), reparameterised; ``y``: targets (B, K, d) with weights ``w``
    (B, K) summing to 1 per state. Its expectation is the energy distance between the policy and the
    weighted target up to a term free of the policy, so it is minimised by the target itself (a
    strictly proper scoring rule): mass-covering, and sensitive to mixing proportions.
    """
    m = a.shape[1]
    if m < 2:
        raise ValueError("the energy score needs at least 2 samples per state")
    cross = (_pairwise_dist(a, y.detach()).mean(1) * w.detach()).sum(1)  # (B,)
    self_d = _pairwise_dist(a, a)
    off = ~torch.eye(m, dtype=torch.bool)
    spread = self_d[:, off].mean(1)
    return (cross - 0.5 * spread).mean()


def systematic_resample(w: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` indices per state (B, n) drawn by systematic resampling from the weights (B, K)."""
    b = w.shape[0]
    cdf = torch.cumsum(w.float(), dim=1)
    cdf = cdf / cdf[:, -1:]
    u = (torch.rand(b, 1) + torch.arange(n).unsqueeze(0)) / n
    return torch.searchsorted(cdf, u.contiguous()).clamp(max=w.shape[1] - 1)


def ot_assignment(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per state, the permutation ``perm`` (B, N) minimising ``sum_n |x_n - y_perm[n]|^2``.

    ``x``, ``y``: (B, N, d). In 1-D the optimum pairs sorted with sorted (exact); in d > 1 the exact
    assignment of ``scipy.optimize.linear_sum_assignment`` per state when scipy is installed (it comes
    with the ``test`` and ``sweep`` extras), otherwise a greedy assignment improved by pairwise swaps (a
    local optimum; measured on random 8 x 8 problems in 6-D: within ~1% of the optimum's cost). Up to
    ``BRUTE_FORCE_MAX`` points per state (the em update's heads), every permutation is scored at once: exact, and
    no Python loop over states.
    """
    b, n, d = x.shape
    if d == 1:
        ix = torch.argsort(x[..., 0], dim=1)
        iy = torch.argsort(y[..., 0], dim=1)
        perm = torch.empty_like(ix)
        perm.scatter_(1, ix, iy)  # x's r-th smallest takes y's r-th smallest
        return perm
    cost = (x.unsqueeze(2) - y.unsqueeze(1)).pow(2).sum(-1)  # (B, N, N)
    if n <= BRUTE_FORCE_MAX:
        perms = _permutations(n, cost.device)  # (P, N)
        total = cost.gather(2, perms.t().unsqueeze(0).expand(b, n, perms.shape[0])).sum(1)  # (B, P)
        return perms[total.argmin(1)]
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:  # pragma: no cover - scipy ships with the test and bench extras
        return _greedy_assignment(cost)
    c = cost.detach().double().cpu().numpy()
    out = torch.empty(b, n, dtype=torch.long)
    for i in range(b):
        rows, cols = linear_sum_assignment(c[i])
        out[i, torch.as_tensor(rows)] = torch.as_tensor(cols)
    return out.to(x.device)


BRUTE_FORCE_MAX = 5  # 120 permutations


def _permutations(n: int, device) -> torch.Tensor:
    return torch.tensor(list(itertools.permutations(range(n))), dtype=torch.long, device=device)


def _greedy_assignment(cost: torch.Tensor, max_swaps: int = 64) -> torch.Tensor:
    """Cheapest remaining pair first, then pairwise swaps while one lowers the cost (a local optimum)."""
    b, n, _ = cost.shape
    c = cost.clone()
    perm = torch.empty(b, n, dtype=torch.long, device=cost.device)
    rows = torch.arange(b, device=cost.device)
    for _ in range(n):
        flat = c.reshape(b, -1).argmin(1)
        i, j = flat // n, flat % n
        perm[rows, i] = j
        c[rows, i, :] = float("inf")
        c[rows, :, j] = float("inf")
    for _ in range(max_swaps):
        own = cost.gather(2, perm.unsqueeze(-1)).squeeze(-1)  # (B, N): cost of each row's partner
        swapped = cost.gather(2, perm.unsqueeze(1).expand(b, n, n))  # [r, i, j]: row i with row j's partner
        gain = own.unsqueeze(2) + own.unsqueeze(1) - swapped - swapped.transpose(1, 2)
        best = gain.reshape(b, -1).max(1)
        if not bool((best.values > 1e-9).any()):
            break
        i, j = best.indices // n, best.indices % n
        do = best.values > 1e-9
        pi, pj = perm[rows, i], perm[rows, j]
        perm[rows, i] = torch.where(do, pj, pi)
        perm[rows, j] = torch.where(do, pi, pj)
    return perm


def coupled_regression_loss(mean: torch.Tensor, noise: torch.Tensor, cand: Candidates, norm: str = "l1",
                            row_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One-step regression of the pre-squash means onto OT-paired samples of the weighted target.

    Per state: draw N (= the policy's noises per state) targets from the candidates by systematic
    resampling (their pre-squash values, clipped to ``|tanh x| <= ATANH_CLIP``); pair them with the
    noises ``z_n`` (B, N, d) by the optimal assignment for ``|z - y|^2`` (the monotone, Brenier
    coupling: sorting in 1-D); pull each ``mean(s, z_n)`` (B, N, d) toward its partner. ``l1``: by the
    Euclidean distance, so the map learns the partners' (geometric) median, which switches sharply
    between modes; ``l2``: by half the squared distance, so it learns their mean, which puts the
    noises whose partner is uncertain between the modes. ``row_weight`` (B,): each state's weight in the mean
    (None: equal). Returns the loss and each mean's displacement to its partner (B, N, d), detached.
    """
    b, n, d = mean.shape
    idx = systematic_resample(cand.w, n)
    clip = math.atanh(ATANH_CLIP)
    y = torch.gather(cand.x, 1, idx.unsqueeze(-1).expand(b, n, d)).clamp(-clip, clip).detach()
    perm = ot_assignment(noise.detach(), y)
    y_pair = torch.gather(y, 1, perm.unsqueeze(-1).expand(b, n, d))
    delta = y_pair - mean
    if norm == "l2":
        per = 0.5 * delta.pow(2).sum(-1)
    elif norm == "l1":
        per = (delta.pow(2).sum(-1) + 1e-12).sqrt()
    else:
        raise ValueError(f"unknown regression norm {norm!r}; choose l1 or l2")
    loss = per.mean() if row_weight is None else (per.mean(1) * row_weight).mean()
    return loss, delta.detach()


def head_responsibilities(cand: Candidates, mean: torch.Tensor, log_p: torch.Tensor, per_head: int,
                          bandwidth: float, sharpness: float = 1.0) -> torch.Tensor:
    """``r[b, k, c]``: the share of candidate ``k`` that head ``c`` explains, (B, Kc, K).

    ``mean``: the heads' pre-squash means (B, K * per_head, d) in head-major blocks (``Policy.head_layout``);
    ``log_p``: ``log p(c | s)`` (B, K). Each head's density at a candidate is its components' kernel mixture
    with the fixed width ``bandwidth`` (not the policy's sigma: a wide sigma early in training would give every
    head every candidate, and identical heads never specialise).
    """
    b, n, d = mean.shape
    k = log_p.shape[1]
    sq = torch.cdist(cand.x, mean).pow(2)  # (B, Kc, K * per_head); the kernel's normaliser is the same for all
    per = torch.logsumexp((-0.5 / bandwidth ** 2) * sq.reshape(b, -1, k, per_head), dim=3)  # (B, Kc, K)
    logits = per + log_p.unsqueeze(1)
    if math.isinf(sharpness):
        return torch.nn.functional.one_hot(logits.argmax(2), k).to(mean.dtype)
    return torch.softmax(sharpness * logits, dim=2)


def em_fit_loss(mean: torch.Tensor, noise: torch.Tensor, log_p: torch.Tensor, cand: Candidates, per_head: int,
                bandwidth: float, sharpness: float = 1.0,
                head_weight: str = "equal") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The EM step toward the weighted target for a policy with K heads (docs/method.md, "Heads").

    E-step: the responsibilities ``r`` of the heads for the candidates (``head_responsibilities``, held). M-step,
    as two losses: the heads' probabilities by the cross-entropy ``-sum_c m_c log p_c`` to the target's masses
    ``m_c = sum_k w_k r_kc`` (its minimum is ``p = m``), and each head's map by the coupled regression
    (``coupled_regression_loss``) onto targets resampled from its own share ``w_k r_kc`` and paired with the
    head's noises ``z`` (B, K * per_head, d). ``head_weight``: ``equal`` (each head's regression counts the same)
    or ``mass`` (K x its mass ``m_c``: a head the target gives nothing at a state is not fitted there).
    Returns (map loss, probability loss, masses (B, K)).
    """
    if head_weight not in ("equal", "mass"):
        raise ValueError(f"unknown head weight {head_weight!r}; choose equal or mass")
    b, n, d = mean.shape
    k = log_p.shape[1]
    with torch.no_grad():
        r = head_responsibilities(cand, mean.detach(), log_p.detach(), per_head, bandwidth, sharpness)
        share = cand.w.unsqueeze(2) * r  # (B, Kc, K)
        masses = share.sum(1)
        w_head = share.permute(0, 2, 1).reshape(b * k, -1) + 1e-30  # a head no candidate reaches draws evenly
        w_head = w_head / w_head.sum(1, keepdim=True)
    x_head = cand.x.unsqueeze(1).expand(b, k, *cand.x.shape[1:]).reshape(b * k, *cand.x.shape[1:])
    per = Candidates(x_head, w_head, cand.ess, w_head.log())
    row_weight = (k * masses).reshape(b * k) if head_weight == "mass" else None
    fit, _ = coupled_regression_loss(mean.reshape(b * k, per_head, d), noise.reshape(b * k, per_head, d), per,
                                     row_weight=row_weight)
    probs = -(masses * log_p).sum(1).mean()
    return fit, probs, masses


__all__ = ["Candidates", "coupled_regression_loss", "em_fit_loss", "fit_candidates", "head_responsibilities",
           "ot_assignment", "systematic_resample", "weighted_energy_score"]
