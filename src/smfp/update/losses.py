"""Loss functions of one update, written as functions of tensors and modules (no state).

Section numbers refer to DESIGN.md.
"""

from __future__ import annotations

from typing import Callable

import torch

from smfp.buffer import Batch
from smfp.critic import QEnsemble
from smfp.policies import Policy
from smfp.policies.distributions import gaussian_kl


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


def critic_loss(critic: QEnsemble, batch: Batch, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over ensemble members of the mean squared TD error; also returns Q (E, B)."""
    q = critic(batch.obs, batch.action)
    return (q - target.unsqueeze(0)).pow(2).mean(dim=1).sum(), q


def actor_loss(policy: Policy, q_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], anchor: Policy | None,
               obs: torch.Tensor, alpha: torch.Tensor | float, md_lambda: torch.Tensor | float, components: int):
    """Entropic mirror-descent actor loss (section 5), reparameterised through the sampler.

    ``E[alpha log pi_hat(a|s) - min_j Q_j(s, a)] + lambda E_z[KL(N(mu(s,z), s^2) || N(mu_k(s,z), s_k^2))]``,
    with the anchor evaluated at the same noises ``z``. ``q_fn(obs, act) -> (N,)`` is the value the
    actor climbs (the critic ensemble's min with frozen weights, or a known Q in tests).
    Returns (loss, sample, kl).
    """
    smp = policy.sample(obs, components)
    b, m, d = smp.action.shape
    obs_rep = obs.unsqueeze(1).expand(b, m, obs.shape[-1]).reshape(b * m, -1)
    q = q_fn(obs_rep, smp.action.reshape(b * m, d)).reshape(b, m)
    loss = (alpha * smp.log_prob - q).mean()
    kl = torch.zeros((), dtype=obs.dtype)
    if anchor is not None:
        with torch.no_grad():
            anchor_mean, anchor_log_std = anchor.components(obs, smp.noise)
        kl = gaussian_kl(smp.mean, smp.log_std, anchor_mean, anchor_log_std).mean()
        loss = loss + md_lambda * kl
    return loss, smp, kl
