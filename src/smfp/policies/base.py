"""The one interface every policy class implements.

A policy is a continuous mixture of diagonal Gaussians over a pre-squash action ``x``:
a noise ``z`` picks a component ``N(mean(s, z), std(s)^2)``. The Gaussian policy is the
degenerate case (one component, ``z`` unused); SMFP maps ``z`` through a one-step MeanFlow
transformation; flow-K integrates a velocity field for K steps. Everything downstream
(sampling, the log-density surrogate, the mirror-descent KL, acting modes) is written once,
here, against ``components``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from smfp.config import resolve_act_mode
from smfp.precision import MIN_REDUCED_WIDTH, matmul_dtype
from smfp.policies.distributions import gaussian_log_prob, semi_implicit_log_prob, squash, tanh_log_det



@dataclass
class PolicySample:
    """A batch of B states x M actions, with everything the update needs."""

    action: torch.Tensor  # (B, M, d) in [-1, 1]
    log_prob: torch.Tensor  # (B, M) surrogate log-density of ``action``
    pre_squash: torch.Tensor  # (B, M, d)
    noise: torch.Tensor  # (B, M, d_z) the component noises z
    mean: torch.Tensor  # (B, M, d) component means
    log_std: torch.Tensor  # (B, 1, d) output log-std


class MLP(nn.Sequential):
    """``Linear, act, ..., Linear`` (same parameters and state-dict keys as ``nn.Sequential``).

    Inside ``smfp.precision.matmul_precision(dtype)`` the hidden-to-hidden layers at least
    ``MIN_REDUCED_WIDTH`` wide run in ``dtype`` (weights cast on the fly, gradients reach the
    float32 weights); the first and last layers and narrow layers stay float32.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = matmul_dtype()
        if dtype is None:
            return super().forward(x)
        last = len(self) - 1
        for i, layer in enumerate(self):
            if not isinstance(layer, nn.Linear):
                x = layer(x)  # activations run in the dtype of their input
            elif 0 < i < last and min(layer.in_features, layer.out_features) >= MIN_REDUCED_WIDTH:
                x = F.linear(x.to(dtype), layer.weight.to(dtype), layer.bias.to(dtype))
            else:
                x = layer(x.float())
        return x


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int, act=nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), act()]
        d = h
    layers.append(nn.Linear(d, out_dim))
    return MLP(*layers)


LOG_STD_SQUASHES = ("tanh", "clip")


def bound_log_std(raw: torch.Tensor, low: float, high: float, squash: str = "tanh") -> torch.Tensor:
    """The output log-std from the network's raw output: ``tanh``, smoothly into [low, high] (raw 0 is the middle;
    CleanRL's SAC), or ``clip``, raw clamped to [low, high] (raw 0 is log-std 0; Stable-Baselines3's SAC, with
    low = -20)."""
    if squash == "clip":
        return raw.clamp(low, high)
    return low + 0.5 * (high - low) * (torch.tanh(raw) + 1.0)


