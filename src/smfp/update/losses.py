"""Loss functions of one update, written as functions of tensors and modules (no state).

The method they implement is stated in docs/method.md.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from smfp.buffer import Batch
from smfp.critic import QEnsemble
from smfp.policies import Policy
from smfp.policies.distributions import LOG_2, gaussian_kl, gaussian_log_prob, semi_implicit_log_prob, tanh_log_det
from smfp.update.fit import coupled_regression_loss, em_fit_loss, fit_candidates, weighted_energy_score


@torch.no_grad()
def soft_target(policy: Policy, target_critic: QEnsemble, batch: Batch, alpha: torch.Tensor, gamma: float,
                components: int) -> torch.Tensor:
    """``y = r + gamma (1 - terminated) (min_j Qbar_j(s', a') - alpha log pi_hat(a'|s'))`` (section 7).

    ``a'`` is the first of the M sampled actions; the other M - 1 serve as mixture components
    that score it.
    """
    a_next, logp_next = policy.sample_first(batch.next_obs, components)  # = sample(...)[:, 0], scored 1 x M
    q_next = target_critic(batch.next_obs, a_next).min(dim=0).values - alpha * logp_next
    return batch.reward + gamma * (1.0 - batch.terminated) * q_next


@torch.no_grad()
def soft_optimal_target(policy: Policy, target_critic: QEnsemble, batch: Batch, alpha: torch.Tensor, gamma: float,
                        policy_samples: int, uniform_samples: int) -> torch.Tensor:
    """``y = r + gamma (1 - terminated) V*(s')`` with the soft-optimal value ``V*(s') = alpha log \\int
    exp(min_j Qbar_j(s', a) / alpha) da`` (Soft Q-Learning's backup; docs/method.md, "The soft-optimal backup").

    The integral over the action box is estimated by importance sampling from ``K = P + U`` candidates
    per state: ``P`` from the policy and ``U`` uniform on the box, weighted by their deterministic
    mixture ``q(a) = (P pi_hat(a) + U 2^-d) / K`` (``pi_hat``: the policy's density, the semi-implicit
    mixture of its P components for a mixture policy). It does not depend on how well the policy has
    converged, only on the critic: the value of the Boltzmann policy ``exp(Q/alpha)``, which upper-bounds
    the policy backup ``E_pi[Q - alpha log pi]``.
    """
    obs = batch.next_obs
    b, d = obs.shape[0], policy.act_dim
    m = policy_samples if policy.is_mixture else 1
    mean, log_std = policy.components(obs, policy.draw_noise(b, m, obs))
    mean_k = mean.expand(b, policy_samples, d) if m == 1 else mean
    x_policy = mean_k + torch.exp(log_std) * torch.randn_like(mean_k)  # (B, P, d)
    edge = 1.0 - 1e-6  # atanh(+-1) is infinite
    u = (torch.rand(b, uniform_samples, d, dtype=obs.dtype, device=obs.device) * 2.0 - 1.0).clamp(-edge, edge)
    x = torch.cat([x_policy, torch.atanh(u)], dim=1)  # (B, K, d) pre-squash
    log_pi = semi_implicit_log_prob(x, mean, log_std) - tanh_log_det(x).sum(-1)  # (B, K) on the box
    k = policy_samples + uniform_samples
    log_q = log_pi + math.log(policy_samples)  # P >= 1 (config check)
    if uniform_samples:
        log_q = torch.logaddexp(log_q, torch.full_like(log_q, math.log(uniform_samples) - d * LOG_2))
    log_q = log_q - math.log(k)
    a = torch.cat([torch.tanh(x_policy), u], dim=1)
    obs_rep = obs.unsqueeze(1).expand(b, k, obs.shape[-1]).reshape(b * k, -1)
    q = target_critic(obs_rep, a.reshape(b * k, d)).min(dim=0).values.reshape(b, k)
    v = alpha * (torch.logsumexp(q / alpha - log_q, dim=1) - math.log(k))
    return batch.reward + gamma * (1.0 - batch.terminated) * v


def critic_loss(critic: QEnsemble, batch: Batch, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over ensemble members of the mean squared TD error; also returns Q (E, B)."""
    q = critic(batch.obs, batch.action)
    return (q - target.unsqueeze(0)).pow(2).mean(dim=1).sum(), q


def actor_loss(policy: Policy, q_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], anchor: Policy | None,
               obs: torch.Tensor, alpha: torch.Tensor | float, md_lambda: torch.Tensor | float, components: int,
               q_obs: torch.Tensor | None = None):
    """Entropic mirror-descent actor loss (section 5), reparameterised through the sampler.

    ``E[alpha log pi_hat(a|s) - min_j Q_j(s, a)] + lambda E_z[KL(N(mu(s,z), s^2) || N(mu_k(s,z), s_k^2))]``,
    with the anchor evaluated at the same noises ``z``. ``q_fn(obs, act) -> (N,)`` is the value the
    actor climbs (the critic ensemble's min with frozen weights, or a known Q in tests).
    ``q_obs`` (``--q-states``): the Q term on one fresh action at each of these states instead of on the
    M actions of ``obs`` (the same expectation, over more states for the same critic rows); the entropy
    and KL terms stay on ``obs`` x M.
    Returns (loss, sample, kl, anchor components at the sample's noises or None).
    """
    smp = policy.sample(obs, components)
    if q_obs is None:
        b, m, d = smp.action.shape
        obs_rep = obs.unsqueeze(1).expand(b, m, obs.shape[-1]).reshape(b * m, -1)
        q = q_fn(obs_rep, smp.action.reshape(b * m, d))
    else:
        q = q_fn(q_obs, policy.sample(q_obs, 1).action[:, 0])
    loss = alpha * smp.log_prob.mean() - q.mean()
    anchor_components, kl = anchor_kl(anchor, obs, smp)
    if anchor is not None:
        loss = loss + md_lambda * kl
    return loss, smp, kl, anchor_components


