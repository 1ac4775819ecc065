"""Flow-K policy: the multi-step generative baseline.

A velocity field ``v(x, t | s)`` is integrated with K explicit Euler steps from the noise
``z`` at ``t = 1`` to the pre-squash mean at ``t = 0`` (straight-path convention
``z_t = (1 - t) x + t z``, so ``dx/dt = v`` and a step towards the action is
``x <- x - (1 / K) v(x, t | s)``); an action is ``x = mean(s, z) + sigma(s) * xi`` with the same
state-dependent output noise as SMFP (``TransportPolicy``). It has no
closed-form density either, so it is trained with SMFP's surrogate and mirror-descent loss, the
gradient flowing back through all K steps. K network passes per action: this class exists so that
returns and latency of one-step and multi-step generation can be compared like for like.
"""

from __future__ import annotations

import torch

from smfp.policies.base import TransportPolicy


class FlowPolicy(TransportPolicy):
    kind = "flow"
    generator_name = "v_net"

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (256, 256),
                 sigma_hidden: tuple[int, ...] = (64, 64), steps: int = 20, log_std_min: float = -5.0,
                 log_std_max: float = 2.0, log_std_squash: str = "tanh"):
        if int(steps) < 1:
            raise ValueError(f"flow steps must be positive, got {steps}")
        super().__init__(obs_dim, act_dim, 1, hidden, sigma_hidden, log_std_min, log_std_max,
                         log_std_squash=log_std_squash)
        self.steps = int(steps)
        self.default_steps = self.steps

    def step_times(self, i: int, steps: int) -> tuple[list[float], float]:
        return [1.0 - i / steps], 1.0 / steps

    def velocity(self, obs: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``v(x, t | s)``: obs (..., o), x (..., d), t (..., 1)."""
        return self.generator_net(torch.cat([obs, x, t], dim=-1))

    @classmethod
    def from_config(cls, obs_dim: int, act_dim: int, cfg) -> "FlowPolicy":
        return cls(obs_dim, act_dim, hidden=cfg.hidden, sigma_hidden=cfg.sigma_hidden, steps=cfg.flow_steps,
                   log_std_min=cfg.log_std_min,
                   log_std_max=cfg.log_std_max, log_std_squash=cfg.log_std_squash)

    def init_kwargs(self) -> dict:
        return dict(obs_dim=self.obs_dim, act_dim=self.act_dim, hidden=self.hidden, sigma_hidden=self.sigma_hidden,
                    steps=self.steps,
                    log_std_min=self.log_std_min, log_std_max=self.log_std_max, log_std_squash=self.log_std_squash)
