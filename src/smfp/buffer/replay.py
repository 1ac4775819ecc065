"""A uniform replay buffer preallocated as torch tensors (no per-sample conversion).

Stores ``next_obs`` explicitly, so a truncated episode keeps its true final observation and
only ``terminated`` (not truncation) cuts the bootstrap.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class Batch(NamedTuple):
    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor


class ReplayBuffer:
    FIELDS = ("obs", "action", "reward", "next_obs", "terminated")

    def __init__(self, obs_dim: int, act_dim: int, capacity: int, seed: int = 0):
        self.obs_dim, self.act_dim, self.capacity = obs_dim, act_dim, int(capacity)
        self.obs = torch.zeros(self.capacity, obs_dim)
        self.next_obs = torch.zeros(self.capacity, obs_dim)
        self.action = torch.zeros(self.capacity, act_dim)
        self.reward = torch.zeros(self.capacity)
        self.terminated = torch.zeros(self.capacity)
        self.pos = 0
        self.size = 0
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f).element_size() * getattr(self, f).nelement() for f in self.FIELDS)

    def __len__(self) -> int:
        return self.size

    def add(self, obs: np.ndarray, action: np.ndarray, reward: float, next_obs: np.ndarray, terminated: bool) -> None:
        i = self.pos
        self.obs[i] = torch.from_numpy(np.asarray(obs, dtype=np.float32))
        self.action[i] = torch.from_numpy(np.asarray(action, dtype=np.float32))
        self.reward[i] = float(reward)
        self.next_obs[i] = torch.from_numpy(np.asarray(next_obs, dtype=np.float32))
        self.terminated[i] = float(terminated)
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int) -> Batch:
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        idx = torch.randint(0, self.size, (batch_size,), generator=self.generator)
        return Batch(self.obs[idx], self.action[idx], self.reward[idx], self.next_obs[idx], self.terminated[idx])

    def state_dict(self) -> dict:
        n = self.size
        state = {f: getattr(self, f)[:n].clone() for f in self.FIELDS}
        state.update(pos=self.pos, size=n, capacity=self.capacity, generator=self.generator.get_state())
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a saved buffer; this one may be larger (a run resumed with a larger --total-steps)."""
        n = int(state["size"])
        if n > self.capacity:
            raise ValueError(f"saved buffer holds {n} transitions, more than this one's capacity {self.capacity}")
        for f in self.FIELDS:
            getattr(self, f)[:n] = state[f]
        # Same capacity: carry on exactly where the saved buffer stopped; a larger one appends after it.
        same = int(state["capacity"]) == self.capacity
        self.pos, self.size = (int(state["pos"]) if same else n % self.capacity), n
        self.generator.set_state(state["generator"])
