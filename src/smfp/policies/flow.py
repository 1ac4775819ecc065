"""Flow-K policy: the multi-step generative baseline (DESIGN.md section 3).

A velocity field ``v(x, t | s)`` is integrated with K explicit Euler steps from the noise
``z`` at ``t = 1`` to the pre-squash mean at ``t = 0`` (straight-path convention
``z_t = (1 - t) x + t z``, so ``dx/dt = v`` and a step towards the action is
``x <- x - (1 / K) v(x, t | s)``); an action is ``x = mean(s, z) + sigma(s) * xi`` with the same
state-dependent output noise as SMFP. It has no closed-form density either, so it is trained
with SMFP's surrogate and mirror-descent loss, the gradient flowing back through all K steps.
K network passes per action: this class exists so that returns and latency of one-step and
multi-step generation can be compared in one code base.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from smfp.policies.base import Policy, mlp


class FlowPolicy(Policy):
    kind = "flow"
    is_mixture = True

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (256, 256),
                 sigma_hidden: tuple[int, ...] = (64, 64), steps: int = 20, log_std_min: float = -5.0,
                 log_std_max: float = 2.0):
        super().__init__(obs_dim, act_dim, log_std_min, log_std_max)
        if int(steps) < 1:
            raise ValueError(f"flow steps must be positive, got {steps}")
        self.hidden = tuple(hidden)
        self.sigma_hidden = tuple(sigma_hidden)
        self.steps = int(steps)
        self.v_net = mlp(obs_dim + act_dim + 1, self.hidden, act_dim, act=nn.SiLU)
        self.sigma_net = mlp(obs_dim, self.sigma_hidden, act_dim)

    def velocity(self, obs: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``v(x, t | s)``: obs (..., o), x (..., d), t (..., 1)."""
        return self.v_net(torch.cat([obs, x, t], dim=-1))

    def transport(self, obs: torch.Tensor, noise: torch.Tensor, steps: Optional[int] = None) -> torch.Tensor:
        """Euler-integrate noise (B, M, d) from t = 1 to t = 0 in ``steps`` (default K) steps."""
        k = self.steps if steps is None else int(steps)
        b, m, _ = noise.shape
        s = obs.unsqueeze(1).expand(b, m, obs.shape[-1])
        x = noise
        dt = 1.0 / k
        for i in range(k):
            t = x.new_full((b, m, 1), 1.0 - i * dt)
            x = x - dt * self.velocity(s, x, t)
        return x

    def component_means(self, obs, noise):
        return self.transport(obs, noise)

    def log_std(self, obs):
        return self.bound_log_std(self.sigma_net(obs))

    def init_kwargs(self) -> dict:
        return dict(obs_dim=self.obs_dim, act_dim=self.act_dim, hidden=self.hidden,
                    sigma_hidden=self.sigma_hidden, steps=self.steps, log_std_min=self.log_std_min,
                    log_std_max=self.log_std_max)
