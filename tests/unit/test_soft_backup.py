"""The soft-optimal value backup (``smfp.update.losses.soft_optimal_target``) and ``--multimodal``."""

from __future__ import annotations

import math

import pytest
import torch

from smfp.buffer import Batch
from smfp.config import MULTIMODAL_WARMUP, ConfigError, TrainConfig
from smfp.policies.gaussian import GaussianPolicy
from smfp.policies.smfp import SMFPPolicy
from smfp.update.losses import soft_optimal_target, soft_target

torch.set_num_threads(1)


class KnownQ(torch.nn.Module):
    """A critic ensemble of two members with a known Q: ``-sum_i (a_i - c_i)^2 / w^2`` (+1 on member 0)."""

    def __init__(self, center, width=0.3):
        super().__init__()
        self.center, self.width = torch.tensor(center), width

    def forward(self, obs, act):
        q = -((act - self.center) ** 2).sum(-1) / self.width ** 2
        return torch.stack([q + 1.0, q])  # the min is q


def exact_soft_value(center, width, alpha):
    """``alpha log int_{[-1,1]^d} exp(Q/alpha) da`` for the separable ``KnownQ`` (per axis a Gaussian integral)."""
    s = width * math.sqrt(alpha / 2.0)  # exp(-(a-c)^2 / (w^2 alpha)) = exp(-(a-c)^2 / (2 s^2))
    total = 0.0
    for c in center:
        mass = 0.5 * (math.erf((1 - c) / (s * math.sqrt(2))) - math.erf((-1 - c) / (s * math.sqrt(2))))
        total += math.log(mass * s * math.sqrt(2 * math.pi))
    return alpha * total


def batch(n, obs_dim=3, reward=0.5, terminated=0.0):
    obs = torch.zeros(n, obs_dim)
    return Batch(obs, torch.zeros(n, 2), torch.full((n,), reward), obs, torch.full((n,), terminated))


@pytest.mark.parametrize("policy_cls", [GaussianPolicy, SMFPPolicy])
@pytest.mark.parametrize("center", [(0.3, -0.5), (0.9, 0.0)])
def test_the_backup_is_the_integral_of_the_boltzmann_weights(policy_cls, center):
    torch.manual_seed(0)
    policy = policy_cls(3, 2, hidden=(16,))
    alpha, gamma = 0.5, 0.9
    y = soft_optimal_target(policy, KnownQ(center), batch(400), torch.tensor(alpha), gamma,
                            policy_samples=8, uniform_samples=256)
    want = 0.5 + gamma * exact_soft_value(center, 0.3, alpha)
    # 400 states' independent estimates. Measured at torch seeds 0-3, both policies, both centres: their mean is
    # 0.005-0.024 below the integral (the log of an unbiased estimate is biased low), their spread 0.10-0.13.
    assert y.mean().item() == pytest.approx(want, abs=0.05)
    assert y.std().item() < 0.2


def test_a_terminal_transition_has_no_next_value():
    policy = GaussianPolicy(3, 2, hidden=(16,))
    y = soft_optimal_target(policy, KnownQ((0.0, 0.0)), batch(5, reward=2.0, terminated=1.0), torch.tensor(0.5), 0.9,
                            policy_samples=4, uniform_samples=8)
    assert torch.equal(y, torch.full((5,), 2.0))


def test_it_bounds_the_policy_backup_from_above():
    """``alpha log int exp(Q/alpha) >= E_pi[Q - alpha log pi]`` for every pi (Gibbs' inequality); the gap is the
    KL of the policy to the Boltzmann target, large for an untrained policy far from the peak."""
    torch.manual_seed(1)
    policy = GaussianPolicy(3, 2, hidden=(16,))
    q, alpha = KnownQ((0.7, -0.7), width=0.2), torch.tensor(0.3)
    optimal = soft_optimal_target(policy, q, batch(2000), alpha, 0.9, policy_samples=8, uniform_samples=256)
    own = soft_target(policy, q, batch(2000), alpha, 0.9, components=1)
    assert optimal.mean() > own.mean() + 0.5  # measured: -0.42 against -26.4


def test_multimodal_fixes_alpha_uses_the_soft_optimal_backup_and_a_long_warmup():
    cfg = TrainConfig(algo="smfp", multimodal=True)
    cfg.update.alpha = 2.0
    r = cfg.resolved()
    assert (r.update.autotune_alpha, r.update.value_backup, r.update.alpha) == (False, "soft-optimal", 2.0)
    assert r.update.learning_starts == MULTIMODAL_WARMUP
    cfg.update.learning_starts = 3 * MULTIMODAL_WARMUP
    assert cfg.resolved().update.learning_starts == 3 * MULTIMODAL_WARMUP
    plain = TrainConfig(algo="smfp").resolved()
    assert (plain.update.autotune_alpha, plain.update.value_backup) == (True, "policy")