def anchor_kl(anchor: Policy | None, obs: torch.Tensor, smp) -> tuple[tuple | None, torch.Tensor]:
    """The anchor's components at the sample's noises (no gradient) and the shared-noise KL of the sample's
    components to them, ``E_z[KL(N(mu(s,z), s^2) || N(mu_k(s,z), s_k^2))]`` (0 and None without an anchor)."""
    if anchor is None:
        return None, torch.zeros((), dtype=obs.dtype)
    with torch.no_grad():
        components = anchor.components(obs, smp.noise)
    return components, gaussian_kl(smp.mean, smp.log_std, *components).mean()


@torch.no_grad()
def md_target_samples(anchor_mean: torch.Tensor, anchor_log_std: torch.Tensor, q_fn, obs: torch.Tensor,
                      alpha: torch.Tensor | float, md_lambda: torch.Tensor | float, uniform: int, per_state: int):
    """Samples of the mirror-descent step's closed-form target, by self-normalised importance resampling.

    Target ``p*(a) ~ pi_k(a)^(lambda/(alpha+lambda)) exp(Q(a)/(alpha+lambda))`` (``lambda = 0``:
    SAC's ``exp(Q/alpha)``). Proposals per state: one sample of each anchor component (the M
    components at the actor step's noises) plus ``uniform`` points of the box, a defensive,
    policy-independent share that finds modes the anchor has lost; ``q`` is their mixture density
    (the anchor's from the same M-component table as the surrogate). Each state keeps ``per_state``
    proposals drawn with weights ``p*/q``. Returns pre-squash samples (B * per_state, d), the state
    index of each, and the effective sample size as a fraction of the proposals.
    """
    b, m, d = anchor_mean.shape
    x_anchor = anchor_mean + torch.exp(anchor_log_std) * torch.randn_like(anchor_mean)
    parts = [x_anchor]
    if uniform > 0:
        a_unif = torch.rand(b, uniform, d, dtype=anchor_mean.dtype) * 2.0 - 1.0
        parts.append(torch.atanh(a_unif.clamp(-1.0 + 1e-6, 1.0 - 1e-6)))
    x = torch.cat(parts, dim=1)  # (B, K, d)
    k = x.shape[1]
    log_anchor = semi_implicit_log_prob(x, anchor_mean, anchor_log_std) - tanh_log_det(x).sum(-1)  # density of tanh(x)
    if uniform > 0:
        log_q = torch.logaddexp(log_anchor + math.log(m / k),
                                torch.full_like(log_anchor, math.log(uniform / k) - d * LOG_2))
    else:
        log_q = log_anchor
    temp = alpha + md_lambda
    q = q_fn(obs.unsqueeze(1).expand(b, k, obs.shape[-1]).reshape(b * k, -1), torch.tanh(x).reshape(b * k, d))
    log_w = (md_lambda / temp) * log_anchor + q.reshape(b, k) / temp - log_q
    w = torch.softmax(log_w.float(), dim=1)
    ess = (1.0 / w.pow(2).sum(1)).mean() / k
    pick = torch.multinomial(w, per_state, replacement=True)  # (B, per_state)
    samples = torch.gather(x, 1, pick.unsqueeze(-1).expand(b, per_state, d)).reshape(b * per_state, d)
    rows = torch.arange(b).repeat_interleave(per_state)
    return samples, rows, ess


