"""Deployable actors: observation (+ noise) -> action in the task's own bounds.

Each actor is a small ``nn.Module`` built from a trained policy (and, for best-of-N, its critic
ensemble) that TorchScript can script and the ONNX exporter can trace; it is also what
``smfp bench latency`` times in eager PyTorch, so eager and exported timings run the same
computation. Randomness is an input, never drawn inside, so that an exported actor can be
checked against the library for the same noise and so that the caller owns the random stream:

==========  =================  ======================================================
mode        inputs             noise layout (standard normal, float32)
==========  =================  ======================================================
sample      obs (B, o),        gaussian: (B, d) = xi;
            noise (B, n)       smfp / flow: (B, 2d) = [z, xi] (z: generator noise,
                               xi: output noise); smfp with K heads: (B, 2d + 1) =
                               [z, xi, h], the head from h (inverse CDF at Phi(h))
best-of-n   obs (B, o),        smfp / flow: (B, N, d) = N candidate noises z per state
            noise (B, N, d)    (N is free at run time; sigma = 0; the critic's min-Q
                               picks the candidate); with heads (B, N, d + 1) = [z, h]
mean        obs (B, o)         gaussian only: tanh of the mean
==========  =================  ======================================================

Exact rewrites (no approximation): the time inputs of the generator network are constants
per step, so their first-layer columns are folded into one bias per step, and the network
runs on ``[obs, x]``; the affine map ``[-1, 1] -> [low, high]`` is ``center + half * a``.
"""

from __future__ import annotations

import copy
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from smfp.config import ACT_MODES
from smfp.policies import Policy, TransportPolicy
from smfp.policies.base import bound_log_std, head_one_hot
from smfp.policies.distributions import squash

MODES = ACT_MODES  # the act modes an actor can be exported in (smfp.config: the one list)


class ExportError(ValueError):
    """A user-facing export problem (reported as one line)."""


def _frozen(module: nn.Module) -> nn.Module:
    """A detached float32 copy; a layer stack becomes a plain ``nn.Sequential`` (training-time
    options of the library's MLP, such as reduced matmul precision, do not belong in a deployed actor)."""
    if isinstance(module, nn.Sequential):
        module = nn.Sequential(*(copy.deepcopy(m) for m in module))
    else:
        module = copy.deepcopy(module)
    module = module.float().eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``a + b * c``: one fused op in eager/TorchScript; plain Mul + Add when traced for ONNX (the
    exporter turns ``addcmul`` into an extra multiplication by its constant ``value = 1``)."""
    if torch.jit.is_tracing():
        return a + b * c
    return torch.addcmul(a, b, c)


class _StepField(nn.Module):
    """A generator network ``f([obs, x, time...])`` with its time inputs folded into per-step biases."""

    def __init__(self, seq: nn.Sequential, state_cols: int, step_times: list[list[float]]):
        super().__init__()
        first = seq[0]
        w = first.weight.detach()
        times = torch.tensor(step_times, dtype=torch.float64)  # (K, c)
        time_cols = times.shape[1]
        folded = first.bias.detach().double() + times @ w[:, state_cols:state_cols + time_cols].double().T  # (K, H)
        if w.shape[1] > state_cols + time_cols:  # a heads policy's one-hot columns: their product is a head's bias
            self.latent_weight = nn.Parameter(w[:, state_cols + time_cols:].clone(), requires_grad=False)
        self.weight = nn.Parameter(w[:, :state_cols].clone(), requires_grad=False)
        self.biases: list[torch.Tensor] = [b.to(w.dtype).clone() for b in folded]
        self.act = _frozen(seq[1])
        self.rest = _frozen(nn.Sequential(*list(seq)[2:]))

    def forward(self, inp: torch.Tensor, k: int) -> torch.Tensor:
        return self.rest(self.act(F.linear(inp, self.weight, self.biases[k])))

    def forward_shifted(self, inp: torch.Tensor, k: int, shift: torch.Tensor) -> torch.Tensor:
        """As ``forward`` with ``shift`` added to the first layer's output (a head's bias)."""
        return self.rest(self.act(F.linear(inp, self.weight, self.biases[k]) + shift))


class _BoundedLogStd(nn.Module):
    """The policy's log-std bound (``smfp.policies.base.bound_log_std``, the same function)."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.low, self.high = float(policy.log_std_min), float(policy.log_std_max)
        self.squash = str(policy.log_std_squash)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return bound_log_std(raw, self.low, self.high, self.squash)


