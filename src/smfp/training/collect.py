"""One environment step of training: act, step the environment, store the transition.

``Collector.step`` is what ``smfp train`` does between updates, and what ``smfp bench train`` times.
"""

from __future__ import annotations

import numpy as np
import torch

from smfp import keys as K
from smfp.buffer import ReplayBuffer
from smfp.policies import Policy


class TrainingDiverged(RuntimeError):
    """Non-finite updates persisted and there is no good checkpoint to return to, or the policy acts non-finitely."""


class Collector:
    """Uniform random actions in [-1, 1]^d for the first ``learning_starts`` steps, then one sample of the
    policy per step; the episode returns and lengths finished since the last ``episode_stats``."""

    def __init__(self, env, buffer: ReplayBuffer, policy: Policy, rng: np.random.Generator, learning_starts: int):
        self.env, self.buffer, self.policy, self.rng = env, buffer, policy, rng
        self.learning_starts = learning_starts
        self.act_dim = buffer.act_dim
        self.obs: np.ndarray | None = None
        self.returns: list[float] = []
        self.lengths: list[int] = []

    def reset(self, seed: int) -> None:
        self.obs, _ = self.env.reset(seed=seed)

    def step(self, step: int) -> None:
        """Collect environment step ``step + 1``."""
        if step < self.learning_starts:
            action = self.rng.uniform(-1.0, 1.0, self.act_dim).astype(np.float32)
        else:
            with torch.inference_mode():
                action = self.policy.act(torch.from_numpy(self.obs).unsqueeze(0), "sample")[0].numpy()
            if not np.isfinite(action).all():  # not the env's fault: say so before the env sees it
                raise TrainingDiverged(f"the policy produced a non-finite action at step {step + 1}; lower "
                                       "the learning rates or use --grad-clip")
        next_obs, reward, terminated, truncated, info = self.env.step(action)
        self.buffer.add(self.obs, action, reward, next_obs, terminated)
        self.obs = next_obs
        if terminated or truncated:
            self.returns.append(float(info["episode"]["r"]))
            self.lengths.append(int(info["episode"]["l"]))
            self.obs, _ = self.env.reset()

    def episode_stats(self) -> dict[str, float]:
        """Mean return and length of the episodes finished since the last call (the last one is kept, so that
        an interval without a finished episode still reports the latest)."""
        out = {}
        if self.returns:
            out = {K.EPISODE_RETURN: float(np.mean(self.returns)), K.EPISODE_LENGTH: float(np.mean(self.lengths))}
        self.returns, self.lengths = self.returns[-1:], self.lengths[-1:]
        return out

    def state_dict(self) -> dict:
        """The episode statistics of the interval in progress (a resumed run logs them as the uninterrupted one)."""
        return {"returns": list(self.returns), "lengths": list(self.lengths)}

    def load_state_dict(self, state: dict) -> None:
        self.returns = [float(r) for r in state["returns"]]
        self.lengths = [int(n) for n in state["lengths"]]


__all__ = ["Collector", "TrainingDiverged"]
