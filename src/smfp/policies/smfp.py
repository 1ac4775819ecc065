"""Stochastic MeanFlow policy (DESIGN.md sections 3, 4 and 6).

``u(z, r, t | s)`` is the MeanFlow average velocity, conditioned on ``(t, t - r)``; the
one-step map is ``mu(s, z) = z - u(z, 0, 1 | s)`` (t = 1 is noise, t = 0 the action) and an
action is ``x = mu(s, z) + sigma(s) * xi``: one network pass per action.
"""

from __future__ import annotations



import torch
from torch import nn
from torch.func import jvp

from smfp.policies.base import Policy, mlp
from smfp.precision import float32_matmuls


class SMFPPolicy(Policy):
    kind = "smfp"
    is_mixture = True

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (256, 256),
                 sigma_hidden: tuple[int, ...] = (64, 64), log_std_min: float = -5.0,
                 log_std_max: float = 2.0):
        super().__init__(obs_dim, act_dim, log_std_min, log_std_max)
        self.hidden = tuple(hidden)
        self.sigma_hidden = tuple(sigma_hidden)
        self.u_net = mlp(obs_dim + act_dim + 2, self.hidden, act_dim, act=nn.SiLU)
        self.sigma_net = mlp(obs_dim, self.sigma_hidden, act_dim)

    def u(self, obs: torch.Tensor, z: torch.Tensor, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Average velocity ``u(z, r, t | s)`` with ``h = t - r``; obs (..., o), z (..., d), t/h (..., 1)."""
        return self.u_net(torch.cat([obs, z, t, h], dim=-1))

    def component_means(self, obs, noise):
        return self.transport(obs, noise, steps=1)

    def transport(self, obs: torch.Tensor, noise: torch.Tensor, steps: int = 1) -> torch.Tensor:
        """Map noise (B, M, d) at t = 1 to pre-squash means at t = 0 in ``steps`` MeanFlow jumps.

        ``steps = 1`` is the one-step map; more steps use the same network between
        intermediate times, which agree with one step when ``u`` is a true average velocity.
        """
        b, m, _ = noise.shape
        s = obs.unsqueeze(1).expand(b, m, obs.shape[-1])
        z = noise
        for i in range(steps):
            t = 1.0 - i / steps
            r = 1.0 - (i + 1) / steps
            tt = z.new_full((b, m, 1), t)
            hh = z.new_full((b, m, 1), t - r)
            z = z - (t - r) * self.u(s, z, tt, hh)
        return z

    def log_std(self, obs):
        return self.bound_log_std(self.sigma_net(obs))

    @float32_matmuls  # the JVP stays in float32 (DESIGN.md section 6)
    def meanflow_loss(self, obs: torch.Tensor, r_neq_t: float = 0.5, weight_eps: float = 1e-3,
                      weight_power: float = 1.0) -> torch.Tensor:
        """MeanFlow identity loss on the policy's own transport (DESIGN.md section 6).

        Target ``v - (t - r) * d/dt u(z_t, r, t)`` with the total derivative taken by a JVP
        along ``(dz, dr, dt) = (v, 0, 1)``; in the ``(t, h = t - r)`` parameterisation that
        tangent is ``(v, 1, 1)``.
        """
        b = obs.shape[0]
        z = torch.randn(b, 1, self.act_dim, dtype=obs.dtype)
        with torch.no_grad():
            x_hat = self.transport(obs, z, steps=1)
        z, x_hat = z.squeeze(1), x_hat.squeeze(1)
        times = torch.sigmoid(torch.randn(b, 2, dtype=obs.dtype) * 1.0 - 0.4)
        t = times.max(dim=1, keepdim=True).values
        r = times.min(dim=1, keepdim=True).values
        equal = torch.rand(b, 1) >= r_neq_t
        r = torch.where(equal, t, r)
        h = t - r
        z_t = (1.0 - t) * x_hat + t * z
        v = z - x_hat
        u_pred, du_dt = jvp(lambda zt, tt, hh: self.u(obs, zt, tt, hh), (z_t, t, h),
                            (v, torch.ones_like(t), torch.ones_like(h)))
        target = (v - h * du_dt).detach()
        sq = (u_pred - target).pow(2).sum(-1)
        weight = (sq.detach() + weight_eps).pow(-weight_power)
        return (weight * sq).mean()

    def init_kwargs(self) -> dict:
        return dict(obs_dim=self.obs_dim, act_dim=self.act_dim, hidden=self.hidden,
                    sigma_hidden=self.sigma_hidden, log_std_min=self.log_std_min,
                    log_std_max=self.log_std_max)


