"""One-state bandits with a known Q (``smfp.bench.acceptance.bandit``): the soft-improvement target and multimodality.

Q choice: the double well ``Q(a) = -10 (a^2 - 0.36)^2`` (two equal peaks at a = +-0.6; in 2-D the sum over
coordinates, four peaks at (+-0.6, +-0.6)) with alpha = 0.5: ``exp(Q/alpha)`` has peaks of std ~0.1 and a
valley 2.6 nats deep. SMFP (MLP 128-128 SiLU) is optimised with lambda = 0 (no anchor), M = 64 components x 4
groups = 256 samples per step, Adam 1e-3 decayed linearly to 1e-4 over 2000 steps.
"""

from __future__ import annotations

import pytest
import torch

from smfp.bench.acceptance.bandit import (bandit_obs, double_well_q, optimise, peak_shares, sample_actions, tv_to_boltzmann,
                               boltzmann_bins)
from smfp.policies import GaussianPolicy, SMFPPolicy

torch.set_num_threads(1)

ALPHA = 0.5
STEPS = 2000
M = 64
VALLEY = 0.3  # |a| < 0.3: the middle half between the two peaks


def _train_smfp(q, seed=0):
    torch.manual_seed(seed)
    pol = SMFPPolicy(1, q.dim, hidden=(128, 128))
    res = optimise(pol, q, ALPHA, 0.0, anchor=None, steps=STEPS, components=M, states=256 // M, lr=1e-3,
                   final_lr_fraction=0.1)
    return pol, res


@pytest.fixture(scope="module")
def smfp_1d():
    q = double_well_q(depth=10.0)
    pol, res = _train_smfp(q)
    print(f"\nSMFP 1-D bandit: {STEPS} steps in {res.seconds:.1f}s")
    return q, pol


def test_soft_improvement_target_smfp_vs_gaussian(smfp_1d):
    """lambda = 0, fixed alpha: SMFP's histogram matches exp(Q/alpha) (TV <= 0.1 on 40 bins); a Gaussian cannot."""
    q, pol = smfp_1d
    torch.manual_seed(100)
    tv_smfp = tv_to_boltzmann(sample_actions(pol, 50_000), q, ALPHA, bins=40)

    torch.manual_seed(0)
    gauss = GaussianPolicy(1, 1, hidden=(128, 128))
    res = optimise(gauss, q, ALPHA, 0.0, anchor=None, steps=1000, components=1, states=256, lr=1e-3,
                   final_lr_fraction=0.1)
    torch.manual_seed(100)
    tv_gauss = tv_to_boltzmann(sample_actions(gauss, 50_000), q, ALPHA, bins=40)
    print(f"TV to exp(Q/alpha), 40 bins: SMFP {tv_smfp:.3f}, Gaussian {tv_gauss:.3f} (Gaussian {res.seconds:.1f}s)")
    assert tv_smfp <= 0.1
    assert tv_gauss >= tv_smfp + 0.2


def test_bimodal_bandit_1d_peaks_and_best_of_n(smfp_1d):
    q, pol = smfp_1d
    torch.manual_seed(101)
    acts = sample_actions(pol, 50_000)
    shares = peak_shares(acts, q.peaks, radius=0.25)
    target = boltzmann_bins(q, ALPHA, bins=400)
    centers = -1.0 + (torch.arange(400, dtype=torch.float64) + 0.5) / 200
    target_shares = [float(target[(centers - p[0]).abs() <= 0.25].sum()) for p in q.peaks]
    print(f"share within 0.25 of -0.6/+0.6: SMFP {shares[0]:.3f}/{shares[1]:.3f} "
          f"(exp(Q/alpha): {target_shares[0]:.3f}/{target_shares[1]:.3f})")
    assert min(shares) >= 0.25

    # best-of-N (N = 16 noise-free candidates, keep the highest Q) never lands in the valley ...
    torch.manual_seed(102)
    best = sample_actions(pol, 5000, mode="best-of-n", q_fn=q, num_candidates=16)
    in_valley = float((best.abs() < VALLEY).float().mean())
    best_shares = peak_shares(best, q.peaks, radius=0.25)
    # ... whereas z = 0 (the "mean" noise) is a single deterministic point: report where it lands
    with torch.no_grad():
        z0 = float(torch.tanh(pol.transport(bandit_obs(1), torch.zeros(1, 1, 1)))[0, 0, 0])
    print(f"best-of-16: share in valley |a|<{VALLEY}: {in_valley:.4f}, near peaks {best_shares[0]:.3f}/"
          f"{best_shares[1]:.3f}; z=0 noise-free action: {z0:+.3f} ({'valley' if abs(z0) < VALLEY else 'peak side'})")
    assert in_valley == 0.0
    assert min(best_shares) > 0.2  # and it still uses both peaks


def test_bimodal_bandit_2d_four_corners():
    q = double_well_q(depth=10.0, dim=2)
    pol, res = _train_smfp(q)
    torch.manual_seed(103)
    acts = sample_actions(pol, 50_000)
    shares = peak_shares(acts, q.peaks, radius=0.25)
    tv = tv_to_boltzmann(acts, q, ALPHA, bins=20)
    torch.manual_seed(104)
    best = sample_actions(pol, 5000, mode="best-of-n", q_fn=q, num_candidates=16)
    in_valley = float((best.abs().min(dim=-1).values < VALLEY).float().mean())
    best_shares = peak_shares(best, q.peaks, radius=0.25)
    print(f"2-D corners ({res.seconds:.1f}s): shares {[round(s, 3) for s in shares]} TV(20x20) {tv:.3f}; best-of-16 "
          f"shares {[round(s, 3) for s in best_shares]}, in valley {in_valley:.4f}")
    assert min(shares) >= 0.1  # all four corners reached
    assert in_valley == 0.0
