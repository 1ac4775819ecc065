"""Every test environment, in one user module (registered on import).

The tests load these tasks as a user would: ``--env smfp_test_envs:ID`` with this folder on
``PYTHONPATH`` (the ``env_module_dir`` fixture puts it on ``sys.path`` for in-process runs too).

* ``EchoEnv``: a multi-step task that echoes the action it received (rescaling, termination, NaN).
* ``OneState``: one-state, one-step tasks with a chosen reward (bandits, health alarms, resume).
* ``FaultyEnv``: a task that misbehaves at a chosen step (environment-fault reporting).
"""

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class EchoEnv(gym.Env):
    """Observation ``[t, raw action[0], raw action[1]]``: it echoes the action the task received.

    The action box is asymmetric ([-2, 2] x [0, 10]) so that a rescaling bug shows. Reward 1 per
    step. ``terminate_at``: terminate at that step; ``nan_at``: observation NaN from that step on.
    """

    def __init__(self, terminate_at=None, nan_at=None):
        self.action_space = spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 10.0], np.float32))
        self.observation_space = spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.terminate_at, self.nan_at = terminate_at, nan_at
        self.t = 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.t += 1
        a = np.asarray(action, dtype=np.float64)
        obs = np.array([self.t, a[0], a[1]], dtype=np.float32)
        if self.nan_at is not None and self.t >= self.nan_at:
            obs[0] = np.nan
        terminated = self.terminate_at is not None and self.t >= self.terminate_at
        return obs, 1.0, terminated, False, {}


class OneState(gym.Env):
    """One state, one step, a 2-D action in [-1, 1]^2; ``scale`` x the reward of ``kind``:

    * ``quadratic``: ``-sum((a - center)^2)`` (one best action, ``center``);
    * ``push``: ``5 sum(a)`` (the best action on the bounds);
    * ``switch``: two peaks in ``a[0]`` at +-0.6 for the first ``switch_at`` steps, then one sharp peak;
    * ``drift``: a best action that moves with period ``period`` (a policy must follow it).

    Steps ``bad_from < t <= bad_to`` pay 3e19 (finite, but its squared TD error overflows float32).
    ``t`` counts this instance's steps: a resumed run's new environment starts a new clock.
    """

    def __init__(self, kind="quadratic", center=0.0, scale=1.0, switch_at=0, period=800, bad_from=0, bad_to=0):
        self.observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.kind, self.center, self.scale = kind, np.asarray(center, dtype=np.float64), scale
        self.switch_at, self.period, self.bad_from, self.bad_to = switch_at, period, bad_from, bad_to
        self.steps = 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.steps += 1
        a = np.asarray(action, dtype=np.float64)
        if self.kind == "push":
            reward = 5.0 * float(a.sum())
        elif self.kind == "switch" and self.steps <= self.switch_at:
            bump = lambda c: np.exp(-0.5 * ((a[0] - c) / 0.2) ** 2)  # noqa: E731
            reward = 2.0 * max(bump(0.6), bump(-0.6)) - a[1] ** 2
        elif self.kind == "switch":  # the soft-optimal policy is then one narrow Gaussian
            reward = -200.0 * ((a[0] - 0.6) ** 2 + a[1] ** 2)
        elif self.kind == "drift":
            reward = -10.0 * float(np.sum((a - 0.7 * np.sin(2 * np.pi * self.steps / self.period)) ** 2))
        else:
            reward = -float(np.sum((a - self.center) ** 2))
        if self.bad_from < self.steps <= self.bad_to:
            reward = 3e19
        return np.zeros(1, np.float32), self.scale * float(reward), True, False, {}


class FaultyEnv(gym.Env):
    """A well-behaved 3-d task until its ``at``-th step (counted across episodes), then ``fault``."""

    def __init__(self, fault="none", at=1):
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.observation_space = spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.fault, self.at, self.count = fault, at, 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        if self.fault == "reset_shape":
            return np.zeros(4, np.float32), {}
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.count += 1
        obs, reward = np.full(3, 0.1 * self.count, np.float32), 1.0
        if self.count >= self.at:
            f = self.fault
            if f == "nan_obs":
                obs[1] = np.nan
            elif f == "inf_obs":
                obs[2] = -np.inf
            elif f == "nan_reward":
                reward = float("nan")
            elif f == "inf_reward":
                reward = np.float32(np.inf)
            elif f == "shape":
                obs = np.zeros(5, np.float32)
            elif f == "ragged":
                obs = [1.0, [2.0, 3.0]]
            elif f == "text_obs":
                obs = np.array(["a", "b", "c"])
            elif f == "none_reward":
                reward = None
            elif f == "vector_reward":
                reward = np.ones(3)
        return obs, reward, False, False, {}


FAULTS = ("nan_obs", "inf_obs", "nan_reward", "inf_reward", "shape", "ragged", "text_obs", "none_reward",
          "vector_reward", "reset_shape", "none")
FAULT_AT = 23  # past two episode resets (episodes are 10 steps long)

_ECHO = __name__ + ":EchoEnv"
_ONE_STATE = __name__ + ":OneState"
TASKS = {
    "SmfpTestEcho-v0": (_ECHO, 10, {}),
    "SmfpTestTerminal-v0": (_ECHO, 10, {"terminate_at": 4}),
    "SmfpTestNaN-v0": (_ECHO, 10, {"nan_at": 3}),
    # smfp inspect on a trained run: one best action (0.5, -0.5)
    "SmfpTestBandit-v0": (_ONE_STATE, 1, {"center": (0.5, -0.5), "scale": 20.0}),
    # training-health alarms
    "SmfpHealthPush-v0": (_ONE_STATE, 1, {"kind": "push"}),
    "SmfpHealthSwitch-v0": (_ONE_STATE, 1, {"kind": "switch", "switch_at": 2500}),
    "SmfpHealthDrift-v0": (_ONE_STATE, 1, {"kind": "drift"}),
    "SmfpHealthBlowup-v0": (_ONE_STATE, 1, {"bad_from": 500, "bad_to": 530}),
    "SmfpHealthHuge-v0": (_ONE_STATE, 1, {"scale": 1e6}),
    # resume and recovery
    "SmfpResumeQuadratic-v0": (_ONE_STATE, 1, {"center": 0.3}),
    "SmfpResumePush-v0": (_ONE_STATE, 1, {"kind": "push"}),
    "SmfpResumePoison-v0": (_ONE_STATE, 1, {"center": 0.3, "bad_from": 500, "bad_to": 530}),
    "SmfpResumeLongPoison-v0": (_ONE_STATE, 1, {"center": 0.3, "bad_from": 500, "bad_to": 1100}),
    "SmfpResumeEarlyPoison-v0": (_ONE_STATE, 1, {"center": 0.3, "bad_from": 250, "bad_to": 2000}),
    **{f"SmfpFault-{fault}-v0": (__name__ + ":FaultyEnv", 10, {"fault": fault, "at": FAULT_AT}) for fault in FAULTS},
}

for _id, (_entry, _steps, _kwargs) in TASKS.items():
    if _id not in gym.registry:
        gym.register(_id, entry_point=_entry, max_episode_steps=_steps, kwargs=_kwargs)
