"""The real ``smfp`` command in a subprocess: a smoke run, its run dir, evaluation, bad inputs."""

from __future__ import annotations

import json
import math
import pickle
import random
import shutil

import pytest

from conftest import (ENV_MODULE, TINY_FLAGS, assert_one_line_error, load_weights_only, read_jsonl, run_cli)
from smfp.agent import evaluate, load_agent
from smfp.config import TrainConfig

TRAIN_KEYS = ("train/sps", "train/alpha", "train/entropy", "losses/critic", "losses/actor", "train/episode_return")


def _fixture_train_args(run) -> list:
    return ["train", "--algo", "sac", "--env", "Pendulum-v1", "--seed", "2", "--learning-starts", "200",
            "--log-every", "200", "--eval-every", "300", "--eval-episodes", "2", "--checkpoint-every", "300",
            "--run-dir", run, *TINY_FLAGS]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """``smfp train`` on Pendulum for 600 steps (updates from step 200), checkpoints at 300 and 600."""
    run = tmp_path_factory.mktemp("cli") / "run"
    proc = run_cli(*_fixture_train_args(run), "--total-steps", "600")
    assert proc.returncode == 0, proc.stderr
    return run, proc


def test_train_prints_one_json_summary(cli_run):
    run, proc = cli_run
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["step"] == 600 and summary["run_dir"] == str(run) and summary["stopped_early"] is False
    assert summary["episodes"] == 2 and summary["mode"] == "mean" and math.isfinite(summary["return_mean"])
    assert math.isfinite(summary["return_mean_sample"])
    assert "Traceback" not in proc.stderr


def test_run_dir_holds_config_metrics_and_checkpoints(cli_run):
    run, _ = cli_run
    cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert (cfg.algo, cfg.env.env, cfg.seed, cfg.total_steps) == ("sac", "Pendulum-v1", 2, 600)
    assert cfg.policy.hidden == (32, 32) and cfg.update.md_lambda == 0.0  # resolved, not 'none'

    rows = read_jsonl(run / "metrics.jsonl")
    assert rows and all(isinstance(r["step"], int) for r in rows)
    train_rows = [r for r in rows if "train/sps" in r]
    eval_rows = [r for r in rows if "eval/return_mean" in r]
    assert [r["step"] for r in train_rows] == [200, 400, 600]
    for r in train_rows[1:]:  # after learning starts
        for key in TRAIN_KEYS:
            assert isinstance(r[key], float) and math.isfinite(r[key]), (r["step"], key)
        assert r["train/alpha"] > 0
    assert [r["step"] for r in eval_rows] == [300, 600]
    for r in eval_rows:
        assert math.isfinite(r["eval/return_mean"]) and r["eval/return_std"] >= 0
        # like-for-like: the stochastic (sample) mode is evaluated beside the default (mean) mode
        assert math.isfinite(r["eval/return_mean_sample"]) and r["eval/return_std_sample"] >= 0

    ckpts = sorted((run / "checkpoints").glob("step_*.pt"))
    assert [p.name for p in ckpts] == ["step_0000000300.pt", "step_0000000600.pt"]
    ckpt = load_weights_only(ckpts[-1])
    assert ckpt["step"] == 600 and ckpt["format"] == "smfp-checkpoint"
    assert (run / "checkpoints" / ckpt["buffer_file"]).is_file()