class Policy(nn.Module):
    """Base class: subclasses implement ``components`` (and ``init_kwargs``)."""

    kind: str = "base"
    is_mixture: bool = True  # False: a single Gaussian, the surrogate is exact with M = 1
    log_det_eps: float = 0.0  # the squash's log-det in sample(): exact (0) or SB3's floored form (training only)

    def __init__(self, obs_dim: int, act_dim: int, log_std_min: float = -5.0, log_std_max: float = 2.0,
                 log_std_squash: str = "tanh"):
        super().__init__()
        if log_std_squash not in LOG_STD_SQUASHES:
            raise ValueError(f"unknown log-std squash {log_std_squash!r}; choose {', '.join(LOG_STD_SQUASHES)}")
        self.obs_dim = obs_dim
        self.act_dim = act_dim
        self.noise_dim = act_dim
        self.log_std_min = log_std_min
        self.log_std_max = log_std_max
        self.log_std_squash = log_std_squash

    # --- to implement: ``components``, or ``component_means`` and ``log_std`` -------------
    def components(self, obs: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Component means (B, M, d) and log-stds (B, 1 or M, d) for obs (B, o) and noise (B, M, d_z)."""
        return self.component_means(obs, noise), self.log_std(obs).unsqueeze(1)

    def component_means(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Means ``mean(s, z)`` (B, M, d) only (subclasses may skip work the log-std needs)."""
        return self.components(obs, noise)[0]

    def log_std(self, obs: torch.Tensor) -> torch.Tensor:
        """Output log-std (B, d), bounded to [log_std_min, log_std_max]."""
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------
    def bound_log_std(self, raw: torch.Tensor) -> torch.Tensor:
        return bound_log_std(raw, self.log_std_min, self.log_std_max, self.log_std_squash)

    def draw_noise(self, batch: int, m: int, like: torch.Tensor, generator=None) -> torch.Tensor:
        return torch.randn(batch, m, self.noise_dim, dtype=like.dtype, device=like.device, generator=generator)

    def sample(self, obs: torch.Tensor, num_components: int = 1) -> PolicySample:
        """Draw M actions per state, one per component, with the semi-implicit surrogate.

        One network pass per action: the M components that score each action are the
        ones that generated the M actions of the same state.
        """
        m = num_components if self.is_mixture else 1
        noise = self.draw_noise(obs.shape[0], m, obs)
        mean, log_std = self.components(obs, noise)
        x = mean + torch.exp(log_std) * torch.randn_like(mean)
        # With one component the surrogate is the Gaussian log-density itself (same values, fewer ops).
        log_density = gaussian_log_prob(x, mean, log_std) if m == 1 else semi_implicit_log_prob(x, mean, log_std)
        log_prob = log_density - tanh_log_det(x, self.log_det_eps).sum(-1)
        return PolicySample(squash(x), log_prob, x, noise, mean, log_std)

    def sample_first(self, obs: torch.Tensor, num_components: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """``sample(obs, M)``'s first action per state and its log-density: (B, d), (B,).

        Same random draws and values as ``sample(obs, M).action[:, 0]`` and
        ``.log_prob[:, 0]`` (to float rounding), but only that action is scored (1 x M, not M x M):
        the critic target needs one action, the other M - 1 serve only as mixture components.
        """
        m = num_components if self.is_mixture else 1
        noise = self.draw_noise(obs.shape[0], m, obs)
        mean, log_std = self.components(obs, noise)
        eps = torch.randn_like(mean)
        x = mean[:, :1] + torch.exp(log_std[:, :1]) * eps[:, :1]  # (B, 1, d)
        log_density = gaussian_log_prob(x, mean, log_std) if m == 1 else semi_implicit_log_prob(x, mean, log_std)
        log_prob = log_density - tanh_log_det(x, self.log_det_eps).sum(-1)
        return squash(x[:, 0]), log_prob[:, 0]

    def act(self, obs: torch.Tensor, mode: str = "sample", num_candidates: int = 16,
            q_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
        """Actions (B, d) in [-1, 1] for evaluation or deployment.

        ``sample``: a stochastic action (1 network pass). ``mean``: the Gaussian's mean
        (Gaussian policy only). ``best-of-n``: ``num_candidates`` noise-free candidates
        ``tanh(mean(s, z_n))`` in one batched pass, keep the one with the highest ``q_fn``
        (min over the critic ensemble); without a critic it falls back to the first candidate.
        """
        mode = self.resolve_mode(mode)
        b = obs.shape[0]
        if mode == "sample":
            noise = self.draw_noise(b, 1, obs)
            mean, log_std = self.components(obs, noise)
            return squash(mean + torch.exp(log_std) * torch.randn_like(mean)).squeeze(1)
        if mode == "mean":
            return squash(self.component_means(obs, self.draw_noise(b, 1, obs))).squeeze(1)
        n = num_candidates if self.is_mixture else 1  # best-of-n
        noise = self.draw_noise(b, n, obs)
        cand = squash(self.component_means(obs, noise))  # (B, N, d)
        if n == 1 or q_fn is None:
            return cand[:, 0]
        q = q_fn(obs.unsqueeze(1).expand(b, n, obs.shape[-1]).reshape(b * n, -1), cand.reshape(b * n, -1))
        best = q.reshape(b, n).argmax(dim=1)
        return cand[torch.arange(b), best]

    def resolve_mode(self, mode: str) -> str:
        """``auto`` and the modes this policy has (``smfp.config.resolve_act_mode``: the one rule)."""
        return resolve_act_mode(mode, self.is_mixture, self.kind)

    def default_eval_mode(self) -> str:
        return self.resolve_mode("auto")

    def init_kwargs(self) -> dict:
        """Constructor arguments, so that a checkpoint can rebuild the network."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, obs_dim: int, act_dim: int, cfg) -> "Policy":
        """The policy a ``PolicyConfig`` describes (what ``smfp train`` builds)."""
        raise NotImplementedError

    def auxiliary_loss(self, obs: torch.Tensor, cfg, data: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """An extra loss of this policy class added to the actor loss (None: none); ``cfg``: ``PolicyConfig``.
        ``data`` (pre-squash actions, one per row of ``obs``): fit the policy to those samples instead."""
        return None


def head_one_hot(probs: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """``one_hot(c)`` (B, M, K) with ``c ~ probs`` (B, K) drawn by inverting the CDF at ``u = Phi(normal)`` (B, M):
    a standard normal input, so that an exported actor takes all of its randomness in one normal tensor and
    picks the same head as the library for the same numbers."""
    u = 0.5 * (1.0 + torch.erf(normal * (2.0 ** -0.5)))
    cdf = torch.cumsum(probs, dim=-1)
    k = probs.shape[-1]
    c = (cdf.unsqueeze(-2) < u.unsqueeze(-1)).sum(-1).clamp(max=k - 1)  # (B, M)
    return (torch.arange(k, device=c.device) == c.unsqueeze(-1)).to(normal.dtype)


GENERATOR_ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU}  # of a transport policy's generator network


class TransportPolicy(Policy):
    """A policy whose component means are a learned transport of the noise ``z``.

    A generator network ``f([s, x, times])`` is applied in ``steps`` jumps ``x <- x - dt_k f`` that
    carry ``z`` (t = 1) to the pre-squash mean (t = 0); a small state-only network gives the output
    noise ``log sigma(s)``. Subclasses give the per-step time inputs and step sizes (``step_times``).

    Why sigma is a separate state-only network (measured, docs/method.md): a log-std head on the
    generator (sigma(s, z)) let the fixed-Q fits mix very sharp and very wide components (1-D double
    well TV 0.14-0.15 vs <= 0.10, 4 seeds), and a head on the generator's first-layer state part
    stalled a 2-D four-corner fit with one coordinate unsplit (sigma 0.62).
    """

    is_mixture = True
    default_steps: int = 1
    generator_name: str = "generator"  # the generator's attribute (and state-dict) name

    @property
    def generator_net(self) -> nn.Module:
        return getattr(self, self.generator_name)

    def __init__(self, obs_dim: int, act_dim: int, time_dim: int, hidden: tuple[int, ...] = (256, 256),
                 sigma_hidden: tuple[int, ...] = (64, 64), log_std_min: float = -5.0, log_std_max: float = 2.0,
                 noise_scale: float = 1.0, learn_noise_scale: bool = False, heads: int = 1,
                 per_head_sigma: bool = False, activation: str = "silu", state_base: bool = False,
                 log_std_squash: str = "tanh"):
        super().__init__(obs_dim, act_dim, log_std_min, log_std_max, log_std_squash)
        if activation not in GENERATOR_ACTIVATIONS:
            raise ValueError(f"unknown generator activation {activation!r}; choose {', '.join(GENERATOR_ACTIVATIONS)}")
        self.activation = activation
        if int(heads) < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        if per_head_sigma and int(heads) < 2:
            raise ValueError("a sigma per head needs heads > 1")
        if state_base and int(heads) > 1:
            raise ValueError("a state base is for one-head policies (heads place their modes with the generator)")
        self.hidden = tuple(hidden)
        self.sigma_hidden = tuple(sigma_hidden)
        # heads > 1: a discrete latent c ~ softmax(logits(s)) beside z (docs/method.md, "Heads"). The noise is then
        # [z, one_hot(c)] (noise_dim = d + K), the generator reads the one-hot after its time inputs, and the
        # state-only network gives the K logits after the d log-stds.
        self.heads = int(heads)
        latent = self.heads if self.heads > 1 else 0
        self.noise_dim = act_dim + latent
        setattr(self, self.generator_name,
                mlp(obs_dim + act_dim + time_dim + latent, self.hidden, act_dim, act=GENERATOR_ACTIVATIONS[activation]))
        # per_head_sigma: K log-stds (one per head, head-major) before the logits. With one sigma shared by the heads,
        # a head's width in action space is set by where it sits (tanh), and no head can be broad while another is
        # narrow: a mixture of 8-16 Gaussians with one shared width cannot follow five narrow peaks on a broad
        # background (docs/experiments.md, 2026-12-05 third session), 8 with their own widths can.
        self.per_head_sigma = bool(per_head_sigma)
        self.sigma_heads = self.heads if self.per_head_sigma else 1
        # state_base: the state-only network also gives a shift mu(s) of every component, mean(s, z) = mu(s) + T(s, z)
        # (T the transport). mu(s) learns the state-dependent centre as a Gaussian actor does, from every sample of
        # the state; T only the spread and modes around it. Measured (docs/experiments.md, 2026-12-06): without it the
        # map learns E[a|s] of a unimodal multi-state fixed-Q target ~5x slower (in updates) than SAC's actor.
        self.state_base = bool(state_base)
        self.sigma_net = mlp(obs_dim, self.sigma_hidden,
                             act_dim * self.sigma_heads + latent + (act_dim if self.state_base else 0))
        # kappa: the prior is z ~ N(0, diag(kappa^2)), written kappa * eps with eps ~ N(0, I) so that every user of
        # the noise (sampler, surrogate, anchor, critic target, best-of-n, export) draws eps and the transport
        # scales it. kappa = 0 makes the policy a Gaussian on its own networks (the control of docs/method.md).
        self.noise_scale, self.learn_noise_scale = float(noise_scale), bool(learn_noise_scale)
        if learn_noise_scale:
            if noise_scale <= 0:
                raise ValueError("a learnt noise scale needs a positive initial value")
            self.log_kappa = nn.Parameter(torch.full((act_dim,), math.log(noise_scale)))
        else:  # fixed: rebuilt from init_kwargs, not saved (older checkpoints load with kappa = 1)
            self.register_buffer("fixed_kappa", torch.full((act_dim,), float(noise_scale)), persistent=False)

    @property
    def kappa(self) -> torch.Tensor:
        """The noise scale per action dimension (d,)."""
        return self.log_kappa.exp() if self.learn_noise_scale else self.fixed_kappa

    # --- to implement -------------------------------------------------------------------
    def step_times(self, i: int, steps: int) -> tuple[list[float], float]:
        """Time inputs and step size of jump ``i`` of ``steps``."""
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------
    def log_std(self, obs: torch.Tensor) -> torch.Tensor:
        """The output log-std (B, d); with a sigma per head, use ``noise_log_std`` (the head is in the noise)."""
        if self.per_head_sigma:
            raise ValueError("this policy has a sigma per head: its log-std depends on the head (noise_log_std)")
        return self.bound_log_std(self.sigma_net(obs)[..., : self.act_dim])

    def head_log_stds(self, obs: torch.Tensor) -> torch.Tensor:
        """Every head's output log-std (B, K, d) (one shared sigma: (B, 1, d))."""
        d, k = self.act_dim, self.sigma_heads
        return self.bound_log_std(self.sigma_net(obs)[..., : d * k].reshape(*obs.shape[:-1], k, d))

    def noise_log_std(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The log-std of the components at ``noise`` (B, M, d_z): (B, 1, d) when shared, (B, M, d) per head."""
        if not self.per_head_sigma:
            return self.log_std(obs).unsqueeze(1)
        return torch.bmm(self.split_noise(noise)[1], self.head_log_stds(obs))  # the one-hot picks the head's row

    def components(self, obs, noise):
        if self.state_base:  # one pass of the state network for both the shift and the log-std
            out = self.sigma_net(obs)
            d = self.act_dim
            return self.transport(obs, noise) + out[..., d:].unsqueeze(-2), self.bound_log_std(out[..., :d]).unsqueeze(-2)
        return self.component_means(obs, noise), self.noise_log_std(obs, noise)

    def base_mean(self, obs: torch.Tensor) -> Optional[torch.Tensor]:
        """The state base mu(s) (B, d) of a ``state_base`` policy; None without one."""
        if not self.state_base:
            return None
        return self.sigma_net(obs)[..., self.act_dim:]

    def means(self, obs: torch.Tensor, noise: torch.Tensor, steps: Optional[int] = None) -> torch.Tensor:
        """Component means (B, M, d) after ``steps`` jumps of the transport, plus the state base if there is one."""
        x = self.transport(obs, noise, steps)
        return x if not self.state_base else x + self.base_mean(obs).unsqueeze(-2)

    def head_log_probs(self, obs: torch.Tensor) -> torch.Tensor:
        """``log p(c | s)`` of the K heads (B, K); one head: zeros (B, 1)."""
        if self.heads == 1:
            return obs.new_zeros(obs.shape[0], 1)
        logits = self.sigma_net(obs)[..., self.act_dim * self.sigma_heads:]
        return torch.log_softmax(logits.float(), dim=-1).to(obs.dtype)

    def draw_noise(self, batch: int, m: int, like: torch.Tensor, generator=None) -> torch.Tensor:
        """``eps ~ N(0, I)``, and with heads the one-hot of ``c ~ p(c | s)`` for each of the M draws (``like``: the
        states then, (batch, o))."""
        if self.heads == 1:
            return super().draw_noise(batch, m, like, generator)
        zh = torch.randn(batch, m, self.act_dim + 1, dtype=like.dtype, device=like.device, generator=generator)
        with torch.no_grad():
            one_hot = head_one_hot(self.head_log_probs(like).exp(), zh[..., self.act_dim])
        return torch.cat([zh[..., : self.act_dim], one_hot], dim=-1)

    def head_layout(self, batch: int, per_head: int, like: torch.Tensor) -> torch.Tensor:
        """Noises with every head present (the EM fit's layout): (B, K * per_head, d_z), head-major blocks
        (draw ``j`` belongs to head ``j // per_head``); one head: ``per_head`` plain draws."""
        z = torch.randn(batch, self.heads * per_head, self.act_dim, dtype=like.dtype, device=like.device)
        if self.heads == 1:
            return z
        c = torch.arange(self.heads, device=z.device).repeat_interleave(per_head)
        one_hot = F.one_hot(c, self.heads).to(z.dtype).expand(batch, -1, -1)
        return torch.cat([z, one_hot], dim=-1)

    def split_noise(self, noise: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(z, one_hot(c))`` of a noise tensor; the one-hot is None for a one-head policy."""
        if self.heads == 1:
            return noise, None
        return noise[..., : self.act_dim], noise[..., self.act_dim:]

    def transport(self, obs: torch.Tensor, noise: torch.Tensor, steps: Optional[int] = None) -> torch.Tensor:
        """Map noise (B, M, d_z) to pre-squash means (B, M, d) in ``steps`` jumps (default: the class's own)."""
        k = self.default_steps if steps is None else int(steps)
        b, m, _ = noise.shape
        s = obs.unsqueeze(1).expand(b, m, obs.shape[-1])
        x, latent = self.split_noise(noise)
        x = x * self.kappa.to(x.dtype) if self.learn_noise_scale or self.noise_scale != 1.0 else x
        extra = [] if latent is None else [latent]
        for i in range(k):
            times, dt = self.step_times(i, k)
            t = x.new_tensor(times).expand(b, m, len(times))
            x = x - dt * self.generator_net(torch.cat([s, x, t, *extra], dim=-1))
        return x

    def component_means(self, obs, noise):
        return self.means(obs, noise)