def fit_actor_loss(policy: Policy, q_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], anchor: Policy | None,
                   obs: torch.Tensor, alpha: torch.Tensor | float, md_lambda: torch.Tensor | float, components: int,
                   cfg):
    """The ``fit`` / ``hybrid`` actor loss (docs/method.md, "The fit update"); ``cfg``: ``UpdateConfig``.

    M samples per state from the policy and the anchor's components at the same noises (the shared-noise
    KL to them is still returned, for the log and lambda's tuning); candidate actions weighted by the
    step's closed-form target ``p* ~ pi_k^(lambda/(alpha+lambda)) exp(Q/(alpha+lambda))``
    (``smfp.update.fit.fit_candidates``); then ``cfg.fit_coef`` x the fit loss:

    * ``coupled``: the map ``mean(s, z)`` regressed (Euclidean distance) onto OT-paired resampled
      targets, and sigma by the energy score of the samples with the means held;
    * ``energy``: the weighted energy score of the samples (map and sigma).

    ``hybrid`` adds ``cfg.hybrid_coef`` x the reverse KL to ``p*`` through the samples,
    ``E[(alpha+lambda) log pi_hat - lambda log pi_k_hat - Q] / (alpha+lambda)`` (the anchor's marginal
    log-density from its M-component table, not the shared-noise KL); with the coupled loss and
    ``cfg.hybrid_gate`` the reverse KL's gradient at a sample is dropped when its descent direction points
    away from the sample's partner (it would hold the sample in the basin the fit is moving it out of).
    Returns (loss, sample, kl, anchor components or None, {"ess": ...}).
    """
    smp = policy.sample(obs, components)
    with torch.no_grad():  # the KL is logged and tunes lambda; the fit's own terms move the policy
        anchor_components, kl = anchor_kl(anchor, obs, smp)
    cand = fit_candidates(q_fn, obs, alpha, md_lambda, anchor_components, (smp.mean.detach(), smp.log_std.detach()),
                          cfg.fit_anchor, cfg.fit_local, cfg.fit_uniform, cfg.fit_local_scale)
    y = torch.tanh(cand.x)
    delta = None
    # The fit's own draws: the M samples, or --fit-noises N fresh ones (map passes only: no critic rows)
    if cfg.fit_noises > 0:
        fit_noise = policy.draw_noise(obs.shape[0], cfg.fit_noises, obs)
        fit_mean, fit_log_std = policy.components(obs, fit_noise)
        fit_x = fit_mean + fit_log_std.exp() * torch.randn_like(fit_mean)
    else:
        fit_noise, fit_mean, fit_log_std, fit_x = smp.noise, smp.mean, smp.log_std, smp.pre_squash
    if cfg.fit_loss == "energy":
        loss = cfg.fit_coef * weighted_energy_score(torch.tanh(fit_x), y, cand.w)
    elif cfg.fit_loss == "coupled":
        fit, delta = coupled_regression_loss(fit_mean, fit_noise, cand)
        std = fit_log_std.exp()
        xi = ((fit_x - fit_mean) / std).detach()
        x_sigma = fit_mean.detach() + std * xi  # the samples with the means held: sigma's fit
        loss = cfg.fit_coef * (fit + weighted_energy_score(torch.tanh(x_sigma), y, cand.w))
        if cfg.fit_noises > 0:
            delta = None  # the gate needs each reverse-KL sample's own partner
    else:
        raise ValueError(f"unknown fit loss {cfg.fit_loss!r}; choose coupled or energy")
    if cfg.actor_update == "hybrid" and cfg.hybrid_coef > 0:
        b, m, d = smp.action.shape
        x = smp.pre_squash
        obs_rep = obs.unsqueeze(1).expand(b, m, obs.shape[-1]).reshape(b * m, -1)
        q = q_fn(obs_rep, smp.action.reshape(b * m, d)).reshape(b, m)
        reverse = (alpha + md_lambda) * smp.log_prob - q
        if anchor_components is not None:
            reverse = reverse - md_lambda * (semi_implicit_log_prob(x, *anchor_components) - tanh_log_det(x).sum(-1))
        if cfg.hybrid_gate and delta is not None and x.requires_grad:
            # With the coupled loss only the reverse KL reaches the samples x (the fit acts on the means, sigma's
            # fit on a copy of the samples), so the gradient arriving at x is the reverse KL's pathwise one: a hook
            # zeroes it for the samples whose descent direction points away from their partner (no extra pass).
            def gate(grad: torch.Tensor, toward: torch.Tensor = delta) -> torch.Tensor:
                return grad * ((-grad * toward).sum(-1, keepdim=True) >= 0).to(grad.dtype)
            x.register_hook(gate)
        loss = loss + cfg.hybrid_coef * reverse.mean() / (alpha + md_lambda)
    return loss, smp, kl, anchor_components, {"ess": cand.ess}


