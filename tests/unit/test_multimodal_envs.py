"""The built-in multimodal tasks: registration, dynamics, reward, termination, info, render."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from smfp.envs import make_env
from smfp.envs.multimodal import GOALS, HallwayEnv, MultiGoalEnv


def test_registered_under_the_smfp_namespace():
    import smfp.envs.multimodal  # noqa: F401

    for env_id, horizon in (("smfp/MultiGoal-v0", 50), ("smfp/Hallway-v0", 60)):
        spec = gym.spec(env_id)
        assert spec.namespace == "smfp" and spec.max_episode_steps == horizon
        env = make_env(env_id, seed=0)  # the library's own wrapper accepts them
        assert isinstance(env.action_space, gym.spaces.Box) and env.action_space.shape == (2,)
        env.close()


# --- MultiGoal ----------------------------------------------------------------------------------------

def test_multigoal_start_distribution_is_near_the_origin_and_seeded():
    env = MultiGoalEnv()
    starts = np.array([env.reset(seed=s)[0] for s in range(400)])
    assert np.abs(starts.mean(0)).max() < 0.03
    assert 0.08 < starts.std(0).min() and starts.std(0).max() < 0.12
    again = np.array([env.reset(seed=s)[0] for s in range(5)])
    np.testing.assert_array_equal(again, starts[:5])


def test_multigoal_dynamics_and_reward_formula():
    env = MultiGoalEnv()
    env.reset(seed=0)
    env.pos = np.array([1.0, -2.0])
    a = np.array([0.5, -0.25])
    obs, reward, terminated, truncated, info = env.step(a)
    expected_pos = np.array([1.5, -2.25])
    np.testing.assert_allclose(obs, expected_pos, atol=1e-6)
    d2 = min(float(np.sum((expected_pos - g) ** 2)) for g in GOALS)
    assert reward == pytest.approx(-30.0 * float(a @ a) - d2)
    assert not terminated and not truncated and info["goal"] == -1


def test_multigoal_actions_are_clipped_and_positions_bounded():
    env = MultiGoalEnv()
    env.reset(seed=0)
    env.pos = np.array([6.8, 0.0])
    obs, reward, *_ = env.step(np.array([5.0, 0.0]))  # clipped to 1, position clipped to 7
    np.testing.assert_allclose(obs, [7.0, 0.0], atol=1e-6)
    assert reward == pytest.approx(-30.0 * 1.0 - 4.0)  # ||a||^2 of the clipped action, nearest goal (5, 0)


@pytest.mark.parametrize("goal", range(4))
def test_multigoal_reaching_each_goal_terminates_with_the_bonus(goal):
    env = MultiGoalEnv()
    env.reset(seed=0)
    target = GOALS[goal]
    env.pos = target * 0.7  # 1.5 away from the goal along its axis
    direction = target / np.linalg.norm(target)
    obs, reward, terminated, _, info = env.step(direction * 0.8)  # lands 0.7 from the goal
    assert terminated and info["goal"] == goal
    assert reward == pytest.approx(-30.0 * 0.64 - 0.7 ** 2 + 10.0)


def test_multigoal_time_limit_is_50_steps():
    env = make_env("smfp/MultiGoal-v0", seed=0)
    env.reset(seed=0)
    for t in range(1, 51):
        _, _, terminated, truncated, _ = env.step(np.zeros(2, np.float32))
        assert not terminated
        assert truncated == (t == 50)


def test_multigoal_reward_scale_scales_every_reward():
    a, b = MultiGoalEnv(), MultiGoalEnv(reward_scale=0.1)
    a.reset(seed=3)
    b.reset(seed=3)
    for act in ([0.3, 0.2], [1.0, -1.0], [0.0, 0.5]):
        ra = a.step(np.array(act))[1]
        rb = b.step(np.array(act))[1]
        assert rb == pytest.approx(0.1 * ra)


# --- Hallway ------------------------------------------------------------------------------------------

def _drive(env, action_fn, max_steps=60):
    obs, info = env.reset(seed=0)
    total, terminated = 0.0, False
    for _ in range(max_steps):
        obs, reward, terminated, _, info = env.step(action_fn(obs))
        total += reward
        if terminated:
            break
    return obs, total, terminated, info


def test_hallway_observation_holds_position_and_velocity_with_lagged_dynamics():
    env = HallwayEnv()
    obs, info = env.reset(seed=1)
    assert obs.shape == (4,) and np.allclose(obs[2:], 0.0) and abs(obs[0] - 1.0) < 0.2
    assert info == {"route": "none", "collision": False, "success": False, "position": info["position"]}
    p0 = obs[:2].astype(np.float64)
    obs1, *_ = env.step(np.array([1.0, 0.0]))
    np.testing.assert_allclose(obs1[2:], [0.35, 0.0], atol=1e-6)  # v' = 0.3 v + 0.7 * 0.5 a
    np.testing.assert_allclose(obs1[:2], p0 + [0.35, 0.0], atol=1e-6)
    obs2, reward, *_ = env.step(np.array([1.0, 0.0]))
    np.testing.assert_allclose(obs2[2:], [0.455, 0.0], atol=1e-6)
    assert reward == pytest.approx(0.455 - 0.1 * 1.0, abs=1e-6)  # progress minus action cost
    assert env.observation_space.contains(obs2)


def test_hallway_straight_ahead_hits_the_obstacle():
    env = HallwayEnv()
    _, total, terminated, info = _drive(env, lambda o: np.array([1.0, 0.0]))
    assert terminated and info["collision"] and not info["success"]
    assert info["route"] == "none"  # crashed before passing the obstacle's centre
    assert total < 0  # the penalty outweighs the progress made


def _around(side: float):
    def policy(obs):
        x, y = obs[0], obs[1]
        want_y = side * 2.25 if x < 7.0 else 0.0
        forward = 1.0 if abs(y) > 1.8 or x > 5.0 else 0.3
        return np.array([forward, np.clip(2.0 * (want_y - y) - 3.0 * obs[3], -1, 1)])

    return policy


@pytest.mark.parametrize("side,route", [(1.0, "up"), (-1.0, "down")])
def test_hallway_both_routes_succeed_with_equal_returns(side, route):
    env = HallwayEnv()
    _, total, terminated, info = _drive(env, _around(side))
    assert terminated and info["success"] and not info["collision"]
    assert info["route"] == route
    _, mirrored, _, _ = _drive(HallwayEnv(), _around(-side))
    assert total == pytest.approx(mirrored, abs=0.3)  # the two routes are equally good (start noise only)
    assert total > 10.0


def test_hallway_walls_end_the_episode_with_the_penalty():
    env = HallwayEnv()
    obs, total, terminated, info = _drive(env, lambda o: np.array([0.0, 1.0]))
    assert terminated and info["collision"] and not info["success"]
    assert abs(obs[1]) <= 3.0  # observation stays in its box
    steps = len(env.trail) - 1
    assert total == pytest.approx(-5.0 - 0.1 * steps)  # no progress, action costs, the penalty


def test_hallway_segment_check_prevents_tunnelling():
    env = HallwayEnv(obstacle_radius=0.2, max_speed=1.0)
    env.reset(seed=0)
    env.pos = np.array([4.4, 0.0])
    env.vel = np.array([1.0, 0.0])
    _, _, terminated, _, info = env.step(np.array([1.0, 0.0]))  # jumps from 4.4 to 5.4: across the disc
    assert terminated and info["collision"]


def test_hallway_time_limit_is_60_steps():
    env = make_env("smfp/Hallway-v0", seed=0)
    env.reset(seed=0)
    for t in range(1, 61):
        _, _, terminated, truncated, _ = env.step(np.zeros(2, np.float32))
        assert not terminated and truncated == (t == 60)


# --- rendering ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("env_id", ["smfp/MultiGoal-v0", "smfp/Hallway-v0"])
def test_render_rgb_array_shows_the_agent_moving(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    env.reset(seed=0)
    first = env.render()
    assert first.dtype == np.uint8 and first.ndim == 3 and first.shape[2] == 3 and first.shape[0] > 50
    env.step(np.array([1.0, 1.0], np.float32))
    env.step(np.array([1.0, 1.0], np.float32))
    second = env.render()
    assert second.shape == first.shape and (second != first).any()
    env.close()


def test_render_mode_other_than_rgb_array_is_refused():
    with pytest.raises(ValueError, match="rgb_array"):
        MultiGoalEnv(render_mode="human")


def test_import_smfp_registers_the_builtin_tasks():
    """Gymnasium convention: importing the package is enough for ``gym.make("smfp/...")``."""
    import subprocess
    import sys

    code = ("import gymnasium as gym, smfp\n"
            "for i in ('smfp/MultiGoal-v0', 'smfp/MultiGoalExplore-v0', 'smfp/Hallway-v0'):\n"
            "    gym.make(i).reset(seed=0)\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_a_blocked_goal_cannot_be_reached_and_the_others_still_can():
    from smfp.envs.multimodal import GOALS

    env = MultiGoalEnv(blocked_goal=0)  # right, at (5, 0)
    env.reset(seed=0)
    refused = []
    for _ in range(20):  # straight at it: the obstacle stops the agent 2 units short
        _, _, terminated, _, info = env.step(np.array([1.0, 0.0], np.float32))
        assert not terminated and info["goal"] == -1
        refused.append(info["blocked"])
    assert 2.0 <= np.linalg.norm(env.pos - GOALS[0]) < 3.0
    assert refused == [False, False] + [True] * 18  # moves to x = 1, 2; then x = 3 would enter the disc
    env.reset(seed=0)
    goals = []
    for _ in range(20):  # another goal is reached as before
        _, _, terminated, _, info = env.step(np.array([0.0, 1.0], np.float32))
        assert not info["blocked"]
        if terminated:
            goals.append(info["goal"])
            break
    assert goals == [2]
    with pytest.raises(ValueError, match="blocked_goal"):
        MultiGoalEnv(blocked_goal=4)


def test_multigoal_checks_count_goals_and_run_the_blocked_goal_test():
    import math

    from smfp.monitor.multigoal import blocked_goal_test, goal_counts, goal_entropy, goals_reached

    right = lambda obs: np.array([1.0, 0.0], np.float32)  # noqa: E731
    counts = goal_counts(goals_reached(right, 3, seed=0))
    assert counts == {"right": 3, "left": 0, "up": 0, "down": 0}
    assert goal_entropy(list(counts.values())) == 0.0 and goal_entropy([5, 5, 5, 5]) == pytest.approx(math.log(4))
    assert goal_entropy([0, 0, 0, 0]) == 0.0
    # a policy that only knows one way fails when it is blocked; one that turns toward another goal succeeds
    assert blocked_goal_test(right, counts, 3, seed=0) == {"blocked_goal": "right", "blocked_success": 0,
                                                           "blocked_met": 3, "blocked_escaped": 0}

    state = {"turned": False, "last": None}

    def detour(obs):  # right until the obstacle refuses a move (at x = 2), then toward the upper goal for the rest
        if np.linalg.norm(obs) < 0.5:
            state.update(turned=False, last=None)  # a new episode
        state["turned"] = state["turned"] or (state["last"] is not None and np.array_equal(obs, state["last"]))
        state["last"] = obs.copy()
        if not state["turned"]:
            return np.array([1.0, 0.0], np.float32)
        return np.clip(np.array([0.0, 5.0]) - obs, -1.0, 1.0).astype(np.float32)
    assert blocked_goal_test(detour, counts, 3, seed=0) == {"blocked_goal": "right", "blocked_success": 3,
                                                            "blocked_met": 3, "blocked_escaped": 3}
    up = lambda obs: np.array([0.0, 1.0], np.float32)  # noqa: E731  never meets the obstacle: success, no escape
    assert blocked_goal_test(up, counts, 3, seed=0) == {"blocked_goal": "right", "blocked_success": 3,
                                                        "blocked_met": 0, "blocked_escaped": 0}
