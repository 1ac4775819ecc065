"""SMFP policy (docs/method.md): MeanFlow JVP, gradients, network calls per action."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from smfp.policies import SMFPPolicy

torch.set_num_threads(1)


def _policy(obs_dim=3, act_dim=2, seed=0, double=True):
    torch.manual_seed(seed)
    p = SMFPPolicy(obs_dim, act_dim, hidden=(32, 32), sigma_hidden=(16,))
    return p.double() if double else p


def test_meanflow_jvp_matches_central_difference():
    """The total derivative d/dt u(z_t, r, t) along (dz, dr, dt) = (v, 0, 1), i.e. (v, dt=1, dh=1) in the
    network's (t, h = t - r) inputs, computed with torch.func.jvp as in ``meanflow_loss``."""
    p = _policy()
    g = torch.Generator().manual_seed(1)
    b = 64
    obs = torch.randn(b, 3, generator=g, dtype=torch.float64)
    z_t = torch.randn(b, 2, generator=g, dtype=torch.float64)
    v = torch.randn(b, 2, generator=g, dtype=torch.float64)
    t = 0.2 + 0.7 * torch.rand(b, 1, generator=g, dtype=torch.float64)
    h = t * torch.rand(b, 1, generator=g, dtype=torch.float64)
    one = torch.ones_like(t)
    _, du = torch.func.jvp(lambda zt, tt, hh: p.u(obs, zt, tt, hh), (z_t, t, h), (v, one, one))
    eps = 1e-5
    with torch.no_grad():
        fd = (p.u(obs, z_t + eps * v, t + eps, h + eps) - p.u(obs, z_t - eps * v, t - eps, h - eps)) / (2 * eps)
    torch.testing.assert_close(du, fd, rtol=1e-6, atol=1e-8)
    # the h-direction matters (a wrong tangent, dh = 0, gives a different derivative)
    _, du_wrong = torch.func.jvp(lambda zt, tt, hh: p.u(obs, zt, tt, hh), (z_t, t, h), (v, one, torch.zeros_like(h)))
    assert float((du_wrong.detach() - fd).abs().max()) > 1e-3


def _meanflow_loss_with_finite_difference(p, obs, weight_power, r_neq_t=0.5, eps=1e-5, weight_eps=1e-3):
    """An independent re-implementation of the MeanFlow identity (docs/method.md) with a central difference for d/dt u;
    consumes the global RNG in the same order as ``SMFPPolicy.meanflow_loss``."""
    b = obs.shape[0]
    z = torch.randn(b, 1, p.act_dim, dtype=obs.dtype)
    with torch.no_grad():
        x_hat = p.transport(obs, z, steps=1)
    z, x_hat = z.squeeze(1), x_hat.squeeze(1)
    times = torch.sigmoid(torch.randn(b, 2, dtype=obs.dtype) * 1.0 - 0.4)
    t, r = times.max(dim=1, keepdim=True).values, times.min(dim=1, keepdim=True).values
    r = torch.where(torch.rand(b, 1) >= r_neq_t, t, r)
    assert bool((r <= t).all())
    h = t - r
    z_t = (1.0 - t) * x_hat + t * z
    v = z - x_hat
    with torch.no_grad():
        du = (p.u(obs, z_t + eps * v, t + eps, h + eps) - p.u(obs, z_t - eps * v, t - eps, h - eps)) / (2 * eps)
        target = v - h * du
        sq = (p.u(obs, z_t, t, h) - target).pow(2).sum(-1)
    return float(((sq + weight_eps).pow(-weight_power) * sq).mean())


@pytest.mark.parametrize("weight_power", [0.0, 1.0])
def test_meanflow_loss_agrees_with_finite_difference_and_reaches_u(weight_power):
    p = _policy()
    obs = torch.randn(128, 3, dtype=torch.float64)
    torch.manual_seed(7)
    loss = p.meanflow_loss(obs, weight_power=weight_power)
    torch.manual_seed(7)
    ref = _meanflow_loss_with_finite_difference(p, obs, weight_power)
    assert abs(float(loss.detach()) - ref) <= 1e-6 * max(1.0, abs(ref)), (float(loss), ref)
    assert float(loss.detach()) > 1e-3  # an untrained u is not yet self-consistent

    # gradients reach every parameter of the u-network (and only the target path is stopped)
    p.zero_grad(set_to_none=True)
    loss.backward()
    for name, prm in p.u_net.named_parameters():
        assert prm.grad is not None, name
        assert torch.isfinite(prm.grad).all(), name
        assert float(prm.grad.abs().sum()) > 0, name


class _Counter:
    def __init__(self, module):
        self.calls, self.rows = 0, 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.calls += 1
        self.rows += inputs[0].reshape(-1, inputs[0].shape[-1]).shape[0]

    def reset(self):
        self.calls, self.rows = 0, 0


