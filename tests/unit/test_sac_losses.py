"""SAC loss pieces against hand computations and torch.distributions."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence
from torch.distributions.transforms import TanhTransform

from smfp.buffer import Batch, ReplayBuffer
from smfp.config import ConfigError, TrainConfig
from smfp.critic import QEnsemble
from smfp.policies import GaussianPolicy
from smfp.policies.distributions import tanh_log_det
from smfp.update import Learner
from smfp.update.losses import actor_loss, critic_loss, soft_target

OBS, ACT = 3, 2


def hand_q(ens: QEnsemble, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """Q (E, B) by explicit per-member matrix products (no baddbmm)."""
    out = []
    for e in range(ens.num_q):
        h = torch.cat([obs, act], dim=-1)
        for i, (w, b) in enumerate(zip(ens.weights, ens.biases)):
            h = h @ w[e] + b[e, 0]
            if i < len(ens.weights) - 1:
                h = h.clamp_min(0.0)
        out.append(h[:, 0])
    return torch.stack(out)


def hand_heads(policy: GaussianPolicy, obs: torch.Tensor):
    """Mean and log-std of the Gaussian policy, recomputed from its network output."""
    out = policy.net(obs)
    mean, raw = out[:, :ACT], out[:, ACT:]
    lo, hi = policy.log_std_min, policy.log_std_max
    return mean, lo + (hi - lo) * (torch.tanh(raw) + 1.0) / 2.0


def tiny_batch(b: int = 5, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(obs=torch.randn(b, OBS, generator=g), action=torch.rand(b, ACT, generator=g) * 2 - 1,
                 reward=torch.randn(b, generator=g), next_obs=torch.randn(b, OBS, generator=g),
                 terminated=torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0])[:b])


def test_gaussian_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    policy = GaussianPolicy(OBS, ACT, hidden=(16,))
    obs = torch.randn(64, OBS) * 3
    smp = policy.sample(obs, 1)
    assert smp.action.shape == (64, 1, ACT) and smp.log_prob.shape == (64, 1)
    x = smp.pre_squash[:, 0]
    torch.testing.assert_close(smp.action[:, 0], torch.tanh(x))

    mean, log_std = hand_heads(policy, obs)
    torch.testing.assert_close(smp.mean[:, 0], mean)
    torch.testing.assert_close(smp.log_std[:, 0], log_std)
    assert (log_std >= policy.log_std_min).all() and (log_std <= policy.log_std_max).all()

    base = Independent(Normal(mean.double(), log_std.double().exp()), 1)
    jac = TanhTransform().log_abs_det_jacobian(x.double(), torch.tanh(x.double())).sum(-1)
    expected = base.log_prob(x.double()) - jac
    torch.testing.assert_close(smp.log_prob[:, 0].double(), expected, rtol=1e-5, atol=1e-4)
    # the textbook form of the correction, log(1 - tanh(x)^2), agrees too
    textbook = base.log_prob(x.double()) - torch.log1p(-torch.tanh(x.double()) ** 2).sum(-1)
    torch.testing.assert_close(smp.log_prob[:, 0].double(), textbook, rtol=1e-5, atol=1e-4)


def test_gaussian_policy_draws_one_component_whatever_m():
    policy = GaussianPolicy(OBS, ACT, hidden=(8,))
    assert policy.sample(torch.randn(4, OBS), 8).action.shape == (4, 1, ACT)


def test_tanh_log_det_is_finite_and_exact_for_large_inputs():
    x = torch.tensor([-40.0, -9.5, -2.0, 0.0, 0.7, 9.5, 40.0])
    got = tanh_log_det(x)
    assert torch.isfinite(got).all()
    xd = x.double().abs()
    exact = 2.0 * (math.log(2.0) - xd - torch.log1p(torch.exp(-2.0 * xd)))  # log sech^2, stable form
    torch.testing.assert_close(got.double(), exact, rtol=1e-6, atol=1e-5)


def test_soft_target_matches_hand_computation():
    torch.manual_seed(1)
    policy = GaussianPolicy(OBS, ACT, hidden=(8,))
    target = QEnsemble(OBS, ACT, (8,), 2)
    batch = tiny_batch()
    alpha, gamma = torch.tensor(0.3), 0.9

    torch.manual_seed(123)
    y = soft_target(policy, target, batch, alpha, gamma, components=1)
    torch.manual_seed(123)
    with torch.no_grad():
        smp = policy.sample(batch.next_obs, 1)  # the same draw a' ~ pi(.|s')
        x = smp.pre_squash[:, 0].double()
        mean, log_std = hand_heads(policy, batch.next_obs)
        logp = (Normal(mean.double(), log_std.double().exp()).log_prob(x)
                - torch.log1p(-torch.tanh(x) ** 2)).sum(-1)
        q = hand_q(target, batch.next_obs, torch.tanh(x).float()).double()
    r, d = batch.reward.double(), batch.terminated.double()
    expected = r + gamma * (1.0 - d) * (torch.minimum(q[0], q[1]) - 0.3 * logp)
    assert y.shape == (5,) and not y.requires_grad
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)
    # terminated rows do not bootstrap: the target is the reward alone
    assert torch.equal(y[d.bool()], batch.reward[d.bool()])
    # a different temperature changes exactly the non-terminal rows
    torch.manual_seed(123)
    y0 = soft_target(policy, target, batch, torch.tensor(0.0), gamma, components=1)
    torch.testing.assert_close(y0.double() - y.double(), gamma * (1 - d) * 0.3 * logp, rtol=1e-4, atol=1e-5)


def test_critic_loss_value_and_grads_match_hand_computation():
    torch.manual_seed(2)
    critic = QEnsemble(OBS, ACT, (8, 8), 2)
    batch = tiny_batch()
    y = torch.randn(5)
    loss, q = critic_loss(critic, batch, y)
    params = list(critic.parameters())
    grads = torch.autograd.grad(loss, params)

    q_hand = hand_q(critic, batch.obs, batch.action)
    loss_hand = ((q_hand[0] - y) ** 2).mean() + ((q_hand[1] - y) ** 2).mean()
    grads_hand = torch.autograd.grad(loss_hand, params)
    torch.testing.assert_close(q.detach(), q_hand.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.detach(), loss_hand.detach(), rtol=1e-5, atol=1e-6)
    for g, gh in zip(grads, grads_hand):
        torch.testing.assert_close(g, gh, rtol=1e-4, atol=1e-6)


def test_actor_loss_with_known_q_and_mirror_descent_kl():
    torch.manual_seed(3)
    policy = GaussianPolicy(OBS, ACT, hidden=(8,))
    obs = torch.randn(6, OBS)

    def q_fn(o, a):  # a known value: best action 0.5 in every dimension
        return -((a - 0.5) ** 2).sum(-1) + o.sum(-1)

    torch.manual_seed(7)
    loss, smp, kl, _ = actor_loss(policy, q_fn, None, obs, 0.2, 0.0, 1)
    torch.manual_seed(7)
    ref = policy.sample(obs, 1)
    expected = (0.2 * ref.log_prob[:, 0] - q_fn(obs, ref.action[:, 0])).mean()
    torch.testing.assert_close(loss, expected)
    assert kl.item() == 0.0
    grads = torch.autograd.grad(loss, list(policy.parameters()))
    assert all(torch.isfinite(g).all() for g in grads) and sum(g.abs().sum() for g in grads) > 0

    anchor = copy.deepcopy(policy).requires_grad_(False)
    with torch.no_grad():
        for p in anchor.parameters():
            p.add_(0.1 * torch.randn_like(p))
    torch.manual_seed(7)
    loss_md, smp_md, kl_md, _ = actor_loss(policy, q_fn, anchor, obs, 0.2, 2.0, 1)
    m_a, s_a = hand_heads(anchor, obs)
    kl_ref = kl_divergence(Normal(smp_md.mean[:, 0], smp_md.log_std[:, 0].exp()), Normal(m_a, s_a.exp())).sum(-1)
    torch.testing.assert_close(kl_md, kl_ref.mean(), rtol=1e-5, atol=1e-6)
    assert kl_md.item() > 0
    torch.testing.assert_close(loss_md, expected + 2.0 * kl_ref.mean(), rtol=1e-5, atol=1e-6)


# --- the learner's update ------------------------------------------------------------------------

def tiny_learner(algo: str = "sac", **update) -> tuple[Learner, ReplayBuffer]:
    cfg = TrainConfig(algo=algo, run_dir="unused")
    cfg.policy.hidden = (16, 16)
    cfg.critic.critic_hidden = (16, 16)
    cfg.update.batch_size = 32
    for k, v in update.items():
        setattr(cfg.update, k, v)
    cfg = cfg.resolved()
    torch.manual_seed(0)
    learner = Learner(cfg, OBS, ACT)
    buf = ReplayBuffer(OBS, ACT, 256, seed=0)
    g = torch.Generator().manual_seed(1)
    for _ in range(256):
        buf.add(torch.randn(OBS, generator=g).numpy(), (torch.rand(ACT, generator=g) * 2 - 1).numpy(),
                torch.randn((), generator=g).item(), torch.randn(OBS, generator=g).numpy(), False)
    return learner, buf


@pytest.mark.parametrize("target_entropy, direction", [(10.0, +1), (-10.0, -1)])
def test_temperature_moves_toward_the_entropy_target(target_entropy, direction):
    """Entropy below the target raises alpha; above it lowers alpha (SAC's dual step)."""
    learner, buf = tiny_learner(target_entropy=target_entropy, alpha=0.5)
    before = learner.alpha.item()
    for _ in range(3):
        metrics = learner.update(buf.sample(32), with_metrics=True)
        # the entropy of a tanh-Gaussian in [-1, 1]^2 lies far from both targets
        assert -10.0 < metrics["train/entropy"].item() < 10.0
    after = learner.alpha.item()
    assert (after - before) * direction > 0, (before, after)


def test_lambda_per_alpha_follows_alpha_and_sets_the_actor_step():
    """--lambda-per-alpha: lambda = c * alpha at every update, so the closed-form step
    pi_k^(lambda/(alpha+lambda)) exp(Q/(alpha+lambda)) mixes anchor and exp(Q/alpha) in fixed proportions."""
    learner, buf = tiny_learner("mdpo", md_lambda=3.0, lambda_per_alpha=True, alpha=0.5, target_entropy=10.0)
    assert learner.md_lambda.item() == pytest.approx(1.5)
    for _ in range(3):
        metrics = learner.update(buf.sample(32), with_metrics=True)
        assert metrics["train/lambda"].item() == pytest.approx(3.0 * metrics["train/alpha"].item())
    assert learner.alpha.item() > 0.5 and learner.md_lambda.item() == pytest.approx(3.0 * learner.alpha.item())
    # the weight the anchor gets in the closed form does not move with alpha
    a, lam = learner.alpha.item(), learner.md_lambda.item()
    assert lam / (a + lam) == pytest.approx(0.75)
    with pytest.raises(ConfigError, match="choose one"):
        tiny_learner("mdpo", md_lambda=1.0, lambda_per_alpha=True, autotune_lambda=True)


def test_fixed_temperature_stays_put():
    learner, buf = tiny_learner(autotune_alpha=False, alpha=0.25)
    for _ in range(3):
        learner.update(buf.sample(32))
    assert learner.alpha.item() == pytest.approx(0.25)


def test_update_moves_targets_by_polyak_average_and_reports_metrics():
    learner, buf = tiny_learner(tau=0.1)
    target_before = [p.detach().clone() for p in learner.target_critic.parameters()]
    critic_before = [p.detach().clone() for p in learner.critic.parameters()]
    actor_before = [p.detach().clone() for p in learner.policy.parameters()]
    metrics = learner.update(buf.sample(32), with_metrics=True)
    for old_t, new_t, old_c, new_c in zip(target_before, learner.target_critic.parameters(), critic_before,
                                          learner.critic.parameters()):
        assert not torch.equal(old_c, new_c)  # the critic took a step
        torch.testing.assert_close(new_t, 0.9 * old_t + 0.1 * new_c, rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(a, b) for a, b in zip(actor_before, learner.policy.parameters()))
    assert learner.updates == 1
    for key in ("losses/critic", "losses/actor", "train/alpha", "train/entropy", "train/log_sigma_state_sd"):
        assert torch.isfinite(metrics[key]).all(), key
    assert metrics["train/log_sigma_state_sd"].item() > 0.0  # random states: a state-dependent log-std differs
    assert learner.update(buf.sample(32)) == {}


def test_mass_covering_term_trains_and_reports_its_effective_sample_size():
    """--cover-coef > 0 (opt-in): the update stays finite, logs the term and an ESS fraction in (0, 1]."""
    learner, buf = tiny_learner("smfp", cover_coef=1.0, cover_uniform=4, cover_per_state=2)
    before = [p.detach().clone() for p in learner.policy.parameters()]
    for _ in range(3):
        metrics = learner.update(buf.sample(32), with_metrics=True)
    assert math.isfinite(metrics["losses/cover"].item())
    assert 0.0 < metrics["train/cover_ess"].item() <= 1.0
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.policy.parameters()))
