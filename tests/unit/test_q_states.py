"""``--q-states``: the actor's Q term on one fresh action at each of more states (``actor_loss(q_obs=...)``)."""

from __future__ import annotations

import pytest
import torch

from smfp.config import ConfigError, TrainConfig
from smfp.policies.smfp import SMFPPolicy
from smfp.update.losses import actor_loss

torch.set_num_threads(1)


def test_the_q_term_is_taken_on_the_q_states_and_the_entropy_on_the_actor_states():
    torch.manual_seed(0)
    policy = SMFPPolicy(3, 2, hidden=(16,))
    calls = []

    def q_fn(obs, act):
        calls.append(obs.shape[0])
        return -(act ** 2).sum(-1)

    obs = torch.randn(64, 3)
    loss, smp, _, _ = actor_loss(policy, q_fn, None, obs[:4], torch.tensor(0.0), 0.0, 8, q_obs=obs)
    assert calls == [64] and smp.action.shape == (4, 8, 2)  # 64 critic rows: 64 states x 1, not 4 x 8
    torch.manual_seed(1)
    loss, _, _, _ = actor_loss(policy, q_fn, None, obs[:4], torch.tensor(0.0), 0.0, 8, q_obs=obs)
    torch.manual_seed(1)
    policy.sample(obs[:4], 8)  # the same draws as inside: first the entropy sample, then the Q sample
    q_sample = policy.sample(obs, 1).action[:, 0]
    assert loss.item() == pytest.approx((q_sample ** 2).sum(-1).mean().item(), rel=1e-5)  # alpha 0: -mean Q


def test_q_states_are_checked():
    cfg = TrainConfig(algo="smfp")
    cfg.policy.q_states = cfg.update.batch_size + 1
    with pytest.raises(ConfigError, match="--q-states"):
        cfg.resolved()
    cfg.policy.q_states = 16
    cfg.update.actor_update = "hybrid"
    with pytest.raises(ConfigError, match="--q-states applies to --actor-update reparam"):
        cfg.resolved()
