"""Flow-K baseline (--algo flow): K network calls per action, Euler transport, and it trains."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import tiny_config
from smfp.agent import evaluate, load_agent, run_episodes
from smfp.cli.main import main
from smfp.config import ConfigError, TrainConfig
from smfp.envs import make_env
from smfp.policies import FlowPolicy, build_policy
from smfp.training.loop import train
from smfp.update import Learner


def count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("k", [1, 3, 20])
def test_network_calls_per_action_equal_k(k):
    torch.manual_seed(0)
    policy = FlowPolicy(4, 2, hidden=(16, 16), sigma_hidden=(8,), steps=k)
    v_calls, sigma_calls = count_calls(policy.v_net), count_calls(policy.sigma_net)
    obs = torch.randn(5, 4)
    with torch.no_grad():
        a = policy.act(obs, "sample")
    assert a.shape == (5, 2) and v_calls[0] == k and sigma_calls[0] == 1
    # M components of a batch are one batched pass per step, not M x K passes.
    v_calls[0] = 0
    smp = policy.sample(obs, num_components=8)
    assert smp.action.shape == (5, 8, 2) and v_calls[0] == k
    v_calls[0] = 0
    policy.transport(obs, torch.randn(5, 3, 2), steps=7)
    assert v_calls[0] == 7


def test_constant_velocity_moves_noise_by_exactly_v():
    """Euler steps of total length 1 from t = 1 to t = 0 move z by -v for any K."""
    policy = FlowPolicy(3, 2, hidden=(8,), steps=5)
    last = policy.v_net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.5, -2.0]))
    z = torch.randn(4, 6, 2)
    for k in (1, 5, 13):
        x = policy.transport(torch.randn(4, 3), z, steps=k)
        torch.testing.assert_close(x, z - torch.tensor([0.5, -2.0]), rtol=0, atol=1e-5)


def test_euler_converges_as_k_grows():
    """A consistent first-order integrator: the error to a fine solution shrinks about linearly in 1/K."""
    torch.manual_seed(1)
    policy = FlowPolicy(3, 2, hidden=(32, 32), steps=4).double()
    with torch.no_grad():
        for p in policy.v_net.parameters():
            p.mul_(3.0)  # a strongly non-constant field, so that the discretisation error is visible
    obs, z = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 4, 2, dtype=torch.float64)
    with torch.no_grad():
        fine = policy.transport(obs, z, steps=2048)
        errs = [float((policy.transport(obs, z, steps=k) - fine).abs().max()) for k in (4, 8, 16, 32)]
    assert errs[0] > 1e-3
    for coarse, finer in zip(errs, errs[1:]):
        assert finer < 0.75 * coarse
    assert errs[-1] < errs[0] / 4


def test_gradient_reaches_every_step():
    torch.manual_seed(2)
    policy = FlowPolicy(3, 2, hidden=(16,), steps=6)
    obs, z = torch.randn(8, 3), torch.randn(8, 2, 2, requires_grad=True)
    grads = []

    def keep(_, grad_in, grad_out):
        grads.append(grad_out[0].abs().sum().item())

    policy.v_net.register_full_backward_hook(keep)
    policy.transport(obs, z).pow(2).sum().backward()
    assert len(grads) == 6 and all(g > 0 for g in grads)
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in policy.v_net.parameters())


def test_learner_builds_flow_with_configured_steps():
    cfg = TrainConfig(algo="flow")
    cfg.policy.flow_steps = 7
    cfg.policy.hidden = (16, 16)
    learner = Learner(cfg.resolved(), obs_dim=3, act_dim=2)
    assert isinstance(learner.policy, FlowPolicy) and learner.policy.steps == 7
    assert learner.policy.init_kwargs()["steps"] == 7
    rebuilt = build_policy("flow", **learner.policy.init_kwargs())
    assert rebuilt.steps == 7 and rebuilt.sigma_hidden == tuple(cfg.policy.sigma_hidden)
    assert learner.anchor is not None  # mirror descent on by default, as for smfp
    bad = TrainConfig(algo="flow")
    bad.policy.flow_steps = 0
    with pytest.raises(ConfigError, match="--flow-steps"):
        bad.resolved()


def test_cli_rejects_nonpositive_flow_steps(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--algo", "flow", "--flow-steps", "0", "--env", "Pendulum-v1",
              "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code != 0 and len(err) == 1 and "--flow-steps" in err[0]


@pytest.mark.slow
def test_flow_trains_on_pendulum(tmp_path):
    """Short run (K = 4, small networks): finite losses, and the actor beats random actions."""
    cfg = tiny_config(tmp_path / "flow", total_steps=3000, learning_starts=300, log_every=500, eval_every=0,
                      checkpoint_every=0, eval_episodes=10)
    cfg.algo = "flow"
    cfg.policy.flow_steps = 4
    cfg.policy.hidden = (64, 64)
    cfg.policy.sigma_hidden = (32, 32)
    cfg.policy.components = 4
    cfg.critic.critic_hidden = (64, 64)
    cfg.update.batch_size = 64
    cfg.update.updates_per_step = 2
    cfg.update.actor_lr = cfg.update.critic_lr = 1e-3
    cfg.update.alpha = 0.1
    cfg.update.anchor_period = 100
    cfg.eval.eval_mode = "sample"
    cfg.log.tensorboard = False
    rows = []
    result = train(cfg, callback=lambda step, row: rows.append(row))
    losses = [r[k] for r in rows for k in ("losses/critic", "losses/actor") if k in r]
    assert len(losses) >= 2 * 5 and all(math.isfinite(x) for x in losses)
    assert any("train/kl_anchor" in r for r in rows)

    agent = load_agent(result.run_dir)
    assert isinstance(agent.policy, FlowPolicy) and agent.policy.steps == 4
    trained = evaluate(agent, episodes=10, mode="sample", seed=10_000)["return_mean"]
    env = make_env("Pendulum-v1")
    rng = np.random.default_rng(0)
    random_eps = run_episodes(lambda o: rng.uniform(-1, 1, 1).astype(np.float32), env, 10, 10_000)
    env.close()
    random_return = float(np.mean([e["return"] for e in random_eps]))
    assert trained > random_return + 200, (trained, random_return)
