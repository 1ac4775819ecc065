"""The fit actor update's maths (docs/method.md, "The fit update"): OT pairing, importance weights,
energy score, coupled regression, and the learner switch."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

from smfp.config import ConfigError, TrainConfig
from smfp.policies.distributions import gaussian_log_prob, tanh_log_det
from smfp.update import Learner
from smfp.update.fit import (Candidates, _greedy_assignment, coupled_regression_loss, fit_candidates, ot_assignment,
                             systematic_resample, weighted_energy_score)

torch.set_num_threads(1)


def _cost(x, y, perm):
    return float((x - y[perm]).pow(2).sum())


def _brute_force(x, y):
    n = x.shape[0]
    return min(_cost(x, y, torch.tensor(p)) for p in itertools.permutations(range(n)))


# --- optimal-transport pairing -----------------------------------------------------------------------------
def test_ot_pairing_in_1d_is_a_permutation_and_optimal():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 6, 1, generator=g, dtype=torch.float64)
    y = torch.randn(5, 6, 1, generator=g, dtype=torch.float64) * 2.0 + 0.5
    perm = ot_assignment(x, y)
    for b in range(5):
        assert sorted(perm[b].tolist()) == list(range(6))
        assert _cost(x[b], y[b], perm[b]) == pytest.approx(_brute_force(x[b], y[b]), rel=1e-12)
        # monotone: the r-th smallest x is paired with the r-th smallest y
        order = torch.argsort(x[b, :, 0])
        assert torch.all(torch.diff(y[b, perm[b][order], 0]) >= 0)


def test_ot_pairing_on_a_small_hand_example():
    x = torch.tensor([[[0.0], [3.0], [1.0]]])
    y = torch.tensor([[[10.0], [-5.0], [2.0]]])
    assert ot_assignment(x, y)[0].tolist() == [1, 0, 2]  # 0 -> -5, 3 -> 10, 1 -> 2


@pytest.mark.parametrize("d", [2, 6])
def test_ot_pairing_in_several_dimensions_is_optimal(d):
    pytest.importorskip("scipy")
    g = torch.Generator().manual_seed(d)
    x = torch.randn(4, 6, d, generator=g, dtype=torch.float64)
    y = torch.randn(4, 6, d, generator=g, dtype=torch.float64)
    perm = ot_assignment(x, y)
    for b in range(4):
        assert sorted(perm[b].tolist()) == list(range(6))
        assert _cost(x[b], y[b], perm[b]) == pytest.approx(_brute_force(x[b], y[b]), rel=1e-9)


def test_greedy_fallback_is_a_permutation_that_no_swap_improves():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 8, 6, generator=g, dtype=torch.float64)
    y = torch.randn(16, 8, 6, generator=g, dtype=torch.float64)
    cost = (x.unsqueeze(2) - y.unsqueeze(1)).pow(2).sum(-1)
    perm = _greedy_assignment(cost)
    for b in range(16):
        assert sorted(perm[b].tolist()) == list(range(8))
        base = _cost(x[b], y[b], perm[b])
        for i, j in itertools.combinations(range(8), 2):
            swapped = perm[b].clone()
            swapped[[i, j]] = swapped[[j, i]]
            assert _cost(x[b], y[b], swapped) >= base - 1e-9


# --- importance weights -------------------------------------------------------------------------------------
def _quadratic(center):
    return lambda obs, a: -((a - center) ** 2).sum(-1)


def test_weights_are_self_normalised_and_equal_the_target_ratio_with_uniform_proposals():
    """Uniform proposals only, no mirror descent: w_i / w_j = exp((Q_i - Q_j) / alpha) exactly."""
    torch.manual_seed(0)
    b, m, d, alpha = 3, 4, 2, 0.3
    q = _quadratic(0.2)
    mean = torch.zeros(b, m, d, dtype=torch.float64)
    log_std = torch.zeros(b, 1, d, dtype=torch.float64)
    cand = fit_candidates(q, torch.zeros(b, 1, dtype=torch.float64), alpha, 0.0, None, (mean, log_std), 0, 0, 32, 2.0)
    torch.testing.assert_close(cand.w.sum(1), torch.ones(b, dtype=torch.float64))
    qv = q(None, torch.tanh(cand.x))
    want = torch.softmax(qv / alpha, dim=1)
    torch.testing.assert_close(cand.w, want, rtol=1e-5, atol=1e-9)
    assert 0.0 < float(cand.ess) <= 1.0


def test_weights_equal_the_mirror_descent_target_over_the_proposal_mixture():
    """Anchor = one Gaussian component (its mixture is exact), anchor + uniform proposals, lambda > 0:
    w ~ pi_k(a)^(lambda/(alpha+lambda)) exp(Q(a)/(alpha+lambda)) / q(a), q = 1/2 pi_k + 1/2 2^-d."""
    torch.manual_seed(1)
    b, d, alpha, lam = 2, 1, 0.2, 0.2
    q = _quadratic(-0.3)
    a_mean = torch.full((b, 1, d), 0.4, dtype=torch.float64)
    a_log_std = torch.full((b, 1, d), math.log(0.5), dtype=torch.float64)
    cand = fit_candidates(q, torch.zeros(b, 1, dtype=torch.float64), alpha, lam, (a_mean, a_log_std),
                          (a_mean, a_log_std), 16, 0, 16, 2.0)
    x = cand.x
    log_anchor = gaussian_log_prob(x, a_mean, a_log_std) - tanh_log_det(x).sum(-1)  # density of a = tanh(x)
    log_q = torch.logaddexp(log_anchor + math.log(0.5), torch.full_like(log_anchor, math.log(0.5) - d * math.log(2)))
    beta, temp = lam / (alpha + lam), alpha + lam
    want = torch.softmax(beta * log_anchor + q(None, torch.tanh(x)) / temp - log_q, dim=1)
    torch.testing.assert_close(cand.w, want, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(cand.w.sum(1), torch.ones(b, dtype=torch.float64))


def test_weighted_candidates_reproduce_a_known_target_mean():
    """Self-normalised importance sampling is consistent: the weighted mean of the candidates' actions
    approaches the target's mean (exp(Q/alpha) on [-1, 1], by quadrature)."""
    torch.manual_seed(2)
    alpha, center = 0.25, 0.35
    q = _quadratic(center)
    b, m = 512, 8
    mean = torch.randn(b, m, 1, dtype=torch.float64) * 0.5
    log_std = torch.full((b, 1, 1), math.log(0.3), dtype=torch.float64)
    cand = fit_candidates(q, torch.zeros(b, 1, dtype=torch.float64), alpha, 0.0, None, (mean, log_std), 16, 8, 8, 2.0)
    got = float((cand.w * torch.tanh(cand.x[..., 0])).sum(1).mean())
    grid = torch.linspace(-1, 1, 20001, dtype=torch.float64)
    dens = torch.exp(-(grid - center) ** 2 / alpha)
    want = float((grid * dens).sum() / dens.sum())
    assert got == pytest.approx(want, abs=0.01)


