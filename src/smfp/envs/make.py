"""``make_env``: build, check and wrap a Gymnasium task.

Inside the library every action is in [-1, 1]^d; ``RescaleAction`` maps it to the task's box.
Episode statistics come from ``RecordEpisodeStatistics``. ``CheckedEnv`` turns non-finite or
wrongly shaped observations/rewards into an ``EnvError`` naming the step and the env id,
instead of letting NaNs reach the networks.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import warnings

import gymnasium as gym
import numpy as np


class EnvError(ValueError):
    """A user-facing environment problem (reported as one line)."""


class CheckedEnv(gym.Wrapper):
    def __init__(self, env: gym.Env, env_id: str):
        super().__init__(env)
        self.env_id = env_id
        self.obs_shape = env.observation_space.shape
        self.steps = 0

    def _check(self, obs, reward=0.0):
        try:
            obs = np.asarray(obs, dtype=np.float32)
        except (TypeError, ValueError):
            raise EnvError(f"{self.env_id} returned an observation that is not an array of numbers at step "
                           f"{self.steps} ({type(obs).__name__})") from None
        if obs.shape != self.obs_shape:
            raise EnvError(f"{self.env_id} returned an observation of shape {obs.shape} at step {self.steps}, "
                           f"but its observation space says {self.obs_shape}")
        if not np.isfinite(obs).all():
            raise EnvError(f"{self.env_id} returned a non-finite observation at step {self.steps}")
        try:  # None and text would pass np.asarray(..., float64) as nan or as a parsed number
            value = np.zeros(0) if reward is None or isinstance(reward, (str, bytes)) else \
                np.asarray(reward, dtype=np.float64)
        except (TypeError, ValueError):
            value = np.zeros(0)
        if value.size != 1:
            raise EnvError(f"{self.env_id} returned a reward that is not a number ({str(reward)[:40]!r}) at step "
                           f"{self.steps}")
        if not np.isfinite(value).all():
            raise EnvError(f"{self.env_id} returned a non-finite reward ({reward}) at step {self.steps}")
        return obs

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return self._check(obs), info

    def step(self, action):
        self.steps += 1
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._check(obs, reward), float(reward), bool(terminated), bool(truncated), info


def _import_prefix(env_id: str) -> None:
    if ":" in env_id:
        module = env_id.split(":", 1)[0]
        try:
            importlib.import_module(module)
        except (ImportError, ValueError, TypeError) as exc:  # missing module, empty or relative name
            raise EnvError(f"cannot import module {module!r} for env {env_id!r}: {exc}") from None


def make_env(env_id: str, seed: int | None = None, max_episode_steps: int | None = None,
             render_mode: str | None = None, env_kwargs: dict | None = None) -> gym.Env:
    """A checked, [-1, 1]-action, statistics-recording env, reset-seeded with ``seed``; ``env_kwargs`` go to
    the task's constructor (over its registered ones)."""
    _import_prefix(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium's dtype/precision notices are not the user's concern
        return _make_checked(env_id, seed, max_episode_steps, render_mode, env_kwargs or {})


def _make_checked(env_id, seed, max_episode_steps, render_mode, env_kwargs) -> gym.Env:
    try:
        # render_mode only when asked for: passing render_mode=None breaks envs whose __init__ lacks it
        extra = {"render_mode": render_mode, **env_kwargs} if render_mode is not None else dict(env_kwargs)
        env = gym.make(env_id, max_episode_steps=max_episode_steps, **extra)
    except gym.error.Error as exc:
        raise EnvError(f"unknown or unavailable env {env_id!r} ({type(exc).__name__}: {exc}); "
                       "check the id with gymnasium.pprint_registry()") from None
    except ImportError as exc:
        raise EnvError(f"env {env_id!r} needs a missing dependency: {exc}") from None
    space = env.action_space
    if not isinstance(space, gym.spaces.Box):
        env.close()
        raise EnvError(f"env {env_id!r} has a {type(space).__name__} action space; SMFP needs a continuous Box")
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        env.close()
        raise EnvError(f"env {env_id!r} has an unbounded action space; bounded Box actions are required")
    if not isinstance(env.observation_space, gym.spaces.Box) or len(env.observation_space.shape) != 1:
        env.close()
        raise EnvError(f"env {env_id!r} needs a flat Box observation space, got {env.observation_space}")
    env = gym.wrappers.RescaleAction(env, -1.0, 1.0)
    env = CheckedEnv(env, env_id)  # below the statistics, which would choke on a non-numeric reward first
    env = gym.wrappers.RecordEpisodeStatistics(env)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def env_dims(env: gym.Env) -> tuple[int, int]:
    return int(env.observation_space.shape[0]), int(env.action_space.shape[0])


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence native-library chatter (MuJoCo's model-compiler deprecation notices) on fd 2."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
