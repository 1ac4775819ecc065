"""Adding a policy class takes one class and one registry line; the learner, acting and evaluation modes
need nothing else. The example: a deterministic map of the state plus a fixed output noise."""

from __future__ import annotations

import dataclasses
import math

import torch

from smfp import config as config_module
from smfp import policies as policies_module
from smfp.buffer import ReplayBuffer
from smfp.config import TrainConfig
from smfp.policies.base import Policy, mlp
from smfp.update import Learner

OBS, ACT = 3, 2


class DeterministicPlusNoisePolicy(Policy):
    """``a = tanh(mu(s) + 0.3 xi)``: one component, a constant sigma (no learned spread)."""

    kind = "det_noise"
    is_mixture = False

    def __init__(self, obs_dim: int, act_dim: int, hidden=(16, 16), log_std_min=-5.0, log_std_max=2.0):
        super().__init__(obs_dim, act_dim, log_std_min, log_std_max)
        self.hidden = tuple(hidden)
        self.net = mlp(obs_dim, self.hidden, act_dim)

    def component_means(self, obs, noise):
        return self.net(obs).unsqueeze(1).expand(-1, noise.shape[1], -1)

    def log_std(self, obs):
        return torch.full((obs.shape[0], self.act_dim), math.log(0.3), dtype=obs.dtype)

    @classmethod
    def from_config(cls, obs_dim, act_dim, cfg):
        return cls(obs_dim, act_dim, hidden=cfg.hidden, log_std_min=cfg.log_std_min, log_std_max=cfg.log_std_max)

    def init_kwargs(self):
        return dict(obs_dim=self.obs_dim, act_dim=self.act_dim, hidden=self.hidden, log_std_min=self.log_std_min,
                    log_std_max=self.log_std_max)


def test_a_new_policy_class_trains_and_acts_with_one_registry_line(monkeypatch):
    monkeypatch.setitem(policies_module.POLICY_CLASSES, "det_noise", DeterministicPlusNoisePolicy)  # the line
    monkeypatch.setitem(config_module.ALGORITHMS, "sac",  # use it for an algorithm
                        dataclasses.replace(config_module.ALGORITHMS["sac"], policy="det_noise"))
    cfg = TrainConfig(algo="sac", run_dir="unused")
    cfg.policy.hidden = cfg.critic.critic_hidden = (16, 16)
    cfg.update.batch_size = 32
    torch.manual_seed(0)
    learner = Learner(cfg.resolved(), OBS, ACT)
    assert isinstance(learner.policy, DeterministicPlusNoisePolicy)
    buf = ReplayBuffer(OBS, ACT, 64, seed=0)
    g = torch.Generator().manual_seed(1)
    for _ in range(64):
        buf.add(torch.randn(OBS, generator=g).numpy(), (torch.rand(ACT, generator=g) * 2 - 1).numpy(),
                1.0, torch.randn(OBS, generator=g).numpy(), False)
    before = [p.detach().clone() for p in learner.policy.parameters()]
    for _ in range(5):
        metrics = learner.update(buf.sample(32), with_metrics=True)
    assert all(math.isfinite(float(v)) for v in metrics.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.policy.parameters()))
    obs = torch.randn(4, OBS)
    for mode in ("sample", "mean", "best-of-n"):
        a = learner.policy.act(obs, mode)
        assert a.shape == (4, ACT) and bool((a.abs() <= 1).all())
