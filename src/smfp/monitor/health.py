"""Probe-state health measures: mode count and 1-step vs k-step disagreement.

Probe states are drawn once from the replay buffer (when probing starts) and kept, so the
measures are comparable over the run.
"""

from __future__ import annotations

import numpy as np
import torch

from smfp.buffer import ReplayBuffer
from smfp.policies import Policy


class HealthProbe:
    def __init__(self, cfg, policy: Policy, multistep: int = 4):
        self.cfg = cfg
        self.policy = policy
        self.multistep = multistep
        self.states: torch.Tensor | None = None
        self.last_step = -1
        self.generator = torch.Generator().manual_seed(12345)

    @torch.no_grad()
    def measure(self, step: int, buffer: ReplayBuffer) -> dict[str, float]:
        from smfp.monitor.modes import count_modes

        if self.states is None:
            idx = torch.randint(0, len(buffer), (self.cfg.probe_states,), generator=self.generator)
            self.states = buffer.obs[idx].clone()
        self.last_step = step
        n = self.cfg.probe_samples
        obs = self.states.repeat_interleave(n, dim=0)
        actions = self.policy.act(obs, "sample").reshape(len(self.states), n, -1).numpy()
        modes = [count_modes(a).count for a in actions]
        out = {"health/modes": float(np.mean(modes)), "health/modes_max": float(np.max(modes))}
        if hasattr(self.policy, "transport"):
            noise = self.policy.draw_noise(len(self.states), n, self.states)
            one = torch.tanh(self.policy.transport(self.states, noise, steps=1))
            many = torch.tanh(self.policy.transport(self.states, noise, steps=self.multistep))
            out["health/multistep_gap"] = float((one - many).norm(dim=-1).mean())
        return out
