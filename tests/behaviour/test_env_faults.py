"""Environments that misbehave (NaN/inf observations or rewards, wrongly shaped or non-numeric
observations, non-numeric rewards) are reported as an ``EnvError`` naming the environment id and
the step, before anything reaches the networks; through the CLI that is one line and exit 2.
A policy that produces a non-finite action is reported as training divergence, not blamed on
the environment. The environments are user modules loaded with the ``module:Env-v0`` form."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_config
from smfp.cli.main import main
from smfp.envs import EnvError, make_env
from smfp.training.loop import TrainingDiverged, train
from smfp_test_envs import FAULT_AT  # tests/envs, on sys.path from conftest

MODULE = "smfp_test_envs"

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
def test_faulty_env_is_reported_with_step_and_env_id_during_training(tmp_path, env_module_dir, fault):
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


def test_healthy_variant_trains(tmp_path, env_module_dir):
    """Control: the same task without a fault trains to the end."""
    cfg = tiny_config(tmp_path / "run", env=f"{MODULE}:SmfpFault-none-v0", total_steps=60, learning_starts=20,
                      log_every=10, eval_every=0, checkpoint_every=0)
    cfg.log.tensorboard = False
    assert train(cfg).step == 60


def test_faulty_env_through_the_cli_is_one_line(tmp_path, env_module_dir, capsys):
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


def test_env_check_also_guards_evaluation_envs(env_module_dir):
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