def _mixture_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor,
                      log_w: torch.Tensor | None) -> torch.Tensor:
    """``log sum_i w_i N(x_j; mean_i, std_i^2)`` for every ``x_j`` (B, N); equal weights when ``log_w`` is None
    (the semi-implicit surrogate)."""
    if log_w is None:
        return semi_implicit_log_prob(x, mean, log_std)
    table = gaussian_log_prob(x.unsqueeze(2), mean.unsqueeze(1), log_std.unsqueeze(1))  # (B, N, N)
    return torch.logsumexp(table + log_w.unsqueeze(1), dim=2)


def _per_draw(log_p: torch.Tensor, per_head: int) -> torch.Tensor:
    """Log-weights (B, K * per_head) of ``Policy.head_layout``'s draws: ``p(c|s) / per_head`` for head-major blocks."""
    return torch.repeat_interleave(log_p, per_head, dim=1) - math.log(per_head)


def em_actor_loss(policy: Policy, q_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], anchor: Policy | None,
                  obs: torch.Tensor, alpha: torch.Tensor | float, md_lambda: torch.Tensor | float, components: int,
                  cfg):
    """The ``em`` actor loss (docs/method.md, "Heads"); ``cfg``: ``UpdateConfig``.

    M samples per state (heads drawn from ``p(c|s)``) give the proposals and the logged entropy and KL (the
    shared-noise KL of the components plus the KL of the heads' probabilities); candidates weighted by the
    step's target ``p* ~ pi_k^(lambda/(alpha+lambda)) exp(Q/(alpha+lambda))`` as in the fit update; then
    ``cfg.fit_coef`` x each head's coupled regression + ``cfg.em_mass_coef`` x the cross-entropy of the heads'
    probabilities to the target's masses (``smfp.update.fit.em_fit_loss``, on ``cfg.em_per_head`` noises of every
    head; with ``cfg.em_masses == "heads"`` the masses come from each head's own reverse-KL draws instead) +
    ``cfg.hybrid_coef`` x the reverse KL to ``p*`` with the means held, which sets sigma only (the map follows
    the fit alone: the reverse KL's pathwise pull on the means makes every head cover every mode).
    Returns (loss, sample, kl, anchor components or None, {"ess": ..., "head_masses": ...}).
    """
    if cfg.em_masses == "heads" and (cfg.em_reverse != "heads" or not cfg.hybrid_coef > 0):
        raise ValueError("em_masses='heads' needs the reverse KL on every head (em_reverse='heads', hybrid_coef > 0)")
    log_p = policy.head_log_probs(obs)  # (B, K), with gradient: the probabilities' own losses below
    with torch.no_grad():
        smp = policy.sample(obs, components)
        anchor_components, kl = anchor_kl(anchor, obs, smp)
        if anchor is not None and getattr(policy, "heads", 1) > 1:
            lp = log_p.detach()
            kl = kl + (lp.exp() * (lp - anchor.head_log_probs(obs))).sum(1).mean()
    b, m, d = smp.mean.shape
    layout = mean = None
    proposal = (smp.mean, smp.log_std)  # draws: around the M samples
    if cfg.em_proposal == "heads":  # local candidates around every head's draws, whatever its probability
        layout = policy.head_layout(b, cfg.em_per_head, obs)
        mean = policy.component_means(obs, layout)
        proposal = (mean.detach(), policy.noise_log_std(obs, layout).detach())
    cand = fit_candidates(q_fn, obs, alpha, md_lambda, anchor_components, proposal,
                          cfg.fit_anchor, cfg.fit_local, cfg.fit_uniform, cfg.fit_local_scale)
    if layout is None:  # drawn after the candidates, so that draws keeps its order of random numbers
        layout = policy.head_layout(b, cfg.em_per_head, obs)
        mean = policy.component_means(obs, layout)
    fit, probs, masses = em_fit_loss(mean, layout[..., :d], log_p, cand, cfg.em_per_head, cfg.em_bandwidth,
                                     cfg.em_sharpness, cfg.em_fit_weight)
    loss = cfg.fit_coef * fit + (cfg.em_mass_coef * probs if cfg.em_masses == "candidates" else 0.0)
    if cfg.hybrid_coef > 0:
        if cfg.em_reverse == "heads":  # every head's noises, weighted by p(c|s): the logits get this gradient too
            centres = mean.detach()
            log_w = _per_draw(log_p, cfg.em_per_head)
            log_std = policy.noise_log_std(obs, layout)
        else:  # the M drawn samples, equally weighted
            centres, log_w = smp.mean, None
            log_std = policy.noise_log_std(obs, smp.noise)
        n = centres.shape[1]
        x = centres + torch.exp(log_std) * torch.randn_like(centres)
        log_det = tanh_log_det(x).sum(-1)
        log_pi = _mixture_log_prob(x, centres, log_std, log_w) - log_det
        obs_rep = obs.unsqueeze(1).expand(b, n, obs.shape[-1]).reshape(b * n, -1)
        q = q_fn(obs_rep, torch.tanh(x).reshape(b * n, d)).reshape(b, n)
        reverse = (alpha + md_lambda) * log_pi - q
        if anchor is not None:
            with torch.no_grad():
                if log_w is None:
                    a_mean, a_log_std, a_log_w = *anchor_components, None
                else:
                    a_mean, a_log_std = anchor.components(obs, layout)
                    a_log_w = _per_draw(anchor.head_log_probs(obs), cfg.em_per_head)
            reverse = reverse - md_lambda * (_mixture_log_prob(x, a_mean, a_log_std, a_log_w) - log_det)
        weight = torch.full_like(reverse, 1.0 / n) if log_w is None else log_w.exp()
        if log_w is not None and not cfg.em_reverse_logits:  # p(c|s) then follows its masses alone
            weight = weight.detach()
        loss = loss + cfg.hybrid_coef * (weight * reverse).sum(1).mean() / (alpha + md_lambda)
        if cfg.em_masses == "heads":  # m_c ~ p_c E_{x ~ head c}[p*(x) / pi(x)] on each head's own draws
            with torch.no_grad():
                k = log_p.shape[1]
                ratio = (-reverse / (alpha + md_lambda)).reshape(b, k, cfg.em_per_head)
                masses = torch.softmax(log_p.detach() + torch.logsumexp(ratio, 2), 1)
            loss = loss - cfg.em_mass_coef * (masses * log_p).sum(1).mean()
    return loss, smp, kl, anchor_components, {"ess": cand.ess, "head_masses": masses.mean(0)}
