"""Tanh-Gaussian policy (SAC's actor): the single-component case of the interface."""

from __future__ import annotations

import torch

from smfp.policies.base import Policy, mlp


class GaussianPolicy(Policy):
    kind = "gaussian"
    is_mixture = False

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (256, 256),
                 log_std_min: float = -5.0, log_std_max: float = 2.0, log_std_squash: str = "tanh"):
        super().__init__(obs_dim, act_dim, log_std_min, log_std_max, log_std_squash)
        self.hidden = tuple(hidden)
        self.net = mlp(obs_dim, self.hidden, 2 * act_dim)

    def _heads(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw = self.net(obs).chunk(2, dim=-1)
        return mean, self.bound_log_std(raw)

    def components(self, obs, noise):
        mean, log_std = self._heads(obs)  # one pass for both heads
        return mean.unsqueeze(1).expand(-1, noise.shape[1], -1), log_std.unsqueeze(1)

    def component_means(self, obs, noise):
        return self._heads(obs)[0].unsqueeze(1).expand(-1, noise.shape[1], -1)

    def log_std(self, obs):
        return self._heads(obs)[1]

    @classmethod
    def from_config(cls, obs_dim: int, act_dim: int, cfg) -> "GaussianPolicy":
        return cls(obs_dim, act_dim, hidden=cfg.hidden, log_std_min=cfg.log_std_min, log_std_max=cfg.log_std_max,
                   log_std_squash=cfg.log_std_squash)

    def init_kwargs(self) -> dict:
        return dict(obs_dim=self.obs_dim, act_dim=self.act_dim, hidden=self.hidden,
                    log_std_min=self.log_std_min, log_std_max=self.log_std_max, log_std_squash=self.log_std_squash)