class _MinQ(nn.Module):
    """min over the critic ensemble, from a ``QEnsemble``'s stacked (E, in, out) weights."""

    def __init__(self, critic: nn.Module):
        super().__init__()
        self.weights: list[torch.Tensor] = [w.detach().clone() for w in critic.weights]
        self.biases: list[torch.Tensor] = [b.detach().clone() for b in critic.biases]
        self.num_q = int(critic.num_q)
        self.layers = len(self.weights)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        h = torch.cat([obs, act], dim=-1).unsqueeze(0).expand(self.num_q, -1, -1)
        for i in range(self.layers):
            h = torch.baddbmm(self.biases[i], h, self.weights[i])
            if i < self.layers - 1:
                h = torch.relu(h)
        return h.squeeze(-1).min(dim=0).values


class _Rescale(nn.Module):
    def __init__(self, low: np.ndarray, high: np.ndarray):
        super().__init__()
        low64, high64 = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        self.register_buffer("center", torch.tensor((high64 + low64) / 2.0, dtype=torch.float32))
        self.register_buffer("half_range", torch.tensor((high64 - low64) / 2.0, dtype=torch.float32))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return _fma(self.center, self.half_range, a)


class GaussianSampleActor(nn.Module):
    def __init__(self, policy: Policy, low, high):
        super().__init__()
        self.net = _frozen(policy.net)
        self.act_dim = int(policy.act_dim)
        self.log_std = _BoundedLogStd(policy)
        self.rescale = _Rescale(low, high)

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        h = self.net(obs)  # constant slice bounds (a chunk would trace to shape arithmetic in ONNX)
        mean, raw = h[:, : self.act_dim], h[:, self.act_dim :]
        x = _fma(mean, torch.exp(self.log_std(raw)), noise)
        return self.rescale(torch.tanh(x))


class GaussianMeanActor(nn.Module):
    def __init__(self, policy: Policy, low, high):
        super().__init__()
        self.net = _frozen(policy.net)
        self.act_dim = int(policy.act_dim)
        self.rescale = _Rescale(low, high)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.rescale(torch.tanh(self.net(obs)[:, : self.act_dim]))


def _generator(policy: Policy, steps: int) -> tuple[nn.Sequential, list[list[float]], list[float]]:
    """The generator network, its per-step time inputs and step sizes, as ``TransportPolicy.transport`` uses them."""
    if not isinstance(policy, TransportPolicy):
        raise ExportError(f"no generator for policy {policy.kind!r}")
    times, dts = [], []
    for i in range(steps):
        t, dt = policy.step_times(i, steps)
        times.append(list(t))
        dts.append(float(dt))
    return policy.generator_net, times, dts


class _Transport(nn.Module):
    """The generator of a mixture policy, ``steps`` jumps from noise to the pre-squash mean."""

    def __init__(self, policy: Policy, low, high, steps: int):
        super().__init__()
        seq, times, dts = _generator(policy, steps)
        self.obs_dim, self.act_dim = int(policy.obs_dim), int(policy.act_dim)
        self.field = _StepField(seq, self.obs_dim + self.act_dim, times)
        self.dts: list[float] = dts
        self.steps = len(dts)
        self.rescale = _Rescale(low, high)
        self.register_buffer("kappa", policy.kappa.detach().clone())  # z = kappa * noise, as in the transport


