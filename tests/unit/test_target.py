"""The critic's soft-greedy target ``exp(Q/alpha)`` (``smfp.monitor.target``): its modes and masses on known Q
functions, on the grid (d <= 2) and by importance sampling (d > 2), and the policy's distance to it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from smfp.monitor.modes import sample_actions
from smfp.monitor.target import assess_target, target_verdict
from smfp.policies import GaussianPolicy


class KnownQ:
    """A critic stand-in: ``min_q(obs, act)`` is a known function of the action."""

    def __init__(self, fn):
        self.fn = fn

    def min_q(self, obs, act):
        return self.fn(act.double()).float()


def bumps(centres, heights, width=0.12):
    def fn(a):
        q = torch.stack([h - ((a - torch.as_tensor(c, dtype=a.dtype)) ** 2).sum(-1) / (2 * width ** 2)
                         for c, h in zip(centres, heights)])
        return q.max(dim=0).values
    return fn


def _assess(q, d, alpha=1.0, seed=0):
    torch.manual_seed(seed)
    policy = GaussianPolicy(obs_dim=1, act_dim=d, hidden=(8,))
    obs = np.zeros(1, np.float32)
    actions = sample_actions(policy, obs, 4000)[0]
    return assess_target(policy, KnownQ(q), obs, alpha, np.random.default_rng(seed), actions, 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_unequal_bumps_on_the_grid_give_two_modes_with_their_masses(seed):
    # exp(Q) of two equal-width bumps with heights differing by log 2: masses 2/3 and 1/3
    rep = _assess(bumps([[-0.5], [0.5]], [math.log(2.0), 0.0]), d=1, seed=seed)
    assert rep.method == "grid" and rep.modes == 2
    assert sorted(rep.masses, reverse=True) == pytest.approx([2 / 3, 1 / 3], abs=0.05)
    assert rep.policy_modes == 1 and rep.tv_to_target > 0.3  # a Gaussian around 0 sits in the valley


def test_one_bump_in_two_dimensions_is_unimodal_and_a_matching_policy_is_close():
    rep = _assess(bumps([[0.3, -0.3]], [0.0], width=0.3), d=2)
    assert rep.method == "grid" and rep.modes == 1
    assert target_verdict([rep]).startswith("the critic's target is unimodal")


def test_five_peaks_in_two_dimensions():
    centres = [[-0.6, -0.6], [-0.6, 0.6], [0.6, -0.6], [0.6, 0.6], [0.0, 0.0]]
    rep = _assess(bumps(centres, [0.0] * 5, width=0.1), d=2)
    assert rep.modes == 5 and all(abs(m - 0.2) < 0.05 for m in rep.masses)
    assert "5 modes at 100% of probed states" in target_verdict([rep])


@pytest.mark.parametrize("seed", [0, 1])
def test_above_two_dimensions_importance_sampling_finds_two_modes_along_one_axis(seed):
    # bimodal along the first axis, one broad bump in the other five
    def q(a):
        first = bumps([[-0.6], [0.6]], [0.0, 0.0], width=0.15)(a[:, :1])
        return first - (a[:, 1:] ** 2).sum(-1) / (2 * 0.4 ** 2)

    rep = _assess(q, d=6, seed=seed)
    assert rep.method == "importance" and rep.ess is not None and rep.ess > 50
    assert rep.modes == 2 and all(abs(m - 0.5) < 0.1 for m in rep.masses)
    centres = sorted(c[0] for c in rep.centers)
    assert centres[0] < -0.4 and centres[1] > 0.4


class FixedSamples:
    """A policy stand-in for ``assess_target``: only its samples are read on the grid path."""


@pytest.mark.parametrize("d, tv_max", [(1, 0.018), (2, 0.045)])
def test_exact_samples_of_a_target_piled_at_the_box_edge_are_close_to_it(d, tv_max):
    # Q rising linearly to the edge of the box in every dimension (the shape of MultiGoal's target at the start:
    # the fastest move toward a goal is best): exp(Q / alpha) is a product of truncated exponentials, drawn exactly
    # by inverting their CDF. The histogram TV of 20 000 exact draws is sampling noise only (0.009-0.011 in 1-D,
    # 0.021-0.025 in 2-D over five seeds); the target's bins must be integrated over each bin (midpoint rule): a grid
    # point on a bin edge counted in one bin, and a point on the box edge counted for a whole cell, read 0.022-0.026
    # (1-D) and 0.070-0.079 (2-D) for an exact sampler here.
    rate = 5.0  # Q / alpha = rate * sum(a)
    rng = np.random.default_rng(0)
    u = rng.uniform(size=(20_000, d))
    exact = 1.0 + np.log(u + (1.0 - u) * math.exp(-2.0 * rate)) / rate  # inverse CDF on [-1, 1]
    q = KnownQ(lambda a: rate * a.sum(-1))
    rep = assess_target(FixedSamples(), q, np.zeros(1, np.float32), 1.0, np.random.default_rng(1), exact, 1)
    assert rep.method == "grid" and rep.modes == 1
    assert rep.tv_to_target < tv_max
    assert np.all(np.abs(rep.draws) <= 1.0)


class KnownEnsemble(KnownQ):
    """Two critics: ``fn`` plus and minus ``spread`` / 2; called as a ``QEnsemble`` is, (num_q, n, 1)."""

    def __init__(self, fn, spread):
        super().__init__(lambda a: fn(a) - spread / 2)
        self.mean, self.spread = fn, spread

    def __call__(self, obs, act):
        q = self.mean(act.double())
        return torch.stack([q - self.spread / 2, q + self.spread / 2]).float().unsqueeze(-1)


def _assess_ensemble(fn, spread, noise_factor, alpha, d=1):
    torch.manual_seed(0)
    policy = GaussianPolicy(obs_dim=1, act_dim=d, hidden=(8,))
    obs = np.zeros(1, np.float32)
    actions = sample_actions(policy, obs, 4000)[0]
    return assess_target(policy, KnownEnsemble(fn, spread), obs, alpha, np.random.default_rng(0), actions, 1,
                         noise_factor=noise_factor)


def shallow_pair(depth):
    """Two equal peaks at -0.5 and 0.5 with a dip of ``depth`` between them (a cosine along the action)."""
    def fn(a):
        x = a[:, 0]
        return -depth * (1 - torch.cos(2 * math.pi * (x - 0.5))) / 2 - 0.3 * (x.abs() - 0.5).clamp(min=0)
    return fn


def test_a_dip_within_the_critics_disagreement_is_one_mode_only_with_the_noise_factor():
    # a small temperature makes a 0.2 dip a clear valley of exp(Q / alpha); the critics disagree by 0.5
    fn = shallow_pair(0.2)
    assert _assess_ensemble(fn, 0.5, 0.0, alpha=0.05).modes == 2  # the rule without the switch
    merged = _assess_ensemble(fn, 0.5, 1.0, alpha=0.05)
    assert merged.modes == 1 and merged.masses == [pytest.approx(1.0, abs=0.01)]


def test_a_dip_far_deeper_than_the_disagreement_keeps_both_modes():
    rep = _assess_ensemble(shallow_pair(3.0), 0.5, 2.0, alpha=0.5)
    assert rep.modes == 2 and sorted(rep.masses) == [pytest.approx(0.5, abs=0.08)] * 2
