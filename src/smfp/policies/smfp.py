"""Stochastic MeanFlow policy: one network pass per action.

``u(z, r, t | s)`` is the MeanFlow average velocity, conditioned on ``(t, h = t - r)``; the
one-step map is ``mu(s, z) = z - u(z, 0, 1 | s)`` (t = 1 is noise, t = 0 the action) and an action
is ``x = mu(s, z) + sigma(s) * xi`` with ``log sigma(s)`` from a small
state-only network (``TransportPolicy`` says why it is separate).
"""

from __future__ import annotations

import torch
from torch.func import jvp

from smfp.policies.base import TransportPolicy
from smfp.precision import float32_matmuls


class SMFPPolicy(TransportPolicy):
    kind = "smfp"
    default_steps = 1
    generator_name = "u_net"

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (256, 256),
                 sigma_hidden: tuple[int, ...] = (64, 64), log_std_min: float = -5.0, log_std_max: float = 2.0,
                 noise_scale: float = 1.0, learn_noise_scale: bool = False, heads: int = 1,
                 per_head_sigma: bool = False, activation: str = "silu", state_base: bool = False,
                 log_std_squash: str = "tanh"):
        super().__init__(obs_dim, act_dim, 2, hidden, sigma_hidden, log_std_min, log_std_max, noise_scale,
                         learn_noise_scale, heads, per_head_sigma, activation, state_base, log_std_squash)

    def step_times(self, i: int, steps: int) -> tuple[list[float], float]:
        t, r = 1.0 - i / steps, 1.0 - (i + 1) / steps
        return [t, t - r], t - r

    def u(self, obs: torch.Tensor, z: torch.Tensor, t: torch.Tensor, h: torch.Tensor,
          latent: torch.Tensor | None = None) -> torch.Tensor:
        """Average velocity ``u(z, r, t | s, c)`` with ``h = t - r``; obs (..., o), z (..., d), t/h (..., 1), the
        head's one-hot ``latent`` (..., K) with heads."""
        return self.generator_net(torch.cat([obs, z, t, h] + ([] if latent is None else [latent]), dim=-1))

    @float32_matmuls  # the JVP stays in float32
    def meanflow_loss(self, obs: torch.Tensor, r_neq_t: float = 0.5, weight_eps: float = 1e-3,
                      weight_power: float = 1.0, data: torch.Tensor | None = None) -> torch.Tensor:
        """MeanFlow identity loss on the policy's own transport.

        Target ``v - (t - r) * d/dt u(z_t, r, t)`` with the total derivative taken by a JVP
        along ``(dz, dr, dt) = (v, 0, 1)``; in the ``(t, h = t - r)`` parameterisation that
        tangent is ``(v, 1, 1)``. On the policy's own transport (``data`` None) it makes the network a
        true average velocity, so that more jumps agree with one, without moving the one-step policy.
        With ``data`` (pre-squash actions (B, d), one per state of ``obs``) it is generative
        training: an independent ``z`` is paired with each data point, so the map learns to carry the
        noise onto the data's distribution, modes and their masses included.
        """
        b = obs.shape[0]
        noise = self.draw_noise(b, 1, obs)  # with heads, c ~ p(c | s): the identity holds for every head
        if data is None:
            with torch.no_grad():
                x_hat = self.transport(obs, noise, steps=1).squeeze(1)
        else:  # the transport's own end point: the data less the state base, if any
            x_hat = data.detach().to(obs.dtype)
            if self.state_base:
                x_hat = x_hat - self.base_mean(obs).detach()
        eps, latent = self.split_noise(noise.squeeze(1))
        z = eps * self.kappa.to(obs.dtype)  # the t = 1 end of the transport (kappa-scaled, as there)
        times = torch.sigmoid(torch.randn(b, 2, dtype=obs.dtype) * 1.0 - 0.4)
        t = times.max(dim=1, keepdim=True).values
        r = times.min(dim=1, keepdim=True).values
        equal = torch.rand(b, 1) >= r_neq_t
        r = torch.where(equal, t, r)
        h = t - r
        z_t = (1.0 - t) * x_hat + t * z
        v = z - x_hat
        u_pred, du_dt = jvp(lambda zt, tt, hh: self.u(obs, zt, tt, hh, latent), (z_t, t, h),
                            (v, torch.ones_like(t), torch.ones_like(h)))
        target = (v - h * du_dt).detach()
        sq = (u_pred - target).pow(2).sum(-1)
        weight = (sq.detach() + weight_eps).pow(-weight_power)
        return (weight * sq).mean()

    def auxiliary_loss(self, obs: torch.Tensor, cfg, data: torch.Tensor | None = None) -> torch.Tensor:
        """The learner's hook for a policy's own extra loss (``PolicyConfig`` holds its settings): the
        MeanFlow loss on its own transport, or with ``data`` its generative fit to those samples."""
        return self.meanflow_loss(obs, r_neq_t=cfg.meanflow_r_neq_t, weight_power=cfg.meanflow_weight_power,
                                  data=data)

    @classmethod
    def from_config(cls, obs_dim: int, act_dim: int, cfg) -> "SMFPPolicy":
        return cls(obs_dim, act_dim, hidden=cfg.hidden, sigma_hidden=cfg.sigma_hidden, log_std_min=cfg.log_std_min,
                   log_std_max=cfg.log_std_max, noise_scale=cfg.noise_scale, learn_noise_scale=cfg.learn_noise_scale,
                   heads=cfg.heads, per_head_sigma=cfg.per_head_sigma, activation=cfg.generator_activation,
                   state_base=cfg.state_base, log_std_squash=cfg.log_std_squash)

    def init_kwargs(self) -> dict:
        return dict(obs_dim=self.obs_dim, act_dim=self.act_dim, hidden=self.hidden, sigma_hidden=self.sigma_hidden,
                    log_std_min=self.log_std_min, log_std_max=self.log_std_max, noise_scale=self.noise_scale,
                    learn_noise_scale=self.learn_noise_scale, heads=self.heads,
                    per_head_sigma=self.per_head_sigma, activation=self.activation, state_base=self.state_base,
                    log_std_squash=self.log_std_squash)