def test_tensorboard_events_hold_the_same_metrics(cli_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = cli_run
    assert list((run / "tb").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"losses/critic", "train/alpha", "eval/return_mean"} <= tags
    from_file = {r["step"]: r["losses/critic"] for r in read_jsonl(run / "metrics.jsonl") if "losses/critic" in r}
    from_tb = {e.step: e.value for e in acc.Scalars("losses/critic")}
    assert set(from_tb) == set(from_file) == {400, 600}
    for step, value in from_file.items():
        assert from_tb[step] == pytest.approx(value, rel=1e-6)


def test_eval_json_on_run_dir_and_checkpoint_file(cli_run):
    run, _ = cli_run
    proc = run_cli("eval", run, "--episodes", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert {"return_mean", "return_std", "episodes", "mode"} <= set(out)
    assert out["episodes"] == 2 and out["mode"] == "mean" and out["step"] == 600
    assert math.isfinite(out["return_mean"]) and out["return_std"] >= 0
    # the CLI is a thin layer over the Python API: same agent, same seeds, same numbers
    api = evaluate(load_agent(run), episodes=2, mode="auto", seed=10_000)
    assert api["return_mean"] == pytest.approx(out["return_mean"], rel=1e-9)

    older = run_cli("eval", run / "checkpoints" / "step_0000000300.pt", "--episodes", "1", "--mode", "sample",
                    "--json")
    assert older.returncode == 0, older.stderr
    out = json.loads(older.stdout)
    assert out["step"] == 300 and out["mode"] == "sample" and out["episodes"] == 1
    # sampled actions draw from a generator seeded with --seed: the same command gives the same number
    again = json.loads(run_cli("eval", run / "checkpoints" / "step_0000000300.pt", "--episodes", "1", "--mode",
                               "sample", "--json").stdout)
    assert again["return_mean"] == out["return_mean"]
    api = evaluate(load_agent(run / "checkpoints" / "step_0000000300.pt"), episodes=1, mode="sample", seed=10_000)
    assert api["return_mean"] == pytest.approx(out["return_mean"], rel=1e-9)


# --- bad inputs: one line on stderr, non-zero exit, no traceback --------------------------------

def _train(run_dir, *extra):
    return run_cli("train", "--env", "Pendulum-v1", "--total-steps", "300", "--learning-starts", "100",
                   "--run-dir", run_dir, *TINY_FLAGS, *extra)


@pytest.mark.parametrize("env_id, needles", [("NoSuchEnv-v0", ["NoSuchEnv-v0"]),
                                             ("CartPole-v1", ["CartPole-v1", "Discrete"])])
def test_bad_env(tmp_path, env_id, needles):
    assert_one_line_error(_train(tmp_path / "run", "--env", env_id), *needles)


def test_non_positive_total_steps(tmp_path):
    assert_one_line_error(_train(tmp_path / "run", "--total-steps", "0"), "--total-steps")
    assert not (tmp_path / "run").exists()


def test_unwritable_run_dir(tmp_path):
    blocker = tmp_path / "somefile"
    blocker.write_text("a regular file, so nothing can be created under it (even as root)")
    assert_one_line_error(_train(blocker / "run"), "run dir", str(blocker / "run"))


def test_run_dir_holding_another_run(cli_run):
    run, _ = cli_run
    before = (run / "metrics.jsonl").read_text()
    assert_one_line_error(_train(run, "--seed", "9"), "already holds a run", "--resume")
    # with --resume, a different configuration is refused too, naming what differs
    assert_one_line_error(_train(run, "--seed", "9", "--resume"), "different run", "seed")
    # resuming the same run to fewer steps than its checkpoint is refused
    assert_one_line_error(run_cli(*_fixture_train_args(run), "--total-steps", "300", "--resume"),
                          "--total-steps", "600")
    assert (run / "metrics.jsonl").read_text() == before  # nothing was touched


def test_eval_missing_checkpoint(tmp_path):
    assert_one_line_error(run_cli("eval", tmp_path / "step_0000000100.pt", "--json"), "step_0000000100.pt")
    (tmp_path / "empty_run").mkdir()
    assert_one_line_error(run_cli("eval", tmp_path / "empty_run", "--json"), "no loadable checkpoint")


def test_eval_corrupt_checkpoints(tmp_path, cli_run):
    run, _ = cli_run
    good = (run / "checkpoints" / "step_0000000600.pt").read_bytes()
    cases = {
        "random.pt": random.Random(0).randbytes(4096),  # seeded: the same bytes on every run
        "truncated.pt": good[: len(good) // 2],
        "plain_pickle.pt": pickle.dumps({"not": "a checkpoint"}),
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        assert_one_line_error(run_cli("eval", path, "--json"), name)


def test_eval_bad_episodes(cli_run):
    run, _ = cli_run
    assert_one_line_error(run_cli("eval", run, "--episodes", "0"), "--episodes")


def test_nan_observation_during_training(tmp_path, env_module_dir):
    env_id = f"{ENV_MODULE}:SmfpTestNaN-v0"
    proc = run_cli("train", "--env", env_id, "--total-steps", "50", "--run-dir", tmp_path / "run", *TINY_FLAGS,
                   pythonpath=env_module_dir)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0] == proc.stderr.splitlines()[-1]
    assert env_id in errors[0] and "step 3" in errors[0]


def test_damaged_newest_checkpoint_falls_back_to_an_older_one(tmp_path, cli_run):
    """In-process (no subprocess needed): the run dir's newest loadable checkpoint is used."""
    from smfp.storage.checkpoint import CheckpointError

    run, _ = cli_run
    damaged = tmp_path / "damaged_run"
    shutil.copytree(run, damaged)
    newest = damaged / "checkpoints" / "step_0000000600.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    assert load_agent(damaged).step == 300
    (damaged / "checkpoints" / "step_0000000300.pt").write_bytes(random.Random(1).randbytes(100))
    with pytest.raises(CheckpointError, match="no loadable checkpoint"):
        load_agent(damaged)
