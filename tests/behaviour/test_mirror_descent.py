"""Entropic mirror descent (docs/method.md) on one-state bandits: exact target, and restraint of SMFP."""

from __future__ import annotations

import pytest
import torch

from smfp.bench.acceptance.bandit import (double_well_q, md_gaussian_target, optimise, presquash_quadratic_q,
                               set_constant_gaussian, shared_noise_kl)
from smfp.policies import GaussianPolicy, SMFPPolicy

torch.set_num_threads(1)


@pytest.mark.parametrize("md_lambda", [1.0, 4.0])
def test_mirror_descent_target_exact_for_gaussian(md_lambda):
    """argmin of the actor loss = pi_k^(lambda/(alpha+lambda)) exp(Q/(alpha+lambda)), mean and std within 2%.

    Q is a quadratic in the PRE-squash variable x = atanh(a), plus alpha * log(1 - a^2) which cancels the tanh
    log-det of the policy's log-density (``presquash_quadratic_q``); the KL term is squash-invariant. The
    optimum is then exactly Gaussian in x: precisions add (beta / s_k^2 + c / (alpha + lambda)).
    """
    alpha, center, curvature = 0.5, 1.2, 2.0
    anchor_mean, anchor_std = 0.2, 0.4
    want_mean, want_std = md_gaussian_target(anchor_mean, anchor_std, center, curvature, alpha, md_lambda)
    torch.manual_seed(0)
    anchor = set_constant_gaussian(GaussianPolicy(1, 1, hidden=(16,)).double(), anchor_mean, anchor_std)
    pol = GaussianPolicy(1, 1, hidden=(16,)).double()
    q = presquash_quadratic_q(center, curvature, alpha)
    optimise(pol, q, alpha, md_lambda, anchor=anchor, steps=800, components=1, states=512, lr=1e-2,
             anchor_period=0, final_lr_fraction=0.01)
    obs = torch.zeros(1, 1, dtype=torch.float64)
    with torch.no_grad():
        mean, log_std = pol.components(obs, pol.draw_noise(1, 1, obs))
    got_mean, got_std = float(mean), float(log_std.exp())
    err_mean, err_std = abs(got_mean / want_mean - 1), abs(got_std / want_std - 1)
    print(f"lambda={md_lambda}: closed form mean {want_mean:.4f} std {want_std:.4f}; optimised mean {got_mean:.4f} "
          f"std {got_std:.4f}; relative errors {err_mean:.4f}, {err_std:.4f}")
    # the answer differs from both the anchor and exp(Q/alpha) (so the test can tell them apart)
    assert abs(want_mean - anchor_mean) > 0.05 and abs(want_mean - center) > 0.3
    assert err_mean < 0.02 and err_std < 0.02


def test_mirror_descent_restrains_smfp():
    """Anchor = copy of the initial SMFP policy, kept fixed; after the same steps, KL to it falls strictly with lambda."""
    q = double_well_q(depth=10.0)
    kls = {}
    for md_lambda in (0.0, 1.0, 10.0):
        torch.manual_seed(0)
        pol = SMFPPolicy(1, 1, hidden=(64, 64), sigma_hidden=(32,))
        res = optimise(pol, q, 0.5, md_lambda, anchor="copy", steps=300, components=8, states=32, lr=1e-3,
                       anchor_period=0)
        torch.manual_seed(123)
        kls[md_lambda] = shared_noise_kl(pol, res.anchor, n=8192)
    print("shared-noise KL to the initial policy after 300 steps:", {k: round(v, 4) for k, v in kls.items()})
    assert kls[0.0] > kls[1.0] > kls[10.0] > 0.0