class MixtureSampleActor(_Transport):
    """smfp / flow: ``x = transport(s, z) + sigma(s) xi``, then the bounds."""

    def __init__(self, policy: Policy, low, high, steps: int):
        super().__init__(policy, low, high, steps)
        self.sigma_net = _frozen(policy.sigma_net)
        self.log_std = _BoundedLogStd(policy)
        self.state_base = bool(getattr(policy, "state_base", False))

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        d = self.act_dim
        x, xi = noise[:, :d] * self.kappa, noise[:, d:]
        for k in range(self.steps):
            x = torch.sub(x, self.field(torch.cat([obs, x], dim=-1), k), alpha=self.dts[k])
        raw = self.sigma_net(obs)
        if self.state_base:  # [log-std, shift mu(s)]
            x = x + raw[:, d:]
        std = torch.exp(self.log_std(raw[:, :d]))
        return self.rescale(torch.tanh(_fma(x, std, xi)))


class _Heads(nn.Module):
    """A heads policy's choice of head: ``p(c|s)`` from the sigma network's last K outputs, ``c`` by inverting their
    CDF at ``Phi(h)`` for a standard normal ``h`` (``smfp.policies.base.head_one_hot``, the library's own rule)."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.act_dim, self.heads = int(policy.act_dim), int(policy.heads)
        self.logits_from = self.act_dim * int(getattr(policy, "sigma_heads", 1))  # the log-stds come first
        self.register_buffer("index", torch.arange(self.heads, dtype=torch.float32))

    def forward(self, raw: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
        """``raw`` (B, d S + K) of the sigma network (S log-stds: 1, or K with a sigma per head), ``normal`` (B, M)
        -> one-hot (B, M, K)."""
        cdf = torch.cumsum(torch.softmax(raw[:, self.logits_from:], dim=-1), dim=-1)
        u = 0.5 * (1.0 + torch.erf(normal * 0.7071067811865476))
        c = (cdf.unsqueeze(1) < u.unsqueeze(-1)).to(torch.float32).sum(-1).clamp(max=float(self.heads - 1))
        return (self.index == c.unsqueeze(-1)).to(torch.float32)


class MixtureHeadsSampleActor(_Transport):
    """smfp with heads: noise ``(B, 2d + 1) = [z, xi, h]``; the head from ``h``, then as ``MixtureSampleActor``."""

    def __init__(self, policy: Policy, low, high, steps: int):
        super().__init__(policy, low, high, steps)
        self.sigma_net = _frozen(policy.sigma_net)
        self.log_std = _BoundedLogStd(policy)
        self.pick = _Heads(policy)
        self.sigma_heads = int(getattr(policy, "sigma_heads", 1))

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        d = self.act_dim
        x, xi, h = noise[:, :d] * self.kappa, noise[:, d:2 * d], noise[:, 2 * d:]
        raw = self.sigma_net(obs)
        one_hot = self.pick(raw, h)[:, 0]
        shift = F.linear(one_hot, self.field.latent_weight)
        for k in range(self.steps):
            x = torch.sub(x, self.field.forward_shifted(torch.cat([obs, x], dim=-1), k, shift), alpha=self.dts[k])
        if self.sigma_heads > 1:  # a sigma per head: the drawn head's row of the K x d raw log-stds
            raw_std = torch.bmm(one_hot.unsqueeze(1), raw[:, : d * self.sigma_heads].reshape(-1, self.sigma_heads, d))
            std = torch.exp(self.log_std(raw_std.squeeze(1)))
        else:
            std = torch.exp(self.log_std(raw[:, :d]))
        return self.rescale(torch.tanh(_fma(x, std, xi)))


class MixtureHeadsBestOfNActor(_Transport):
    """smfp with heads: noise ``(B, N, d + 1) = [z, h]`` per candidate; then as ``MixtureBestOfNActor``."""

    def __init__(self, policy: Policy, critic: nn.Module, low, high, steps: int):
        super().__init__(policy, low, high, steps)
        self.min_q = _MinQ(critic)
        self.sigma_net = _frozen(policy.sigma_net)
        self.pick = _Heads(policy)

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        b, n, d = noise.shape[0], noise.shape[1], self.act_dim
        s = obs.unsqueeze(1).expand(b, n, self.obs_dim)
        x = noise[:, :, :d] * self.kappa
        shift = F.linear(self.pick(self.sigma_net(obs), noise[:, :, d]), self.field.latent_weight)
        for k in range(self.steps):
            x = torch.sub(x, self.field.forward_shifted(torch.cat([s, x], dim=-1), k, shift), alpha=self.dts[k])
        cand = torch.tanh(x)
        q = self.min_q(s.reshape(b * n, self.obs_dim), cand.reshape(b * n, d)).reshape(b, n)
        best = q.argmax(dim=1)
        a = torch.gather(cand, 1, best.reshape(b, 1, 1).expand(b, 1, d)).squeeze(1)
        return self.rescale(a)


class MixtureBestOfNActor(_Transport):
    """smfp / flow: N noise-free candidates ``tanh(transport(s, z_n))``, the one with the highest min-Q."""

    def __init__(self, policy: Policy, critic: nn.Module, low, high, steps: int):
        super().__init__(policy, low, high, steps)
        self.min_q = _MinQ(critic)
        self.state_base = bool(getattr(policy, "state_base", False))
        # the shift mu(s) comes from the state network (TorchScript compiles both branches: a stand-in without one)
        self.base_net = _frozen(policy.sigma_net) if self.state_base else nn.Identity()

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        b, n = noise.shape[0], noise.shape[1]
        s = obs.unsqueeze(1).expand(b, n, self.obs_dim)
        x = noise * self.kappa
        for k in range(self.steps):
            x = torch.sub(x, self.field(torch.cat([s, x], dim=-1), k), alpha=self.dts[k])
        if self.state_base:
            x = x + self.base_net(obs)[:, self.act_dim:].unsqueeze(1)
        cand = torch.tanh(x)
        q = self.min_q(s.reshape(b * n, self.obs_dim), cand.reshape(b * n, self.act_dim)).reshape(b, n)
        best = q.argmax(dim=1)
        a = torch.gather(cand, 1, best.reshape(b, 1, 1).expand(b, 1, self.act_dim)).squeeze(1)
        return self.rescale(a)


def resolve_mode(policy: Policy, mode: str) -> str:
    """``auto`` -> the policy's evaluation default; gaussian best-of-n is its mean (one candidate)."""
    try:
        mode = policy.resolve_mode(mode)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    if mode == "best-of-n" and not policy.is_mixture:
        mode = "mean"
    return mode


