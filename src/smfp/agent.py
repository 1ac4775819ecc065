"""A trained agent for acting and evaluation, loaded from a run dir or checkpoint file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smfp.critic import QEnsemble
from smfp.envs import make_env
from smfp.policies import Policy, build_policy
from smfp.storage.checkpoint import CheckpointError, resolve_checkpoint
from smfp.storage.userfiles import describe


@dataclass
class Agent:
    policy: Policy
    critic: QEnsemble | None
    env_id: str
    action_low: np.ndarray
    action_high: np.ndarray
    best_of_n: int = 16
    step: int = 0
    alpha: float | None = None  # the run's entropy temperature at the checkpoint (None: not known)

    def resolve_mode(self, mode: str) -> str:
        return self.policy.resolve_mode(mode)

    @torch.no_grad()
    def act_normalized(self, obs: np.ndarray | torch.Tensor, mode: str = "sample") -> np.ndarray:
        """Actions in [-1, 1]^d for a batch of observations (B, o) or a single one (o,)."""
        mode = self.resolve_mode(mode)
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32))
        single = x.ndim == 1
        if single:
            x = x.unsqueeze(0)
        q_fn = (lambda o, a: self.critic(o, a).min(dim=0).values) if self.critic is not None else None
        a = self.policy.act(x, mode, num_candidates=self.best_of_n, q_fn=q_fn).numpy()
        return a[0] if single else a

    def act(self, obs, mode: str = "sample") -> np.ndarray:
        """Actions in the task's own bounds, for a raw (unwrapped) Gymnasium env."""
        a = self.act_normalized(obs, mode)
        return self.action_low + (a + 1.0) * 0.5 * (self.action_high - self.action_low)

    @classmethod
    def from_parts(cls, policy_kind: str, policy_kwargs: dict, policy_state: dict, critic_kwargs: dict | None,
                   critic_state: dict | None, meta: dict, best_of_n: int = 16, step: int = 0) -> "Agent":
        policy = build_policy(policy_kind, **policy_kwargs)
        policy.load_state_dict(policy_state)
        policy.eval()
        critic = None
        if critic_state is not None:
            critic = QEnsemble(**critic_kwargs)
            critic.load_state_dict(critic_state)
            critic.eval()
        return cls(policy, critic, meta["env_id"], np.asarray(meta["action_low"], dtype=np.float32),
                   np.asarray(meta["action_high"], dtype=np.float32), best_of_n, step)


def load_agent(path: str | Path) -> Agent:
    """Load the latest checkpoint of a run dir, or a given checkpoint file."""
    ckpt = resolve_checkpoint(path)
    meta = ckpt["meta"]
    try:  # safely loaded, but its parts may still not fit together (a damaged or hand-made file)
        agent = Agent.from_parts(meta["policy_kind"], meta["policy_kwargs"], ckpt["learner"]["policy"],
                                 meta["critic_kwargs"], ckpt["learner"]["critic"], meta,
                                 best_of_n=ckpt["config"]["eval"]["best_of_n"], step=ckpt["step"])
        log_alpha = ckpt["learner"].get("log_alpha")
        agent.alpha = float(torch.as_tensor(log_alpha).exp()) if log_alpha is not None else None
        return agent
    except Exception as exc:  # noqa: BLE001 - still reading the user's file: any failure is one line
        raise CheckpointError(f"{ckpt['path']} does not describe a usable agent ({describe(exc)}); use an "
                              "intact checkpoint") from None


def run_episodes(act_fn, env, episodes: int, seed: int) -> list[dict]:
    """Roll out ``episodes`` episodes, episode i reset with ``seed + i`` (same starts every call)."""
    results = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, length, done, info = 0.0, 0, False, {}
        while not done:
            obs, reward, terminated, truncated, info = env.step(act_fn(obs))
            total += reward
            length += 1
            done = terminated or truncated
        results.append({"return": total, "length": length, "info": info})
    return results


def evaluate(agent: Agent, episodes: int = 10, mode: str = "auto", seed: int = 10_000, env=None,
             max_episode_steps: int | None = None, seed_actions: bool = True) -> dict:
    """Mean and std of the undiscounted return over ``episodes`` episodes, reset with seeds ``seed``, ``seed + 1``, ...

    ``seed_actions``: stochastic actions (``sample``, ``best-of-n``'s noises) draw from torch's generator seeded with
    ``seed`` in a forked state, so that the same call gives the same numbers and the caller's stream is left alone.
    Training passes False: its evaluations draw from the run's own stream, as every run so far did.
    """
    mode = agent.resolve_mode(mode)
    own_env = env is None
    env = env or make_env(agent.env_id, max_episode_steps=max_episode_steps)
    try:
        with torch.random.fork_rng(devices=[], enabled=seed_actions):
            if seed_actions:
                torch.manual_seed(seed)
            eps = run_episodes(lambda o: agent.act_normalized(o, mode), env, episodes, seed)
    finally:
        if own_env:
            env.close()
    returns = np.array([e["return"] for e in eps])
    return {"return_mean": float(returns.mean()), "return_std": float(returns.std()), "episodes": episodes,
            "mode": mode, "returns": returns.tolist(), "lengths": [e["length"] for e in eps]}