# --- energy score --------------------------------------------------------------------------------------------
def _two_point(p_left, n=600, left=-0.5, right=0.5, shift=0.0):
    k = round(p_left * n)
    return torch.cat([torch.full((k,), left), torch.full((n - k,), right)]).reshape(1, n, 1).double() + shift


def test_energy_score_is_minimised_by_the_target():
    """Target: 2/3 at -0.5, 1/3 at +0.5 (weights on two candidates). Among two-point policies the score is
    lowest at the target's proportions and position, and a spread-out policy scores worse."""
    y = torch.tensor([[[-0.5], [0.5]]], dtype=torch.float64)
    w = torch.tensor([[2.0 / 3.0, 1.0 / 3.0]], dtype=torch.float64)
    at_target = float(weighted_energy_score(_two_point(2.0 / 3.0), y, w))
    for p in (0.0, 0.3, 0.5, 0.6, 0.75, 0.9, 1.0):
        assert float(weighted_energy_score(_two_point(p), y, w)) > at_target
    for shift in (-0.2, -0.05, 0.05, 0.2):
        assert float(weighted_energy_score(_two_point(2.0 / 3.0, shift=shift), y, w)) > at_target
    spread = torch.linspace(-1, 1, 600, dtype=torch.float64).reshape(1, 600, 1)
    assert float(weighted_energy_score(spread, y, w)) > at_target