def test_one_network_evaluation_per_action_and_k_for_k_steps():
    p = _policy(double=False)
    u_count = _Counter(p.u_net)
    s_count = _Counter(p.sigma_net)
    b, m = 5, 8
    obs = torch.randn(b, 3)
    with torch.no_grad():
        smp = p.sample(obs, m)
        assert smp.action.shape == (b, m, 2)
        assert (u_count.calls, u_count.rows) == (1, b * m)  # one batched pass, one row per action
        assert (s_count.calls, s_count.rows) == (1, b)  # sigma(s): once per state

        for mode, n_actions in (("sample", b), ("best-of-n", b * 16)):
            u_count.reset()
            a = p.act(obs, mode, num_candidates=16, q_fn=lambda o, x: -x.pow(2).sum(-1))
            assert a.shape == (b, 2)
            assert (u_count.calls, u_count.rows) == (1, n_actions), mode

        noise = torch.randn(b, m, 2)
        for k in (1, 2, 4, 7):
            u_count.reset()
            p.transport(obs, noise, steps=k)
            assert (u_count.calls, u_count.rows) == (k, k * b * m), k


# --- the noise scale kappa (z ~ N(0, kappa^2 I)) and the mirror-descent warm-up ---------------------------

def test_kappa_scales_the_noise_everywhere_the_transport_sees_it():
    torch.manual_seed(0)
    scaled = SMFPPolicy(3, 2, hidden=(16, 16), sigma_hidden=(8,), noise_scale=0.3)
    plain = SMFPPolicy(3, 2, hidden=(16, 16), sigma_hidden=(8,))
    plain.load_state_dict(scaled.state_dict())  # same networks; kappa is not in the state dict when fixed
    obs, eps = torch.randn(5, 3), torch.randn(5, 4, 2)
    assert torch.allclose(scaled.transport(obs, eps), plain.transport(obs, 0.3 * eps))
    assert torch.allclose(scaled.transport(obs, eps, steps=2), plain.transport(obs, 0.3 * eps, steps=2))
    gaussian = SMFPPolicy(3, 2, hidden=(16, 16), sigma_hidden=(8,), noise_scale=0.0)  # the Gaussian control
    means = gaussian.component_means(obs, eps)
    assert torch.allclose(means, means[:, :1].expand_as(means))  # every component the same: one Gaussian
    assert torch.isfinite(scaled.meanflow_loss(obs, weight_power=0.0))


def test_a_learnt_kappa_trains_with_the_actor_and_round_trips_through_its_state():
    from smfp.config import TrainConfig
    from smfp.update import Learner

    cfg = TrainConfig(algo="smfp", run_dir="unused")
    cfg.policy.hidden, cfg.policy.sigma_hidden, cfg.critic.critic_hidden = (16, 16), (8,), (16, 16)
    cfg.policy.noise_scale, cfg.policy.learn_noise_scale = 0.5, True
    cfg.update.batch_size = 32
    learner = Learner(cfg.resolved(), 3, 2)
    assert torch.allclose(learner.policy.kappa, torch.full((2,), 0.5))
    before = learner.policy.kappa.clone()
    obs = torch.randn(32, 3)
    for _ in range(3):
        learner.actor_step(obs, lambda o, a: -(a - 0.5).pow(2).sum(-1))
    assert not torch.equal(before, learner.policy.kappa)  # the actor's optimiser moves it
    state = learner.state_dict()
    again = Learner(cfg.resolved(), 3, 2)
    again.load_state_dict(state)
    assert torch.equal(again.policy.kappa, learner.policy.kappa)


def test_kappa_is_exported_with_the_actor():
    from smfp.export import export_policy

    torch.manual_seed(1)
    policy = SMFPPolicy(3, 2, hidden=(16, 16), sigma_hidden=(8,), noise_scale=0.3).eval()
    low, high = np.array([-1.0, -2.0]), np.array([1.0, 2.0])
    for mode in ("sample", "best-of-n"):  # export_policy checks the exported actor against the eager one
        critic = None
        if mode == "best-of-n":
            from smfp.critic import QEnsemble
            critic = QEnsemble(3, 2, (8,), 2).eval()
        out = export_policy(policy, low, high, "torchscript", Path(tempfile.mkdtemp()) / "a.pt", mode, None, critic)
        assert out["max_abs_error"] <= out["tolerance"]


def test_the_mirror_descent_warm_up_holds_lambda_at_zero_until_the_entropy_reaches_its_target():
    from smfp.config import TrainConfig
    from smfp.update import Learner

    cfg = TrainConfig(algo="smfp", run_dir="unused")
    cfg.policy.hidden, cfg.policy.sigma_hidden, cfg.critic.critic_hidden = (16, 16), (8,), (16, 16)
    cfg.update.md_warmup = True
    learner = Learner(cfg.resolved(), 3, 2)
    assert learner.use_md and not learner.md_active and float(learner.md_lambda) == 0.0
    learner.temperature_step(torch.full((8,), -(learner.target_entropy + 1.0)), torch.zeros(()))  # entropy above
    # its target by 1 nat: still warming up
    assert not learner.md_active
    for p in learner.policy.parameters():
        p.data.add_(0.1)  # the policy moves during the warm-up; the anchor does not
    learner.temperature_step(torch.full((8,), -(learner.target_entropy - 0.5)), torch.zeros(()))  # entropy below
    assert learner.md_active and float(learner.md_lambda) > 0.0
    for a, p in zip(learner.anchor.parameters(), learner.policy.parameters()):
        assert torch.equal(a, p)  # the anchor starts from the policy as it is when the warm-up ends
    assert learner.state_dict()["md_active"] is True


