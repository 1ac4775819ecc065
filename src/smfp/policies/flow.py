"""Flow-K policy: the multi-step generative baseline.

A velocity field ``v(x, t | s)`` is integrated with K explicit Euler steps from the noise
``z`` at ``t = 1`` to the pre-squash mean at ``t = 0`` (straight-path convention
``z_t = (1 - t) x + t z``, so ``dx/dt = v`` and a step towards the action is
``x <- x - (1 / K) v(x, t | s)``); an action is ``x = mean(s, z) + sigma(s, z) * xi``, the log-std
a second head of the same network read at the first step (``TransportPolicy``, as SMFP). It has no
closed-form density either, so it is trained with SMFP's surrogate and mirror-descent loss, the
gradient flowing back through all K steps. K network passes per action: this class exists so that
returns and latency of one-step and multi-step generation can be compared like for like.
"""

from __future__ import annotations

import torch

from smfp.policies.base import TransportPolicy


class FlowPolicy(TransportPolicy):
    kind = "flow"
    sigma_times = (1.0,)  # t of the first Euler step, whatever K

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (256, 256), steps: int = 20,
                 log_std_min: float = -5.0, log_std_max: float = 2.0, noise_scale: float = 1.0):
        if int(steps) < 1:
            raise ValueError(f"flow steps must be positive, got {steps}")
        super().__init__(obs_dim, act_dim, 1, hidden, log_std_min, log_std_max, noise_scale)
        self.steps = int(steps)
        self.default_steps = self.steps

    @property
    def v_net(self):
        return self.generator_net

    def step_times(self, i: int, steps: int) -> tuple[list[float], float]:
        return [1.0 - i / steps], 1.0 / steps

    def velocity(self, obs: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``v(x, t | s)``: obs (..., o), x (..., d), t (..., 1)."""
        return self.generator_net(torch.cat([obs, x, t], dim=-1))[..., : self.act_dim]

    @classmethod
    def from_config(cls, obs_dim: int, act_dim: int, cfg) -> "FlowPolicy":
        return cls(obs_dim, act_dim, hidden=cfg.hidden, steps=cfg.flow_steps, log_std_min=cfg.log_std_min,
                   log_std_max=cfg.log_std_max, noise_scale=cfg.noise_scale)

    def init_kwargs(self) -> dict:
        return dict(obs_dim=self.obs_dim, act_dim=self.act_dim, hidden=self.hidden, steps=self.steps,
                    log_std_min=self.log_std_min, log_std_max=self.log_std_max, noise_scale=self.noise_scale)