def test_energy_score_gradient_moves_samples_toward_the_target():
    y = torch.tensor([[[0.5]]], dtype=torch.float64)
    w = torch.ones(1, 1, dtype=torch.float64)
    a = torch.tensor([[[-0.4], [-0.2], [0.1], [0.3]]], dtype=torch.float64, requires_grad=True)
    weighted_energy_score(a, y, w).backward()
    # the samples' repulsion cancels in the sum; the pull toward the target is -1/M per sample: the cloud moves right
    assert float(a.grad.sum()) == pytest.approx(-1.0)
    assert float(a.grad[0, -1, 0]) < 0


# --- resampling and the coupled regression ---------------------------------------------------------------------
def test_systematic_resampling_counts_are_within_one_of_n_w():
    torch.manual_seed(0)
    w = torch.softmax(torch.randn(50, 12, dtype=torch.float64), dim=1)
    idx = systematic_resample(w, 8)
    counts = torch.zeros(50, 12, dtype=torch.float64).scatter_add_(1, idx, torch.ones(50, 8, dtype=torch.float64))
    assert bool(((counts - 8 * w).abs() < 1.0 + 1e-9).all())


def test_coupled_regression_pairs_sorted_noises_with_sorted_targets_and_pulls_means_toward_them():
    torch.manual_seed(0)
    b, n = 4, 8
    x = torch.randn(b, 16, 1, dtype=torch.float64)
    cand = Candidates(x, torch.full((b, 16), 1 / 16, dtype=torch.float64), torch.ones(()), torch.zeros(b, 16))
    noise = torch.randn(b, n, 1, dtype=torch.float64)
    mean = torch.zeros(b, n, 1, dtype=torch.float64, requires_grad=True)
    loss, delta = coupled_regression_loss(mean, noise, cand)
    partner = (mean + delta).detach()
    for s in range(b):
        order = torch.argsort(noise[s, :, 0])
        assert torch.all(torch.diff(partner[s, order, 0]) >= 0)  # monotone in the noise
        assert all(any(torch.isclose(p, x[s, :, 0]).tolist()) for p in partner[s, :, 0])  # partners are candidates
    loss.backward()
    torch.testing.assert_close(torch.sign(-mean.grad), torch.sign(delta))  # each mean moves toward its partner
    l2, _ = coupled_regression_loss(mean.detach(), noise, cand, norm="l2")
    assert float(l2) > 0


# --- the learner switch ------------------------------------------------------------------------------------------
def _learner(algo="smfp", **update):
    cfg = TrainConfig(algo=algo, run_dir="unused")
    cfg.update = dataclasses.replace(cfg.update, alpha=0.2, autotune_alpha=False, **update)
    torch.manual_seed(0)
    return Learner(cfg.resolved(), obs_dim=3, act_dim=2)


@pytest.mark.parametrize("update,loss,noises", [("fit", "coupled", 0), ("fit", "energy", 0), ("hybrid", "coupled", 0),
                                                ("hybrid", "energy", 0), ("hybrid", "coupled", 16),
                                                ("fit", "energy", 16)])
def test_fit_actor_step_is_finite_and_logs_the_ess(update, loss, noises):
    learner = _learner(actor_update=update, fit_loss=loss, fit_noises=noises)
    q = lambda obs, a: -((a - 0.3) ** 2).sum(-1)  # noqa: E731
    before = [p.detach().clone() for p in learner.policy.parameters()]
    out = learner.actor_step(torch.randn(64, 3), q)
    assert out is not None and math.isfinite(float(out["loss"].detach()))
    assert 0.0 < float(out["fit"]["ess"]) <= 1.0
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.policy.parameters()))


def test_reparam_stays_the_default_and_fit_needs_a_mixture_policy():
    assert TrainConfig().update.actor_update == "reparam"
    with pytest.raises(ConfigError, match="mixture"):
        _learner("sac", actor_update="fit")
    with pytest.raises(ConfigError, match="--fit-anchor"):
        _learner(actor_update="fit", fit_anchor=0, fit_local=0, fit_uniform=0)
    with pytest.raises(ConfigError, match="--fit-noises"):
        _learner(actor_update="fit", fit_noises=1)
