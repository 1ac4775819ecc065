"""MultiGoal checks shared by the demo and ``smfp bench multigoal``: which goals a policy reaches, the
entropy of that choice, the blocked-goal test, and the critic's own target at a state.

``act(obs) -> action`` acts on a ``make_env`` task (actions in [-1, 1]); nothing here trains or loads.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from smfp.envs import make_env
from smfp.envs.multimodal import GOAL_NAMES

ENV = "smfp/MultiGoal-v0"
BLOCK_RADIUS = 2.0


def goals_reached(act: Callable[[np.ndarray], np.ndarray], episodes: int, seed: int, **env_kwargs) -> list[int]:
    """The goal index each episode ended in (-1: none), episode i reset with ``seed + i``."""
    return [goal for goal, _ in episode_outcomes(act, episodes, seed, **env_kwargs)]


def episode_outcomes(act: Callable[[np.ndarray], np.ndarray], episodes: int, seed: int,
                     **env_kwargs) -> list[tuple[int, bool]]:
    """Per episode (reset with ``seed + i``): the goal it ended in (-1: none) and whether the blocked-goal test's
    obstacle refused one of its moves."""
    env = make_env(ENV, env_kwargs=env_kwargs)
    out = []
    try:
        for i in range(episodes):
            obs, info = env.reset(seed=seed + i)
            done, met = False, False
            while not done:
                obs, _, terminated, truncated, info = env.step(act(obs))
                met = met or bool(info.get("blocked", False))
                done = terminated or truncated
            out.append((int(info.get("goal", -1)), met))
    finally:
        env.close()
    return out


def goal_counts(goals: Sequence[int]) -> dict[str, int]:
    return {name: list(goals).count(g) for g, name in enumerate(GOAL_NAMES)}


def goal_entropy(counts: Sequence[int]) -> float:
    """Entropy (nats) of the reached goals' distribution; log 4 = 1.386 when the four are used equally."""
    total = sum(counts)
    if total == 0:
        return 0.0
    p = np.asarray([c / total for c in counts if c > 0])
    return float(-(p * np.log(p)).sum())


def most_reached_goal(counts: dict[str, int]) -> int:
    """The index of the goal reached most often (the first of a tie): the one the blocked-goal test walls off."""
    return max(range(len(GOAL_NAMES)), key=lambda g: counts[GOAL_NAMES[g]])


def blocked_goal_test(act: Callable[[np.ndarray], np.ndarray], counts: dict[str, int], episodes: int,
                      seed: int, block_radius: float = BLOCK_RADIUS) -> dict:
    """Wall off the goal reached most often (``MultiGoalEnv(blocked_goal=...)``: no move enters a disc of
    ``block_radius`` around it) and count the episodes that still reach a goal (``blocked_success``), those that
    met the obstacle (a move refused: ``blocked_met``) and those of them that still reached another goal
    (``blocked_escaped``). Success = the episodes that never headed for the walled goal + the escapes: only the
    escapes measure turning away from a blocked route."""
    blocked = most_reached_goal(counts)
    after = episode_outcomes(act, episodes, seed, blocked_goal=blocked, block_radius=block_radius)
    return {"blocked_goal": GOAL_NAMES[blocked], "blocked_success": sum(g >= 0 for g, _ in after),
            "blocked_met": sum(met for _, met in after), "blocked_escaped": sum(met and g >= 0 for g, met in after)}


def target_at(policy, critic, alpha: float, obs, seed: int) -> dict:
    """The critic's soft-greedy target ``exp(Q/alpha)`` at ``obs``: its modes and the policy's TV to it."""
    from smfp.monitor.modes import sample_actions
    from smfp.monitor.target import POLICY_SAMPLES, assess_target

    obs = np.asarray(obs, dtype=np.float32)
    rep = assess_target(policy, critic, obs, alpha, np.random.default_rng(seed),
                        sample_actions(policy, obs, POLICY_SAMPLES)[0], policy_modes=0)
    return {"target_modes": rep.modes, "tv_to_target": rep.tv_to_target}


__all__ = ["BLOCK_RADIUS", "ENV", "blocked_goal_test", "episode_outcomes", "goal_counts", "goal_entropy", "goals_reached",
           "most_reached_goal", "target_at"]