def default_steps(policy: Policy) -> int:
    return int(policy.default_steps) if isinstance(policy, TransportPolicy) else 1


def build_actor(policy: Policy, low, high, mode: str = "sample", steps: Optional[int] = None,
                critic: Optional[nn.Module] = None) -> nn.Module:
    """A deployable actor for ``policy``; ``steps``: MeanFlow jumps (smfp) or Euler steps (flow)."""
    mode = resolve_mode(policy, mode)
    steps = default_steps(policy) if steps is None else int(steps)
    if steps < 1:
        raise ExportError(f"steps must be positive, got {steps}")
    heads = getattr(policy, "heads", 1) > 1
    if not policy.is_mixture:
        actor = GaussianSampleActor(policy, low, high) if mode == "sample" else GaussianMeanActor(policy, low, high)
    elif mode == "sample":
        actor = (MixtureHeadsSampleActor if heads else MixtureSampleActor)(policy, low, high, steps)
    else:
        if critic is None:
            raise ExportError("best-of-n needs the run's critic, and none was given")
        actor = (MixtureHeadsBestOfNActor if heads else MixtureBestOfNActor)(policy, critic, low, high, steps)
    return actor.eval()


def noise_shape(policy: Policy, mode: str, num_candidates: int = 16) -> Optional[tuple[int, ...]]:
    """Per-state noise shape the actor expects (None: no noise input)."""
    mode = resolve_mode(policy, mode)
    d = int(policy.act_dim)
    if mode == "mean":
        return None
    extra = 1 if getattr(policy, "heads", 1) > 1 else 0  # a heads policy's head: one more normal number
    if mode == "best-of-n":
        return (num_candidates, d + extra)
    return (2 * d + extra,) if policy.is_mixture else (d,)


