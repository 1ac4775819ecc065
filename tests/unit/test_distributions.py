"""Density maths (docs/method.md): tanh log-det, Gaussian KL, the semi-implicit surrogate."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.func import jacrev, vmap

from smfp.policies import GaussianPolicy, SMFPPolicy
from smfp.policies.base import Policy
from smfp.policies.distributions import gaussian_kl, tanh_log_det
from smfp.update.losses import actor_loss

torch.set_num_threads(1)


# --- tanh log-det ---------------------------------------------------------------------------------
def test_tanh_log_det_finite_at_large_x_and_exact():
    x = torch.tensor([-20.0, -12.0, 12.0, 20.0])  # float32: the naive form is -inf here
    naive = torch.log(1.0 - torch.tanh(x).pow(2))
    assert torch.isinf(naive).all()
    stable = tanh_log_det(x)
    assert torch.isfinite(stable).all()
    # log(1 - tanh^2 x) = -2 log cosh x = -2 (|x| - log 2 + log(1 + exp(-2|x|)))
    exact = -2.0 * (x.double().abs() - math.log(2.0) + torch.log1p(torch.exp(-2.0 * x.double().abs())))
    torch.testing.assert_close(stable.double(), exact, rtol=1e-6, atol=1e-5)
    # gradient is finite too (it is used inside the actor loss)
    xg = x.clone().requires_grad_(True)
    tanh_log_det(xg).sum().backward()
    assert torch.isfinite(xg.grad).all()
    torch.testing.assert_close(xg.grad, -2.0 * torch.tanh(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tanh_log_det_matches_naive_where_finite(dtype):
    x = torch.linspace(-6.0, 6.0, 2001, dtype=dtype)
    naive = torch.log(1.0 - torch.tanh(x).pow(2))
    assert torch.isfinite(naive).all()
    # float32's naive form loses digits as tanh -> 1; compare with a tolerance scaled to that loss
    tol = 1e-10 if dtype == torch.float64 else 2e-3
    torch.testing.assert_close(tanh_log_det(x), naive, rtol=tol, atol=tol)


# --- Gaussian KL ----------------------------------------------------------------------------------
def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mp, mq = torch.randn(50, 3, generator=g, dtype=torch.float64), torch.randn(50, 3, generator=g, dtype=torch.float64)
    lp, lq = torch.randn(50, 3, generator=g, dtype=torch.float64), torch.randn(50, 3, generator=g, dtype=torch.float64)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mp, lp.exp()),
                                            torch.distributions.Normal(mq, lq.exp())).sum(-1)
    torch.testing.assert_close(gaussian_kl(mp, lp, mq, lq), ref, rtol=1e-10, atol=1e-12)
    assert (gaussian_kl(mp, lp, mp, lp).abs() < 1e-12).all()


def _normal(mean, log_std):
    return torch.distributions.Independent(torch.distributions.Normal(mean, log_std.exp()), 1)


def test_actor_loss_kl_is_the_shared_noise_gaussian_kl():
    """The KL term of the actor loss: per noise z, the closed-form KL between the two components at the SAME z."""
    torch.manual_seed(0)
    obs = torch.randn(6, 3, dtype=torch.float64)
    zero_q = lambda o, a: torch.zeros(a.shape[0], dtype=a.dtype)  # noqa: E731

    # SMFP: anchor = perturbed copy; recompute the KL with torch.distributions at the sample's own noises
    pol = SMFPPolicy(3, 2, hidden=(32, 32), sigma_hidden=(16,)).double()
    anchor = copy.deepcopy(pol)
    with torch.no_grad():
        for p in anchor.parameters():
            p.add_(0.1 * torch.randn_like(p))
    _, smp, kl, _ = actor_loss(pol, zero_q, anchor, obs, 0.0, 1.0, components=5)
    with torch.no_grad():
        mean_k, log_std_k = anchor.components(obs, smp.noise)
    ref = torch.distributions.kl_divergence(_normal(smp.mean.detach(), smp.log_std.detach().expand_as(smp.mean)),
                                            _normal(mean_k, log_std_k.expand_as(mean_k))).mean()
    torch.testing.assert_close(kl.detach(), ref, rtol=1e-9, atol=1e-12)
    assert float(kl.detach()) > 1e-4  # the perturbation is visible

    # Gaussian: the shared-noise KL is the exact KL between the two policies
    gp = GaussianPolicy(3, 2, hidden=(32,)).double()
    ga = copy.deepcopy(gp)
    with torch.no_grad():
        for p in ga.parameters():
            p.add_(0.2 * torch.randn_like(p))
    _, _, kl_g, _ = actor_loss(gp, zero_q, ga, obs, 0.0, 1.0, components=1)
    with torch.no_grad():
        m1, s1 = gp._heads(obs)
        m2, s2 = ga._heads(obs)
    exact = torch.distributions.kl_divergence(_normal(m1, s1), _normal(m2, s2)).mean()
    torch.testing.assert_close(kl_g.detach(), exact, rtol=1e-9, atol=1e-12)


def _mixture_log_density(x, means, std, weights):
    """log sum_k w_k N(x; means_k, std^2) (1-D), x (N,), means (K,), weights (K,)."""
    comp = torch.distributions.Normal(means, std).log_prob(x.unsqueeze(-1))
    return torch.logsumexp(comp + weights.log(), dim=-1)


def test_shared_noise_kl_upper_bounds_marginal_kl_bimodal():
    """Joint convexity: KL(p||q) between the marginals <= E_z KL(p(.|z) || q(.|z)).

    A small bimodal 1-D example: z ~ N(0, 1), component means mu(z) = 1.2 tanh(3 z) (two modes at +-1.2)
    and an anchor mu_k(z) = 1.2 tanh(3 z + 0.8) + 0.1 with a different std. Marginals by quadrature over z
    (dense grid), marginal KL by Monte Carlo over x ~ p.
    """
    g = torch.Generator().manual_seed(0)
    dt = torch.float64
    zs = torch.linspace(-6, 6, 801, dtype=dt)
    w = torch.exp(-0.5 * zs ** 2)
    w = w / w.sum()
    mu_p = lambda z: 1.2 * torch.tanh(3.0 * z)  # noqa: E731
    mu_q = lambda z: 1.2 * torch.tanh(3.0 * z + 0.8) + 0.1  # noqa: E731
    s_p, s_q = 0.25, 0.3
    # Monte-Carlo marginal KL
    n = 10_000
    z = torch.randn(n, generator=g, dtype=dt)
    x = mu_p(z) + s_p * torch.randn(n, generator=g, dtype=dt)
    log_p = _mixture_log_density(x, mu_p(zs), s_p, w)
    log_q = _mixture_log_density(x, mu_q(zs), s_q, w)
    diffs = log_p - log_q
    kl_marginal, se = float(diffs.mean()), float(diffs.std() / math.sqrt(n))
    # shared-noise KL with the library's closed form, Monte Carlo over z
    zz = torch.randn(n, 1, generator=g, dtype=dt)
    kl_shared_t = gaussian_kl(mu_p(zz), torch.full_like(zz, math.log(s_p)), mu_q(zz), torch.full_like(zz, math.log(s_q)))
    kl_shared, se_shared = float(kl_shared_t.mean()), float(kl_shared_t.std() / math.sqrt(n))
    print(f"bimodal example: marginal KL {kl_marginal:.4f} +- {se:.4f}, shared-noise KL {kl_shared:.4f} +- {se_shared:.4f}")
    assert kl_marginal > 0.0
    assert kl_marginal + 4 * se < kl_shared - 4 * se_shared

    # Re-indexing the noise (mu_k(z) = mu(-z)) leaves the marginal unchanged but not the shared-noise KL:
    # the bound is conservative, never below the marginal KL.
    kl_perm = float(gaussian_kl(mu_p(zz), torch.full_like(zz, math.log(s_p)), mu_p(-zz),
                                torch.full_like(zz, math.log(s_p))).mean())
    assert kl_perm > 10.0


# --- semi-implicit surrogate vs the exact change-of-variables density ----------------------------
class _MapPolicy(Policy):
    """A policy whose component means are a known injective map of the noise, constant output std."""

    def __init__(self, dim: int, fn, sigma: float):
        super().__init__(1, dim)
        self.fn, self.sigma = fn, sigma
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def component_means(self, obs, noise):
        return self.fn(noise)

    def log_std(self, obs):
        return torch.full((obs.shape[0], self.act_dim), math.log(self.sigma), dtype=obs.dtype)


def _map_1d(z):  # strictly increasing (derivative in [0.6, 1.56]): injective, two bumps in its density
    return 0.6 * (z + 0.8 * torch.tanh(2.0 * z))


_W = torch.tensor([[0.8, 0.6], [-0.6, 0.8]], dtype=torch.float64)  # orthogonal
_B = torch.tensor([0.3, -0.2], dtype=torch.float64)


def _map_2d(z):  # z + g(z) with Lip(g) <= 0.9 < 1: injective (Banach), non-linear, rotated
    return 0.5 * (z + 0.45 * torch.tanh(2.0 * (z @ _W.T) + _B))


def _exact_log_density(fn, x):
    """log N(z) - log|det d fn / d z| at z = fn^{-1}(x) (Newton on the batched Jacobian)."""
    jac = vmap(jacrev(fn))
    z = x / 0.6
    for _ in range(60):
        z = z - torch.linalg.solve(jac(z), (fn(z) - x).unsqueeze(-1)).squeeze(-1)
    assert float((fn(z) - x).abs().max()) < 1e-9
    sign, logabsdet = torch.linalg.slogdet(jac(z))
    assert (sign > 0).all()
    return (-0.5 * z.pow(2) - 0.5 * math.log(2.0 * math.pi)).sum(-1) - logabsdet


@pytest.mark.parametrize("dim,fn,sigma", [(1, _map_1d, 0.1), (1, _map_1d, 0.03), (2, _map_2d, 0.1)])
def test_semi_implicit_surrogate_approaches_exact_density(dim, fn, sigma):
    """Gap ``log pi_hat(a) - log pi(a)`` (pi: exact change of variables incl. the tanh log-det) shrinks with M.

    Its mean is >= 0 (the surrogate's entropy is a lower bound) and, with sigma small, goes to ~0 as M grows.
    """
    pol = _MapPolicy(dim, fn, sigma).double()
    torch.manual_seed(1)
    mean_gap, abs_gap = [], []
    ms = (1, 8, 64, 512, 2048)
    for m in ms:
        reps = max(2, 4096 // m)
        smp = pol.sample(torch.zeros(reps, 1, dtype=torch.float64), m)
        x = smp.pre_squash.reshape(-1, dim)
        exact = _exact_log_density(fn, x) - tanh_log_det(x).sum(-1)
        gap = smp.log_prob.reshape(-1) - exact
        mean_gap.append(float(gap.mean()))
        abs_gap.append(float(gap.abs().mean()))
    print(f"d={dim} sigma={sigma}: M={ms} mean gap {[round(v, 4) for v in mean_gap]} "
          f"mean |gap| {[round(v, 4) for v in abs_gap]}")
    assert all(a > b for a, b in zip(abs_gap, abs_gap[1:])), abs_gap
    assert all(a > b for a, b in zip(mean_gap, mean_gap[1:])), mean_gap
    assert all(g > -0.01 for g in mean_gap)  # E[log pi_hat] >= E[log pi] (up to Monte-Carlo error)
    assert mean_gap[0] > 1.0  # M = 1 is far off ...
    assert mean_gap[-1] < 0.05  # ... M = 2048 is close
    assert abs_gap[-1] < 0.2
