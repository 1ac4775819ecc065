"""Environments that misbehave (NaN/inf observations or rewards, wrongly shaped or non-numeric
observations, non-numeric rewards) are reported as an ``EnvError`` naming the environment id and
the step, before anything reaches the networks; through the CLI that is one line and exit 2.
A policy that produces a non-finite action is reported as training divergence, not blamed on
the environment. The environments are user modules loaded with the ``module:Env-v0`` form."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

from conftest import tiny_config
from smfp.cli.main import main
from smfp.envs import EnvError, make_env
from smfp.training.loop import TrainingDiverged, train

MODULE = "smfp_fault_envs"
SOURCE = '''
import gymnasium as gym
import numpy as np
from gymnasium import spaces


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


for fault in ("nan_obs", "inf_obs", "nan_reward", "inf_reward", "shape", "ragged", "text_obs", "none_reward",
              "vector_reward", "reset_shape", "none"):
    gym.register(f"SmfpFault-{fault}-v0", entry_point=__name__ + ":FaultyEnv", max_episode_steps=10,
                 kwargs={"fault": fault, "at": 23})
'''
FAULT_AT = 23  # past two episode resets (episodes are 10 steps long)


@pytest.fixture(scope="module")
def fault_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fault_envs")
    (folder / f"{MODULE}.py").write_text(textwrap.dedent(SOURCE))
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


CASES = {  # fault: (step reported, words in the message)
    "nan_obs": (FAULT_AT, "non-finite observation"),
    "inf_obs": (FAULT_AT, "non-finite observation"),
    "nan_reward": (FAULT_AT, "non-finite reward"),
    "inf_reward": (FAULT_AT, "non-finite reward"),
    "shape": (FAULT_AT, "shape (5,)"),
    "ragged": (FAULT_AT, "not an array of numbers"),
    "text_obs": (FAULT_AT, "not an array of numbers"),
    "none_reward": (FAULT_AT, "reward that is not a number"),
    "vector_reward": (FAULT_AT, "reward that is not a number"),
    "reset_shape": (0, "shape (4,)"),
}


@pytest.mark.parametrize("fault", sorted(CASES))
def test_faulty_env_is_reported_with_step_and_env_id_during_training(tmp_path, fault_module, fault):
    env_id = f"{MODULE}:SmfpFault-{fault}-v0"
    cfg = tiny_config(tmp_path / "run", env=env_id, total_steps=60, learning_starts=1000, log_every=10,
                      eval_every=0, checkpoint_every=0)
    cfg.log.tensorboard = False
    step, words = CASES[fault]
    with pytest.raises(EnvError) as info:
        train(cfg)
    msg = str(info.value)
    assert env_id in msg and f"at step {step}" in msg and words in msg, msg
    assert "\n" not in msg


def test_healthy_variant_trains(tmp_path, fault_module):
    """Control: the same task without a fault trains to the end."""
    cfg = tiny_config(tmp_path / "run", env=f"{MODULE}:SmfpFault-none-v0", total_steps=60, learning_starts=20,
                      log_every=10, eval_every=0, checkpoint_every=0)
    cfg.log.tensorboard = False
    assert train(cfg).step == 60


def test_faulty_env_through_the_cli_is_one_line(tmp_path, fault_module, capsys):
    """``smfp train`` (its entry point, in-process: the module is importable here) reports it as one line."""
    env_id = f"{MODULE}:SmfpFault-inf_reward-v0"
    try:
        code = main(["train", "--env", env_id, "--total-steps", "60", "--learning-starts", "1000", "--run-dir",
                     str(tmp_path / "run"), "--hidden", "16", "--critic-hidden", "16", "--batch-size", "8",
                     "--no-progress", "--no-tensorboard", "--eval-every", "0"])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = err.splitlines()
    assert lines[-1].startswith("smfp: error:") and env_id in lines[-1] and f"at step {FAULT_AT}" in lines[-1]
    assert all(line.startswith("smfp: ") for line in lines) and sum("error" in line for line in lines) == 1


def test_env_check_also_guards_evaluation_envs(fault_module):
    env = make_env(f"{MODULE}:SmfpFault-nan_obs-v0", seed=0)
    for _ in range(FAULT_AT - 1):
        env.step(np.zeros(1, np.float32))
    with pytest.raises(EnvError, match=f"at step {FAULT_AT}"):
        env.step(np.zeros(1, np.float32))


def test_non_finite_policy_action_is_divergence_not_an_env_fault(tmp_path):
    cfg = tiny_config(tmp_path / "run", total_steps=200, learning_starts=50, log_every=50, eval_every=0,
                      checkpoint_every=0)
    cfg.log.tensorboard = False
    cfg.update.actor_lr = float("inf")  # the first actor update turns the weights into inf/NaN
    with pytest.raises(TrainingDiverged, match="non-finite action at step"):
        train(cfg)
