"""One writer per run dir: a second ``smfp train`` on a run dir another process is training in is refused
with one line naming that process; the lock of a process killed with SIGKILL is taken over; ``train``
releases the lock however it ends (docs/reliability.md, "One writer per run dir")."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, assert_one_line_error, one_line_error_in_process, read_jsonl, run_cli, smfp_command, tiny_config
from smfp.config import ConfigError
from smfp.monitor.logger import read_metrics
from smfp.storage.checkpoint import list_checkpoints
from smfp.storage.lock import LOCK_NAME, RunDirInUse, lock_run_dir
from smfp.training.loop import train

CKPT_EVERY = 50
FLAGS = ["train", "--algo", "sac", "--env", "Pendulum-v1", "--seed", "5", "--hidden", "16", "16",
         "--critic-hidden", "16", "16", "--batch-size", "32", "--learning-starts", "100",
         "--log-every", "50", "--checkpoint-every", str(CKPT_EVERY), "--eval-every", "0", "--eval-episodes", "1",
         "--max-episode-steps", "100", "--no-progress", "--no-tensorboard", "--threads", "1"]


def _in_use(run: Path, pid: int) -> str:
    return f"run dir {run} is in use by another smfp process (pid {pid}); wait for it to finish or stop it"


def _assert_free(run: Path) -> None:
    lock_run_dir(run).release()  # raises RunDirInUse if anyone still holds it


def test_second_writer_is_refused_and_a_killed_holders_lock_is_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    with open(tmp_path / "first.txt", "w") as err:
        first = subprocess.Popen([*smfp_command(), *FLAGS, "--total-steps", "1000000", "--run-dir", str(run)],
                                 cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (list_checkpoints(run) and read_metrics(run / "metrics.jsonl")):  # training, checkpointed
            assert first.poll() is None, f"training exited early:\n{(tmp_path / 'first.txt').read_text()}"
            assert time.monotonic() < deadline, "training made no progress"
            time.sleep(0.05)

        # a second process with the same options and --resume: one line naming the first one's pid
        second = run_cli(*FLAGS, "--total-steps", "1000000", "--run-dir", run, "--resume")
        line = assert_one_line_error(second, _in_use(run, first.pid))
        assert line == f"smfp: error: {_in_use(run, first.pid)}"
        # without --resume the lock is checked first too (not "already holds a run"); in-process, cheaper
        one_line_error_in_process([*FLAGS, "--total-steps", "200", "--run-dir", str(run)], capsys,
                                  _in_use(run, first.pid))
        assert first.poll() is None, "the refused processes must not disturb the running one"
    finally:
        first.kill()  # SIGKILL: no clean-up runs, the lock file stays with the dead process's pid
        first.communicate(timeout=60)

    assert (run / LOCK_NAME).read_text().strip() == str(first.pid)
    step = list_checkpoints(run)[-1][0]
    resumed = run_cli(*FLAGS, "--total-steps", str(step + 20), "--run-dir", run, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at step {step}" in resumed.stderr, resumed.stderr
    assert "another CPU" not in resumed.stderr  # same machine, libraries, threads and precision: no note
    assert [row["step"] for row in read_jsonl(run / "starts.jsonl")] == [0, step]
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["step"] == step + 20
    _assert_free(run)


def test_lock_is_released_when_train_returns_and_when_it_raises(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(run, total_steps=300, learning_starts=200, log_every=100, eval_every=0, checkpoint_every=300)
    cfg.log.tensorboard = False
    refusals = []

    def probe(step, row):  # while training, this very process holds it: a second taker is refused
        with pytest.raises(RunDirInUse) as exc:
            lock_run_dir(run)
        refusals.append(str(exc.value))

    assert train(cfg, callback=probe).step == 300
    assert refusals and refusals[0] == _in_use(run, os.getpid())
    _assert_free(run)
    assert (run / LOCK_NAME).read_text() == "", "a released lock keeps no pid"

    class Crash(Exception):
        pass

    def crash(step, row):
        raise Crash(step)

    cfg.resume, cfg.total_steps = True, 500
    with pytest.raises(Crash):  # an exception in the training loop
        train(cfg, callback=crash)
    _assert_free(run)

    cfg.seed = 1  # a different run: refused after the lock is taken, before anything is read
    with pytest.raises(ConfigError, match="holds a different run"):
        train(cfg)
    _assert_free(run)


def test_refusal_is_a_config_error_naming_the_holder(tmp_path):
    held = lock_run_dir(tmp_path)
    try:
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        with pytest.raises(ConfigError, match=rf"\(pid {os.getpid()}\); wait for it to finish or stop it"):
            lock_run_dir(tmp_path)
    finally:
        held.release()
    lock_run_dir(tmp_path).release()
