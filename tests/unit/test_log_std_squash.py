"""``--log-std-squash``: how a policy bounds its raw log-std output (tanh, CleanRL's; clip, Stable-Baselines3's)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_config
from smfp.agent import load_agent
from smfp.export import export_policy, load_runner
from smfp.policies import build_policy
from smfp.policies.base import bound_log_std
from smfp.training.loop import train

KINDS = {"gaussian": {}, "smfp": {"sigma_hidden": (8,)}, "flow": {"sigma_hidden": (8,), "steps": 3}}


def test_tanh_puts_raw_zero_in_the_middle_and_clip_at_zero_and_clamps():
    raw = torch.tensor([-100.0, -1.0, 0.0, 1.0, 100.0], requires_grad=True)
    tanh = bound_log_std(raw, -5.0, 2.0, "tanh")
    assert tanh[2].item() == pytest.approx(-1.5) and -5.0 <= tanh.min().item() and tanh.max().item() <= 2.0
    clip = bound_log_std(raw, -20.0, 2.0, "clip")
    assert clip.tolist() == [-20.0, -1.0, 0.0, 1.0, 2.0]
    clip.sum().backward()
    assert raw.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # no gradient past a bound, as a clamp


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_policy_takes_the_squash_and_a_checkpoint_rebuilds_it(kind):
    torch.manual_seed(0)
    policy = build_policy(kind, obs_dim=3, act_dim=2, hidden=(16, 16), log_std_min=-20.0, log_std_squash="clip",
                          **KINDS[kind])
    last = (policy.net if kind == "gaussian" else policy.sigma_net)[-1]
    with torch.no_grad():  # raw log-std 0 everywhere: sigma 1 with clip, exp(-9) with tanh on [-20, 2]
        last.weight.zero_()
        last.bias.zero_()
    obs = torch.randn(4, 3)
    assert torch.equal(policy.log_std(obs), torch.zeros(4, 2))
    rebuilt = build_policy(kind, **policy.init_kwargs())  # what a checkpoint rebuilds
    rebuilt.load_state_dict(policy.state_dict())
    assert rebuilt.log_std_squash == "clip" and torch.equal(rebuilt.log_std(obs), policy.log_std(obs))
    older = {k: v for k, v in policy.init_kwargs().items() if k != "log_std_squash"}  # saved before the switch
    tanh = build_policy(kind, **older)
    tanh.load_state_dict(policy.state_dict())
    assert tanh.log_std_squash == "tanh" and torch.allclose(tanh.log_std(obs), torch.full((4, 2), -9.0))
    with pytest.raises(ValueError, match="unknown log-std squash"):
        build_policy(kind, obs_dim=3, act_dim=2, log_std_squash="softplus", **KINDS[kind])


@pytest.mark.parametrize("kind", ["gaussian", "smfp"])
def test_the_exported_actor_bounds_the_log_std_as_the_policy(tmp_path, kind):
    torch.manual_seed(1)
    kw = dict(obs_dim=3, act_dim=2, hidden=(16, 16), log_std_min=-20.0, **KINDS[kind])
    clip = build_policy(kind, log_std_squash="clip", **kw).eval()
    with torch.no_grad():
        for p in clip.parameters():
            p.mul_(3.0)  # raw log-stds beyond [-1, 1]: the two squashes then differ clearly
    tanh = build_policy(kind, **kw).eval()
    tanh.load_state_dict(clip.state_dict())
    low, high = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    out = export_policy(clip, low, high, "torchscript", tmp_path / "a.pt", "sample", None, None)
    assert out["max_abs_error"] <= out["tolerance"]
    run = load_runner(tmp_path / "a.pt", "torchscript")
    obs = np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32)
    noise = np.random.default_rng(1).standard_normal((64, 2 if kind == "gaussian" else 4)).astype(np.float32)
    other = export_policy(tanh, low, high, "torchscript", tmp_path / "b.pt", "sample", None, None)
    assert other["max_abs_error"] <= other["tolerance"]
    assert np.abs(run(obs, noise) - load_runner(tmp_path / "b.pt", "torchscript")(obs, noise)).max() > 1e-2


def test_a_run_records_the_squash_and_its_checkpoint_acts_with_it(tmp_path):
    cfg = tiny_config(tmp_path / "run", total_steps=300, learning_starts=100, eval_every=300, checkpoint_every=300)
    cfg.policy.log_std_squash, cfg.policy.log_std_min = "clip", -20.0
    train(cfg)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["policy"]["log_std_squash"] == "clip"
    assert load_agent(tmp_path / "run").policy.log_std_squash == "clip"


def test_the_sb3_log_det_floors_saturated_actions_and_the_default_stays_exact():
    from smfp.policies.distributions import tanh_log_det

    x = torch.tensor([0.0, 1.0, 20.0], requires_grad=True)
    exact, sb3 = tanh_log_det(x), tanh_log_det(x, 1e-6)
    assert torch.allclose(sb3[:2], exact[:2], atol=1e-5)  # the same away from saturation
    assert exact[2].item() == pytest.approx(2 * np.log(2.0) - 40.0, abs=1e-4)
    assert sb3[2].item() == pytest.approx(np.log(1e-6), abs=1e-4)  # floored
    (grad_exact,) = torch.autograd.grad(exact[2], x, retain_graph=True)
    (grad_sb3,) = torch.autograd.grad(sb3[2], x)
    assert grad_exact[2].item() == pytest.approx(-2.0) and abs(grad_sb3[2].item()) < 1e-6  # no pull back


def test_squash_log_det_eps_reaches_the_training_log_density_and_is_checked():
    from smfp.config import ConfigError, TrainConfig
    from smfp.policies import policy_from_config

    cfg = TrainConfig(algo="sac", run_dir="unused")
    cfg.policy.hidden, cfg.policy.squash_log_det_eps = (8,), 1e-6
    floored = policy_from_config("gaussian", 3, 2, cfg.policy)
    exact = build_policy("gaussian", obs_dim=3, act_dim=2, hidden=(8,))
    exact.load_state_dict(floored.state_dict())
    assert floored.log_det_eps == 1e-6 and exact.log_det_eps == 0.0
    with torch.no_grad():  # a mean deep in saturation: the two log-densities part there
        floored.net[-1].bias[:2] = 15.0
        exact.net[-1].bias[:2] = 15.0
    obs = torch.randn(6, 3)
    torch.manual_seed(0)
    lp_floored = floored.sample(obs).log_prob
    torch.manual_seed(0)
    lp_exact = exact.sample(obs).log_prob
    assert (lp_exact - lp_floored > 20.0).all()
    cfg.policy.squash_log_det_eps = -1.0
    with pytest.raises(ConfigError, match="--squash-log-det-eps"):
        cfg.resolved()
