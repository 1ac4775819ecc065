"""make_env: user modules, action rescaling, episode statistics, truncation vs termination, checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import ENV_MODULE, TINY_FLAGS, read_jsonl, run_cli
from smfp.envs import EnvError, env_dims, make_env

ECHO = f"{ENV_MODULE}:SmfpTestEcho-v0"


def test_module_form_imports_the_users_module(env_module_dir):
    env = make_env(ECHO, seed=0)
    assert env_dims(env) == (3, 2)
    assert np.allclose(env.action_space.low, -1.0) and np.allclose(env.action_space.high, 1.0)
    # the task's own bounds are untouched underneath
    assert env.unwrapped.action_space.low.tolist() == [-2.0, 0.0]
    assert env.unwrapped.action_space.high.tolist() == [2.0, 10.0]
    env.close()


@pytest.mark.parametrize("action, received", [([-1.0, -1.0], [-2.0, 0.0]), ([1.0, 1.0], [2.0, 10.0]),
                                              ([0.0, 0.0], [0.0, 5.0]), ([0.5, -0.5], [1.0, 2.5])])
def test_actions_are_rescaled_to_the_task_bounds(env_module_dir, action, received):
    env = make_env(ECHO, seed=0)
    obs, *_ = env.step(np.array(action, np.float32))
    assert obs[1:] == pytest.approx(received, abs=1e-6)
    env.close()


def test_pendulum_actions_are_rescaled_to_its_torque_bounds():
    env = make_env("Pendulum-v1", seed=0)
    assert env.unwrapped.action_space.low.tolist() == [-2.0]
    for a, torque in [(1.0, 2.0), (-1.0, -2.0), (0.5, 1.0), (-0.25, -0.5)]:
        env.step(np.array([a], np.float32))
        assert float(np.asarray(env.unwrapped.last_u).reshape(-1)[0]) == pytest.approx(torque, abs=1e-6)
    env.close()


def test_episode_statistics_and_truncation_is_not_termination(env_module_dir):
    env = make_env(ECHO, seed=0)
    env.reset(seed=0)
    for t in range(1, 11):
        obs, reward, terminated, truncated, info = env.step(np.zeros(2, np.float32))
        assert not terminated
        assert truncated == (t == 10)
    assert obs[0] == 10.0  # the real last observation of the episode
    assert info["episode"]["r"] == pytest.approx(10.0) and int(info["episode"]["l"]) == 10
    env.close()


def test_termination_and_its_statistics(env_module_dir):
    env = make_env(f"{ENV_MODULE}:SmfpTestTerminal-v0", seed=0)
    env.reset(seed=0)
    flags = [env.step(np.zeros(2, np.float32))[2:4] for _ in range(4)]
    assert flags == [(False, False)] * 3 + [(True, False)]
    env.close()


def test_pendulum_episode_statistics_sum_the_rewards():
    env = make_env("Pendulum-v1", seed=1, max_episode_steps=25)
    env.reset(seed=1)
    total = 0.0
    for t in range(25):
        _, reward, terminated, truncated, info = env.step(np.array([0.3], np.float32))
        total += reward
    assert truncated and not terminated
    assert info["episode"]["r"] == pytest.approx(total, rel=1e-5) and int(info["episode"]["l"]) == 25
    env.close()


def test_nan_observation_raises_env_error_naming_step_and_env(env_module_dir):
    env_id = f"{ENV_MODULE}:SmfpTestNaN-v0"
    env = make_env(env_id, seed=0)
    env.reset(seed=0)
    env.step(np.zeros(2, np.float32))
    env.step(np.zeros(2, np.float32))
    with pytest.raises(EnvError) as info:
        env.step(np.zeros(2, np.float32))
    msg = str(info.value)
    assert env_id in msg and "step 3" in msg and "non-finite" in msg
    env.close()


def test_seeded_envs_are_reproducible():
    a, b = make_env("Pendulum-v1", seed=7), make_env("Pendulum-v1", seed=7)
    c = make_env("Pendulum-v1", seed=8)
    oa, ob, oc = a.reset()[0], b.reset()[0], c.reset()[0]  # continue each env's seeded RNG
    assert np.array_equal(oa, ob) and not np.array_equal(oa, oc)
    for env in (a, b, c):
        env.close()


@pytest.mark.parametrize("env_id, needle", [("NoSuchEnv-v0", "NoSuchEnv-v0"), ("CartPole-v1", "Discrete"),
                                            ("no_such_module_xyz:Foo-v0", "no_such_module_xyz")])
def test_bad_env_ids_raise_env_error(env_id, needle):
    with pytest.raises(EnvError, match=needle):
        make_env(env_id)


def test_cli_trains_on_a_user_module_env_through_pythonpath(tmp_path, env_module_dir):
    run = tmp_path / "run"
    proc = run_cli("train", "--env", ECHO, "--total-steps", "60", "--learning-starts", "30", "--log-every", "20",
                   "--eval-every", "0", "--eval-episodes", "2", "--checkpoint-every", "0", "--run-dir", run,
                   *TINY_FLAGS, pythonpath=env_module_dir)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["step"] == 60 and summary["return_mean"] == pytest.approx(10.0)  # 10 steps of reward 1
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "train/episode_return" in r]
    assert rows and all(r["train/episode_return"] == pytest.approx(10.0) for r in rows)
