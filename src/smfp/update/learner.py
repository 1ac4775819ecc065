"""The learner: networks, optimisers and temperatures, advanced one update at a time.

Data flows one way: the training loop hands in a replay ``Batch``; ``update`` returns a dict
of metric tensors (converted to numbers only when the logger asks). Algorithms differ only
by configuration: the policy class, and the mirror-descent weight ``lambda`` (0 = SAC's soft
policy improvement).
"""

from __future__ import annotations

import copy
import math
import os
import sys

import torch
from torch import nn

from smfp import keys as K
from smfp.buffer import Batch
from smfp.config import TrainConfig
from smfp.critic import QEnsemble
from smfp.policies import Policy, policy_from_config
from smfp.policies.distributions import gaussian_log_prob, tanh_log_det
from smfp.precision import PRECISIONS, matmul_precision, resolve_precision
from smfp.update.losses import (actor_loss, critic_loss, em_actor_loss, fit_actor_loss, md_target_samples,
                                soft_optimal_target, soft_target)


def make_adam(params, lr: float) -> torch.optim.Adam:
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, foreach=True)


_ALLOCATOR_TUNED = False


def tune_allocator() -> None:
    """Keep freed tensor memory in the process heap (glibc only; once per process).

    By default glibc serves the multi-MB temporaries of an update (the SMFP actor works on
    B x M rows) with fresh ``mmap`` pages and returns them on ``free``, so every update pays
    thousands of page faults (measured: ~1350 per SMFP update, ~20% of its CPU time). A fixed
    32 MiB mmap threshold and a 256 MiB trim threshold keep those pages mapped for reuse.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED or not sys.platform.startswith("linux") or os.environ.get("SMFP_NO_MALLOC_TUNING"):
        return
    _ALLOCATOR_TUNED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameter ids from malloc.h
        libc.mallopt(m_mmap_threshold, 32 << 20)
        libc.mallopt(m_trim_threshold, 256 << 20)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def grad_norm(params: list[nn.Parameter], clip: float) -> torch.Tensor:
    """Total gradient norm before clipping; clips in place when ``clip > 0``."""
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
    # Same norm as clip_grad_norm_ computes, without its (identity) rescaling of every gradient.
    return torch.nn.utils.get_total_norm([q.grad for q in params if q.grad is not None], foreach=True)


class Learner:
    def __init__(self, cfg: TrainConfig, obs_dim: int, act_dim: int):
        self.cfg = cfg
        p, c, u = cfg.policy, cfg.critic, cfg.update
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.policy: Policy = policy_from_config(cfg.policy_kind, obs_dim, act_dim, p)
        self.components = p.components if self.policy.is_mixture else 1
        self.target_components = (p.target_components or p.components) if self.policy.is_mixture else 1
        self.actor_states = p.actor_states or max(1, u.batch_size // self.components)
        self.use_md = u.md_lambda > 0 or u.autotune_lambda
        self.md_active = not u.md_warmup  # --md-warmup: lambda = 0 until the entropy first reaches its target
        self.anchor: Policy | None = copy.deepcopy(self.policy).requires_grad_(False) if self.use_md else None
        self.critic = QEnsemble(obs_dim, act_dim, c.critic_hidden, c.num_q)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(max(u.alpha, 1e-8)), requires_grad=u.autotune_alpha)
        self.log_lambda = torch.tensor(math.log(max(u.md_lambda, 1e-8)), requires_grad=u.autotune_lambda)
        self.target_entropy = float(-act_dim if u.target_entropy is None else u.target_entropy)
        self.actor_params = list(self.policy.parameters())
        self.critic_params = list(self.critic.parameters())
        self.actor_opt = make_adam(self.actor_params, u.actor_lr)
        self.critic_opt = make_adam(self.critic_params, u.critic_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=u.alpha_lr) if u.autotune_alpha else None
        self.lambda_opt = torch.optim.Adam([self.log_lambda], lr=u.lambda_lr) if u.autotune_lambda else None
        self.updates = 0
        self.last_meanflow: torch.Tensor | None = None  # latest MeanFlow loss (applied every N updates)
        self.skipped_updates = 0
        self.consecutive_nonfinite = 0
        self.last_refresh_kl = torch.zeros(())
        # Large-M entropy minus the M-component surrogate's (nats, running mean): the surrogate's bias.
        self.entropy_gap = torch.zeros(())
        self.entropy_large_m = torch.zeros(())
        self.matmul_dtype = PRECISIONS[resolve_precision(u.precision)]  # auto too: a config not yet resolved
        tune_allocator()

    def frozen_min_q(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """min over the ensemble, with gradients to the action only."""
        return self.critic.forward_frozen(obs, act).min(dim=0).values

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    @property
    def md_lambda(self) -> torch.Tensor:
        if not self.use_md or not self.md_active:
            return torch.zeros(())
        if self.cfg.update.lambda_per_alpha:  # lambda = c * alpha: a step size independent of the reward scale
            return self.cfg.update.md_lambda * self.alpha
        return self.log_lambda.detach().exp()

    def update(self, batch: Batch, with_metrics: bool = False) -> dict[str, torch.Tensor]:
        if self.matmul_dtype is None:
            return self._update(batch, with_metrics)
        with matmul_precision(self.matmul_dtype):  # --precision bf16: hidden layers in bfloat16
            return self._update(batch, with_metrics)

    def _update(self, batch: Batch, with_metrics: bool = False) -> dict[str, torch.Tensor]:
        """One update, composed of step functions: critic, actor, temperatures, targets and anchor."""
        alpha, md_lambda = self.alpha, self.md_lambda  # the values this update's steps use (logged)
        critic = self.critic_step(batch, alpha)
        if critic is None:
            return self._skip(self.critic_opt, with_metrics)
        actor = self.actor_step(batch.obs, self.frozen_min_q)
        if actor is None:
            return self._skip(self.actor_opt, with_metrics)
        self.consecutive_nonfinite = 0
        u = self.cfg.update
        if self.policy.is_mixture and u.entropy_gap_every > 0 and self.updates % u.entropy_gap_every == 1:
            self.measure_entropy_gap(batch.obs)
        self.temperature_step(actor["log_prob"], actor["kl"])
        self.target_step()
        if not with_metrics:
            return {}
        return self._metrics(alpha, md_lambda, critic, actor)

    def critic_step(self, batch: Batch, alpha: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """Regress the ensemble onto the soft target; None (nothing applied) when not finite."""
        u = self.cfg.update
        if u.value_backup == "soft-optimal":
            target = soft_optimal_target(self.policy, self.target_critic, batch, alpha, u.gamma,
                                         u.backup_policy_samples, u.backup_uniform_samples)
        else:
            target = soft_target(self.policy, self.target_critic, batch, alpha, u.gamma, self.target_components)
        loss_q, q = critic_loss(self.critic, batch, target)
        self.critic_opt.zero_grad(set_to_none=True)
        loss_q.backward()
        critic_gn = grad_norm(self.critic_params, u.grad_clip)
        if not self._finite(loss_q, critic_gn):
            return None
        self.critic_opt.step()
        return {"loss": loss_q, "q": q, "target": target, "grad_norm": critic_gn}

    def actor_step(self, obs: torch.Tensor, q_fn) -> dict[str, torch.Tensor] | None:
        """One entropic mirror-descent step of the actor against ``q_fn(obs, act) -> (N,)``.

        ``q_fn`` is the frozen critic's min in training and a known Q in the fixed-Q bench
        (``smfp bench bandit``), so both run this same step. M actions for each of the first
        ``actor_states`` states (the policy's auxiliary loss on the first ``meanflow_batch``); the anchor
        advances here. None (nothing applied) when not finite.
        """
        u, p = self.cfg.update, self.cfg.policy
        obs_a = obs[: self.actor_states]
        alpha, md_lambda = self.alpha, self.md_lambda
        fit = None
        if u.actor_update == "reparam":
            q_obs = obs[: p.q_states] if p.q_states > 0 else None
            loss_pi, smp, kl, anchor_components = actor_loss(self.policy, q_fn, self.anchor, obs_a, alpha, md_lambda,
                                                             self.components, q_obs)
        elif u.actor_update == "em":  # docs/method.md, "Heads"
            loss_pi, smp, kl, anchor_components, fit = em_actor_loss(
                self.policy, q_fn, self.anchor, obs_a, alpha, md_lambda, self.components, u)
        else:  # fit / hybrid (docs/method.md, "The fit update")
            loss_pi, smp, kl, anchor_components, fit = fit_actor_loss(
                self.policy, q_fn, self.anchor, obs_a, alpha, md_lambda, self.components, u)
        loss_total = loss_pi
        cover = None
        if u.cover_coef > 0 and self.policy.is_mixture:
            if anchor_components is None:  # no mirror descent: the policy itself (detached) is the proposal
                anchor_components = (smp.mean.detach(), smp.log_std.detach().expand_as(smp.mean))
            samples, rows, ess = md_target_samples(*anchor_components, q_fn, obs_a, alpha, md_lambda, u.cover_uniform,
                                                   u.cover_per_state)
            loss_cover = self.policy.auxiliary_loss(obs_a[rows], p, data=samples)
            if loss_cover is not None:
                loss_total = loss_total + u.cover_coef * loss_cover
                cover = {"loss": loss_cover.detach(), "ess": ess}
        if p.meanflow_coef > 0 and self.updates % p.meanflow_every == 0:
            aux = self.policy.auxiliary_loss(obs[: p.meanflow_batch], p)
            if aux is not None:
                loss_total = loss_total + p.meanflow_coef * aux
                self.last_meanflow = aux.detach()  # logged even when the logged update skips it (parity)
        self.actor_opt.zero_grad(set_to_none=True)
        loss_total.backward()
        actor_gn = grad_norm(self.actor_params, u.grad_clip)
        if not self._finite(loss_total, actor_gn):
            return None
        self.actor_opt.step()
        self.updates += 1
        self._advance_anchor(kl.detach())
        return {"loss": loss_pi, "sample": smp, "kl": kl.detach(), "log_prob": smp.log_prob.detach(),
                "grad_norm": actor_gn, "cover": cover, "fit": fit}

    @torch.no_grad()
    def measure_entropy_gap(self, obs: torch.Tensor, states: int = 16, large_m: int = 256) -> None:
        """Entropy at ``states`` states with ``large_m`` components vs with M: the surrogate's bias (a lower
        bound, tight as M grows), kept as a running mean; ``--entropy-correction`` tunes alpha on M's
        entropy plus this gap."""
        o = obs[:states]
        large = -self.policy.sample(o, large_m).log_prob.mean()
        small = -self.policy.sample(o, self.components).log_prob.mean()
        gap = (large - small).clamp(min=0.0)
        self.entropy_large_m = large
        first = self.updates <= self.cfg.update.entropy_gap_every
        self.entropy_gap = gap if first else 0.8 * self.entropy_gap + 0.2 * gap

    def temperature_step(self, log_prob: torch.Tensor, kl: torch.Tensor) -> None:
        """Dual ascent of alpha toward the target entropy (and of lambda toward the target KL)."""
        if self.alpha_opt is not None:
            entropy = -log_prob.mean()
            if self.cfg.update.entropy_correction and self.policy.is_mixture:
                entropy = entropy + self.entropy_gap
            # loss -(log_alpha * (target - H)): its gradient, set directly (no autograd graph)
            self.log_alpha.grad = -(self.target_entropy - entropy).to(self.log_alpha.dtype)
            self.alpha_opt.step()
        if not self.md_active and float(-log_prob.mean()) <= self.target_entropy:
            self.md_active = True  # the warm-up ends: the anchor starts from the policy as it is now
            if self.anchor is not None:
                with torch.no_grad():
                    torch._foreach_copy_(list(self.anchor.parameters()), self.actor_params)
        if self.lambda_opt is not None:
            # loss -(log_lambda * (KL - target_kl)): its gradient, set directly
            self.log_lambda.grad = -(kl - self.cfg.update.target_kl).to(self.log_lambda.dtype)
            self.lambda_opt.step()

    def target_step(self) -> None:
        with torch.no_grad():
            torch._foreach_lerp_(list(self.target_critic.parameters()), self.critic_params, self.cfg.update.tau)

    @torch.no_grad()
    def _metrics(self, alpha: torch.Tensor, md_lambda: torch.Tensor, critic: dict, actor: dict) -> dict[str, torch.Tensor]:
        smp, q, target = actor["sample"], critic["q"].detach(), critic["target"]
        x = smp.pre_squash.detach()
        logp = actor["log_prob"]
        logp_m1 = gaussian_log_prob(x, smp.mean.detach(), smp.log_std.detach()) - tanh_log_det(x).sum(-1)
        metrics = {
            K.LOSS_CRITIC: critic["loss"].detach(), K.LOSS_ACTOR: actor["loss"].detach(),
            K.ALPHA: alpha, K.LAMBDA: md_lambda,
            K.ENTROPY: -logp.mean(), K.ENTROPY_M1: -logp_m1.mean(),
            K.KL_ANCHOR: actor["kl"], K.KL_ANCHOR_AT_REFRESH: self.last_refresh_kl,
            K.SIGMA_MEAN: smp.log_std.detach().exp().mean(),
            # how much the output noise depends on the state (SAC's comes from its trunk, SMFP's from a sigma net)
            K.LOG_SIGMA_STATE_SD: smp.log_std.detach().flatten(1).mean(1).std(),
            K.SATURATION: (x.abs() > 3.0).float().mean(),
            K.Q_MEAN: q.mean(), K.Q_MIN: q.min(), K.Q_MAX: q.max(),
            K.TD_ERROR: (q - target.unsqueeze(0)).abs().mean(),
            K.GRAD_NORM_ACTOR: actor["grad_norm"].detach(), K.GRAD_NORM_CRITIC: critic["grad_norm"].detach(),
            K.SKIPPED_UPDATES: torch.tensor(float(self.skipped_updates)),
        }
        if hasattr(self.policy, "kappa"):
            metrics[K.KAPPA_MEAN] = self.policy.kappa.detach().mean()
        if self.last_meanflow is not None:
            metrics[K.LOSS_MEANFLOW] = self.last_meanflow
        if self.policy.is_mixture and self.cfg.update.entropy_gap_every > 0:
            metrics[K.ENTROPY_LARGE_M] = self.entropy_large_m
            metrics[K.ENTROPY_GAP] = self.entropy_gap
        if actor.get("fit") is not None:
            metrics[K.FIT_ESS] = actor["fit"]["ess"]
            if "head_masses" in actor["fit"]:
                m = actor["fit"]["head_masses"].clamp_min(1e-12)
                metrics[K.HEADS_EFFECTIVE] = torch.exp(-(m * m.log()).sum())
        if actor["cover"] is not None:
            metrics[K.LOSS_COVER] = actor["cover"]["loss"]
            metrics[K.COVER_ESS] = actor["cover"]["ess"]
        return metrics

    @staticmethod
    def _finite(loss: torch.Tensor, norm: torch.Tensor) -> bool:
        return math.isfinite(loss.item()) and math.isfinite(norm.item())  # 0-dim: 2 ops, not 10

    def _skip(self, optimizer: torch.optim.Optimizer, with_metrics: bool) -> dict[str, torch.Tensor]:
        """Guard: a non-finite loss or gradient is never applied; the update is skipped and counted."""
        optimizer.zero_grad(set_to_none=True)
        self.skipped_updates += 1
        self.consecutive_nonfinite += 1
        return {K.SKIPPED_UPDATES: torch.tensor(float(self.skipped_updates))} if with_metrics else {}

    def set_learning_rate_factor(self, factor: float) -> None:
        """Every optimiser's learning rate = ``factor`` x its configured one (after a non-finite recovery)."""
        u = self.cfg.update
        for opt, lr in ((self.actor_opt, u.actor_lr), (self.critic_opt, u.critic_lr),
                        (self.alpha_opt, u.alpha_lr), (self.lambda_opt, u.lambda_lr)):
            if opt is not None:
                for group in opt.param_groups:
                    group["lr"] = lr * factor

    def all_finite(self) -> bool:
        """True when every weight and optimiser moment is finite (checked before writing a checkpoint)."""
        tensors = [*self.policy.parameters(), *self.critic.parameters(), *self.target_critic.parameters(),
                   self.log_alpha, self.log_lambda]
        return all(bool(torch.isfinite(t).all()) for t in tensors)

    def _advance_anchor(self, kl: torch.Tensor) -> None:
        if self.anchor is None:
            return
        anchor_params = list(self.anchor.parameters())
        with torch.no_grad():
            if self.cfg.update.anchor_tau > 0:
                torch._foreach_lerp_(anchor_params, self.actor_params, self.cfg.update.anchor_tau)
                self.last_refresh_kl = kl
            elif self.updates % self.cfg.update.anchor_period == 0:
                torch._foreach_copy_(anchor_params, self.actor_params)
                self.last_refresh_kl = kl

    # --- checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {
            "policy": self.policy.state_dict(), "critic": self.critic.state_dict(),
            "target_critic": self.target_critic.state_dict(),
            "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(), "log_lambda": self.log_lambda.detach().clone(),
            "updates": self.updates, "last_refresh_kl": self.last_refresh_kl.clone(),
            "skipped_updates": self.skipped_updates, "entropy_gap": self.entropy_gap.clone(),
            "entropy_large_m": self.entropy_large_m.clone(), "md_active": self.md_active,
        }
        if self.anchor is not None:
            state["anchor"] = self.anchor.state_dict()
        if self.alpha_opt is not None:
            state["alpha_opt"] = self.alpha_opt.state_dict()
        if self.lambda_opt is not None:
            state["lambda_opt"] = self.lambda_opt.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.critic.load_state_dict(state["critic"])
        self.target_critic.load_state_dict(state["target_critic"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
            self.log_lambda.copy_(state["log_lambda"])
        self.updates = int(state["updates"])
        self.skipped_updates = int(state.get("skipped_updates", 0))
        self.consecutive_nonfinite = 0
        self.last_refresh_kl = state["last_refresh_kl"].clone()
        self.entropy_gap = state.get("entropy_gap", torch.zeros(())).clone()  # older checkpoints: none measured
        self.entropy_large_m = state.get("entropy_large_m", torch.zeros(())).clone()
        self.md_active = bool(state.get("md_active", True))  # older checkpoints: no warm-up
        if self.anchor is not None:
            self.anchor.load_state_dict(state["anchor"])
        if self.alpha_opt is not None:
            self.alpha_opt.load_state_dict(state["alpha_opt"])
        if self.lambda_opt is not None:
            self.lambda_opt.load_state_dict(state["lambda_opt"])
