"""Density maths shared by every policy class.

All policies produce a pre-squash action ``x`` in R^d and the bounded action
``a = tanh(x)`` in [-1, 1]^d; the environment wrapper rescales [-1, 1] to the task's box
(the affine part of the action-bound mirror map has a constant log-det, so it is left out of
log-densities; target entropies are therefore in the units of [-1, 1]^d, as in SAC).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2 = math.log(2.0)
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def tanh_log_det(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """``log(1 - tanh(x)^2)`` elementwise, stable for large ``|x|``.

    The naive form returns ``-inf`` once ``tanh(x)`` rounds to 1 (|x| > ~9 in float32);
    the identity ``log(1 - tanh^2 x) = 2 (log 2 - x - softplus(-2x))`` stays finite.
    ``eps > 0``: Stable-Baselines3's form ``log(1 - tanh(x)^2 + eps)`` instead (SB3: eps = 1e-6), which floors each
    term at ``log(eps)`` and loses its gradient there (``--squash-log-det-eps``, to compare the two SACs).
    """
    if eps > 0.0:
        return torch.log(1.0 - torch.tanh(x).pow(2) + eps)
    return 2.0 * (LOG_2 - x - F.softplus(-2.0 * x))


def squash(x: torch.Tensor) -> torch.Tensor:
    """The action-bound mirror map onto [-1, 1]."""
    return torch.tanh(x)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Diagonal Gaussian log-density summed over the last dimension."""
    z = (x - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - HALF_LOG_2PI).sum(-1)


def gaussian_kl(mean_p: torch.Tensor, log_std_p: torch.Tensor,
                mean_q: torch.Tensor, log_std_q: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_p, std_p^2) || N(mean_q, std_q^2)), diagonal, summed over the last dimension."""
    var_ratio = torch.exp(2.0 * (log_std_p - log_std_q))
    mean_term = ((mean_p - mean_q) * torch.exp(-log_std_q)).pow(2)
    return 0.5 * (var_ratio + mean_term - 1.0 - torch.log(var_ratio)).sum(-1)


def semi_implicit_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Semi-implicit mixture estimate of ``log pi(x)`` (pre-squash) for every sample.

    ``x``: (B, M, d) samples, sample ``j`` drawn from component ``j`` (or any (B, K, d) points, scored
    against the M components: the mixture's log-density estimate there);
    ``mean``: (B, M, d) component means; ``log_std``: (B, 1, d) or (B, M, d).
    Each sample is scored against all M components (an M x M table):
    ``log pi_hat(x_j) = logsumexp_m log N(x_j; mean_m, std_m^2) - log M``.
    Because each sample's own component is in the sum, ``E[log pi_hat] >= E[log pi]``:
    the resulting entropy is a lower bound, tight as M grows; M = 1 is the conditional
    surrogate ``H(x | z)``.
    """
    m = mean.shape[1]
    table = gaussian_log_prob(x.unsqueeze(2), mean.unsqueeze(1), log_std.unsqueeze(1))  # (B, M, M)
    return torch.logsumexp(table, dim=2) - math.log(m)