def test_the_generator_activation_is_a_switch_saved_with_the_policy_and_exported():
    from smfp.config import ConfigError, TrainConfig
    from smfp.export import export_policy
    from smfp.policies import build_policy
    from smfp.policies.smfp import SMFPPolicy as Cls

    torch.manual_seed(2)
    relu = Cls(3, 2, hidden=(16, 16), sigma_hidden=(8,), activation="relu").eval()
    assert any(isinstance(m, torch.nn.ReLU) for m in relu.u_net) and not any(isinstance(m, torch.nn.SiLU)
                                                                              for m in relu.u_net)
    assert any(isinstance(m, torch.nn.SiLU) for m in Cls(3, 2, hidden=(16, 16), sigma_hidden=(8,)).u_net)
    rebuilt = build_policy("smfp", **relu.init_kwargs())  # what a checkpoint rebuilds
    rebuilt.load_state_dict(relu.state_dict())
    obs, eps = torch.randn(5, 3), torch.randn(5, 4, 2)
    assert torch.equal(rebuilt.transport(obs, eps), relu.transport(obs, eps))
    older = {k: v for k, v in relu.init_kwargs().items() if k != "activation"}  # saved before the switch existed
    assert build_policy("smfp", **older).activation == "silu"
    out = export_policy(relu, np.array([-1.0, -1.0]), np.array([1.0, 1.0]), "torchscript",
                        Path(tempfile.mkdtemp()) / "a.pt", "sample", None, None)
    assert out["max_abs_error"] <= out["tolerance"]
    cfg = TrainConfig(algo="smfp", run_dir="unused")
    cfg.policy.generator_activation = "relu"
    assert isinstance(cfg.resolved().policy.generator_activation, str)
    cfg = TrainConfig(algo="sac", run_dir="unused")
    cfg.policy.generator_activation = "relu"
    with pytest.raises(ConfigError, match="--generator-activation applies to --algo smfp"):
        cfg.resolved()
    with pytest.raises(ValueError, match="unknown generator activation"):
        Cls(3, 2, activation="tanh")


def test_a_state_base_shifts_every_component_and_is_saved_exported_and_refused_where_it_does_not_apply():
    from smfp.config import ConfigError, TrainConfig
    from smfp.critic import QEnsemble
    from smfp.export import export_policy
    from smfp.policies import build_policy
    from smfp.policies.smfp import SMFPPolicy as Cls

    torch.manual_seed(3)
    policy = Cls(3, 2, hidden=(16, 16), sigma_hidden=(8,), state_base=True).eval()
    obs, eps = torch.randn(5, 3), torch.randn(5, 4, 2)
    base = policy.base_mean(obs)
    assert base.shape == (5, 2) and Cls(3, 2, hidden=(16, 16), sigma_hidden=(8,)).base_mean(obs) is None
    mean, log_std = policy.components(obs, eps)
    assert torch.allclose(mean, policy.transport(obs, eps) + base.unsqueeze(1))  # mean(s, z) = mu(s) + T(s, z)
    assert torch.allclose(mean, policy.component_means(obs, eps))
    assert torch.allclose(log_std, policy.log_std(obs).unsqueeze(1))
    assert torch.allclose(policy.means(obs, eps, steps=2), policy.transport(obs, eps, steps=2) + base.unsqueeze(1))
    # the MeanFlow loss stays on the transport: fitting data means fitting data - mu(s)
    torch.manual_seed(4)
    with_data = policy.meanflow_loss(obs, weight_power=0.0, data=mean[:, 0].detach())
    assert torch.isfinite(with_data)
    rebuilt = build_policy("smfp", **policy.init_kwargs())  # what a checkpoint rebuilds
    rebuilt.load_state_dict(policy.state_dict())
    assert torch.equal(rebuilt.components(obs, eps)[0], mean)
    older = {k: v for k, v in policy.init_kwargs().items() if k != "state_base"}
    assert build_policy("smfp", **older).state_base is False
    low, high = np.array([-1.0, -2.0]), np.array([1.0, 2.0])
    critic = QEnsemble(3, 2, (8,), 2).eval()
    for fmt in ("torchscript", "onnx"):
        for mode in ("sample", "best-of-n"):  # export_policy checks the exported actor against the eager one
            out = export_policy(policy, low, high, fmt, Path(tempfile.mkdtemp()) / f"a.{'pt' if fmt == 'torchscript' else 'onnx'}",
                                mode, None, critic if mode == "best-of-n" else None)
            assert out["max_abs_error"] <= out["tolerance"], (fmt, mode)
    with pytest.raises(ValueError, match="one-head"):
        Cls(3, 2, heads=2, state_base=True)
    cfg = TrainConfig(algo="sac", run_dir="unused")
    cfg.policy.state_base = True
    with pytest.raises(ConfigError, match="--state-base applies to --algo smfp"):
        cfg.resolved()