@torch.no_grad()
def reference_actions(policy: Policy, low, high, mode: str, obs: torch.Tensor, noise: Optional[torch.Tensor],
                      steps: Optional[int] = None, critic: Optional[nn.Module] = None) -> torch.Tensor:
    """The library's own (eager ``Policy``) actions for the given observations and noise.

    Written against the ``Policy`` interface (``components``, ``transport``, the critic), not the
    deployable modules, so comparing the two checks the rewrites above.
    """
    mode = resolve_mode(policy, mode)
    steps = default_steps(policy) if steps is None else int(steps)
    b, d = obs.shape[0], policy.act_dim
    if mode == "mean":
        a = squash(policy.component_means(obs, obs.new_zeros(b, 1, d)))[:, 0]
    elif mode == "sample" and not policy.is_mixture:
        mean, log_std = policy.components(obs, obs.new_zeros(b, 1, d))
        a = squash(mean + torch.exp(log_std) * noise.unsqueeze(1))[:, 0]
    elif mode == "sample":
        z, xi = noise[:, :d].unsqueeze(1), noise[:, d:2 * d].unsqueeze(1)
        if getattr(policy, "heads", 1) > 1:
            z = torch.cat([z, head_one_hot(policy.head_log_probs(obs).exp(), noise[:, 2 * d:])], dim=-1)
        mean = policy.means(obs, z, steps)
        a = squash(mean + torch.exp(policy.noise_log_std(obs, z)) * xi)[:, 0]
    else:
        cand, q = _candidates(policy, obs, noise, steps, critic)
        a = cand[torch.arange(b), q.argmax(dim=1)]
    return _rescale(a, low, high)


def _rescale(a: torch.Tensor, low, high) -> torch.Tensor:
    low_t = torch.as_tensor(np.asarray(low, dtype=np.float32))
    high_t = torch.as_tensor(np.asarray(high, dtype=np.float32))
    return low_t + (a + 1.0) * 0.5 * (high_t - low_t)


def _candidates(policy: Policy, obs: torch.Tensor, noise: torch.Tensor, steps: int,
                critic: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """best-of-n's candidates in [-1, 1] (B, N, d) and their min-Q (B, N)."""
    b, n, d = obs.shape[0], noise.shape[1], policy.act_dim
    if getattr(policy, "heads", 1) > 1:
        noise = torch.cat([noise[..., :d], head_one_hot(policy.head_log_probs(obs).exp(), noise[..., d])], dim=-1)
    cand = squash(policy.means(obs, noise, steps))
    obs_rep = obs.unsqueeze(1).expand(b, n, obs.shape[-1]).reshape(b * n, -1)
    return cand, critic(obs_rep, cand.reshape(b * n, d)).min(dim=0).values.reshape(b, n)


def reference_candidates(policy: Policy, low, high, obs: torch.Tensor, noise: torch.Tensor,
                         steps: Optional[int], critic: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """best-of-n's candidates in the task's bounds (B, N, d) and their min-Q (B, N), as ``reference_actions``
    computes them (to tell a real disagreement from a near-tie that float rounding decided the other way)."""
    steps = default_steps(policy) if steps is None else int(steps)
    cand, q = _candidates(policy, obs, noise, steps, critic)
    return _rescale(cand, low, high), q


__all__ = ["MODES", "ExportError", "build_actor", "default_steps", "noise_shape", "reference_actions",
           "reference_candidates", "resolve_mode"]