def test_multimodal_smfp_takes_the_heads_policy_unless_told_otherwise():
    from smfp.config import MULTIMODAL_HEADS, changed_fields, flatten_config

    r = TrainConfig(algo="smfp", multimodal=True).resolved()
    assert (r.policy.heads, r.policy.per_head_sigma, r.update.actor_update, r.update.md_lambda) == (4, True, "em", 0.0)
    assert r.policy.hidden == (256, 256, 256)
    assert all(v == MULTIMODAL_HEADS[k] or (isinstance(v, list) and tuple(v) == MULTIMODAL_HEADS[k])
               for k, v in flatten_config(r.to_dict()).items() if k in MULTIMODAL_HEADS)
    told = TrainConfig(algo="smfp", multimodal=True)
    told.policy.heads, told.update.fit_local, told.policy.hidden = 2, 5, (64, 64)  # an explicit value wins
    told = told.resolved()
    assert (told.policy.heads, told.update.fit_local, told.update.actor_update) == (2, 5, "em")
    assert told.policy.hidden == (64, 64)
    plain = TrainConfig(algo="smfp", multimodal=True, multimodal_policy="plain").resolved()
    assert (plain.policy.heads, plain.update.actor_update, plain.update.md_lambda, plain.policy.hidden) == (
        1, "reparam", 1.0, (256, 256))
    for other in (TrainConfig(algo="sac", multimodal=True), TrainConfig(algo="smfp")):  # nothing else changes
        resolved = other.resolved()
        assert (resolved.policy.heads, resolved.update.actor_update, resolved.policy.hidden) == (1, "reparam", (256, 256))
    # runs saved before the field resume as they were: a --multimodal SMFP run of then was the plain policy, and
    # for any other run the field is not read
    saved = flatten_config(TrainConfig(algo="smfp", multimodal=True, multimodal_policy="plain").resolved().to_dict())
    del saved["multimodal_policy"]
    assert changed_fields(saved, plain) == [] and "multimodal_policy" in changed_fields(saved, r)
    sac = flatten_config(TrainConfig(algo="sac").resolved().to_dict())
    del sac["multimodal_policy"]
    assert changed_fields(sac, TrainConfig(algo="sac").resolved()) == []  # the default, heads, is not read


def test_a_flag_that_repeats_the_default_wins_over_the_multimodal_preset():
    """On the command line every flag given is recorded, so --multimodal's preset leaves it as given even where its
    value is the library default (two layers; no per-head sigma), and the record survives the round trip a sweep
    makes (config -> dict -> config -> resolved again)."""
    from smfp.cli.args import build_dataclass
    from smfp.config import changed_fields, flatten_config

    cfg = build_dataclass(TrainConfig, {"algo": "smfp", "multimodal": True, "hidden": [256, 256],
                                        "per_head_sigma": False, "fit_local": 8})
    assert cfg.given == ("algo", "multimodal", "policy.hidden", "policy.per_head_sigma", "update.fit_local")
    r = cfg.resolved()
    assert (r.policy.hidden, r.policy.per_head_sigma, r.update.fit_local) == ((256, 256), False, 8)
    assert (r.policy.heads, r.update.actor_update, r.update.fit_uniform) == (4, "em", 64)  # the rest of the preset
    again = TrainConfig.from_dict(r.to_dict()).resolved()
    assert again == r and again.given == cfg.given
    for damaged in (5, "policy.hidden", [1]):
        with pytest.raises(ConfigError, match="'given' must be a list of option names"):
            TrainConfig.from_dict({**r.to_dict(), "given": damaged})
    told = build_dataclass(TrainConfig, {"actor_update": "reparam"}, base=cfg)  # contradicts the preset's heads
    assert told.given[0] == "algo" and "update.actor_update" in told.given
    with pytest.raises(ConfigError, match="--heads 4 needs --actor-update em"):
        told.resolved()
    # which flags were given is no setting: a resume or sweep may give them differently
    bare = build_dataclass(TrainConfig, {"algo": "smfp", "multimodal": True}).resolved()
    assert changed_fields(flatten_config(bare.to_dict()), r) == ["policy.hidden", "policy.per_head_sigma",
                                                                  "update.fit_local"]
    assert "given" not in changed_fields(flatten_config(bare.to_dict()), TrainConfig.from_dict(bare.to_dict()))


def test_a_backup_without_policy_samples_is_a_config_error():
    cfg = TrainConfig(algo="sac")
    cfg.update.value_backup, cfg.update.backup_policy_samples = "soft-optimal", 0
    with pytest.raises(ConfigError, match="--backup-policy-samples"):
        cfg.resolved()


def test_the_backup_warns_above_four_action_dimensions(tmp_path):
    from conftest import run_cli

    proc = run_cli("train", "--algo", "sac", "--env", "HalfCheetah-v5", "--multimodal", "--total-steps", "20",
                   "--learning-starts", "10", "--hidden", "16", "--critic-hidden", "16", "--eval-episodes", "1",
                   "--run-dir", tmp_path / "run", "--no-progress", "--no-tensorboard")
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("smfp: warning:")]
    assert len(warnings) == 1 and "6-D action box" in warnings[0]
