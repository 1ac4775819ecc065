"""Probe-state health measures: mode count and 1-step vs k-step disagreement.

Probe states are drawn once from the replay buffer (when probing starts) and kept, so the
measures are comparable over the run; they go into the checkpoints (``state_dict``), so a
resumed run keeps probing the same states on the same schedule.
"""

from __future__ import annotations

import numpy as np
import torch

from smfp import keys as K
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

    def state_dict(self) -> dict:
        return {"states": None if self.states is None else self.states.clone(), "last_step": self.last_step,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a saved probe; saved states of another count (``--probe-states`` changed) are drawn anew."""
        states = state["states"]
        fits = states is None or (isinstance(states, torch.Tensor) and states.dtype == torch.float32
                                  and states.shape[1:] == (self.policy.obs_dim,) and bool(states.isfinite().all()))
        if not fits:
            raise ValueError(f"probe states of shape {tuple(getattr(states, 'shape', ()))} do not fit this run")
        self.generator.set_state(state["generator"])
        self.last_step = int(state["last_step"])
        self.states = states.clone() if states is not None and len(states) == self.cfg.probe_states else None

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
        out = {K.HEALTH_MODES: float(np.mean(modes)), K.HEALTH_MODES_MAX: float(np.max(modes))}
        if hasattr(self.policy, "transport"):
            noise = self.policy.draw_noise(len(self.states), n, self.states)
            one = torch.tanh(self.policy.means(self.states, noise, steps=1))
            many = torch.tanh(self.policy.means(self.states, noise, steps=self.multistep))
            out[K.HEALTH_MULTISTEP_GAP] = float((one - many).norm(dim=-1).mean())
        return out
