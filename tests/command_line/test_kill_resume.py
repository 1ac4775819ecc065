"""Kill at any moment: SIGKILL ``smfp train`` at random moments (some while a checkpoint is being
written), resume each time with ``--resume``, and check what survives (docs/reliability.md).

Also the metrics.jsonl resume rule, deterministically and in-process: after a resume from the
checkpoint of step S, the file holds the complete lines with step <= S written before the crash,
then the new ones; a resume that finds no checkpoint starts from scratch and keeps no line.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, load_weights_only, smfp_command, tiny_config
from smfp.monitor.logger import read_metrics
from smfp.storage.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from smfp.training.loop import train

# Random actions (no updates) for the first 300 steps keep the test cheap; then one update per step. The
# kills below advance the run by at most ~700 steps in all, so the last one always lands before the end.
TOTAL, LOG_EVERY, CKPT_EVERY, EVAL_EVERY, LEARNING_STARTS = 900, 25, 50, 300, 300
FLAGS = ["train", "--algo", "sac", "--env", "Pendulum-v1", "--seed", "3", "--total-steps", str(TOTAL),
         "--hidden", "16", "16", "--critic-hidden", "16", "16", "--batch-size", "32",
         "--learning-starts", str(LEARNING_STARTS), "--log-every", str(LOG_EVERY),
         "--checkpoint-every", str(CKPT_EVERY), "--eval-every", str(EVAL_EVERY), "--eval-episodes", "1",
         "--max-episode-steps", "100", "--no-progress", "--no-tensorboard", "--threads", "1", "--resume"]


def _start(run: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    with open(log, "w") as err:
        return subprocess.Popen([*smfp_command(), *FLAGS, "--run-dir", str(run)], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=err, text=True)


def _tmp_files(ckdir: Path) -> list[str]:
    try:
        return [n for n in os.listdir(ckdir) if n.endswith(".tmp")]
    except FileNotFoundError:
        return []


def _wait_for(pred, proc: subprocess.Popen, timeout: float, poll: float = 0.01) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        if pred():
            return True
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for the training process")


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)


def _check_disk(run: Path) -> int:
    """Every checkpoint on disk loads (weights_only) and names its own step; the newest has its buffer.
    Returns the step a resume would restore (0 when there is no checkpoint)."""
    found = list_checkpoints(run)
    for step, path in found:
        assert load_checkpoint(path)["step"] == step, path
    latest = latest_checkpoint(run)
    if found:
        assert latest is not None and latest["step"] == found[-1][0], "the newest checkpoint did not load"
        buf = load_weights_only(run / "checkpoints" / latest["buffer_file"])
        assert buf["size"] == min(latest["step"], TOTAL), "the newest checkpoint's buffer is incomplete"
        return int(latest["step"])
    return 0


def test_sigkill_at_random_moments_then_resume(tmp_path):
    seed = int(os.environ.get("SMFP_KILL_SEED", "0"))  # a fixed schedule; set it to try others
    rng = random.Random(seed)
    note = f"(SMFP_KILL_SEED={seed} reproduces the kill schedule)"
    run, ckdir = tmp_path / "run", tmp_path / "run" / "checkpoints"
    schedule = ["startup", "midwrite", "random", "midwrite", "random"]
    restored, midwrite_hits, kills, resumed_at = [0], 0, 0, []
    for i, kind in enumerate(schedule):
        log = tmp_path / f"stderr_{i}.txt"
        proc = _start(run, log)
        if kind == "startup":  # anywhere from the interpreter start to the first steps (at most ~20 ms
            deadline = time.monotonic() + rng.uniform(0.0, 4.0)  # after the start line, however fast it is)
            while time.monotonic() < deadline and "smfp: sac on" not in log.read_text():
                time.sleep(0.002)
            if time.monotonic() < deadline:
                time.sleep(rng.uniform(0.0, 0.02))
            alive = proc.poll() is None
        else:  # first let the run get a random number of steps past where it resumed
            past = restored[-1] + rng.randint(1, 100) + (CKPT_EVERY if kind == "random" else 0)
            alive = _wait_for(lambda: "smfp: sac on" in log.read_text() and _last_logged(run) >= past, proc,
                              timeout=180, poll=0.005)  # (the start line comes after the metrics truncation)
            if alive and kind == "random":
                time.sleep(rng.uniform(0.0, 0.05))
            elif alive:  # then freeze it the moment a new checkpoint/buffer temp file appears; kill it if
                alive = _freeze_mid_write(proc, ckdir)  # the write was still in progress, else let it go on
            alive = alive and proc.poll() is None
        if not alive:
            break  # finished before this kill; the checks below still hold
        _kill(proc)
        kills += 1
        midwrite_hits += kind == "midwrite"
        step = _check_disk(run)
        assert step >= restored[-1], f"the step went backwards: {restored} then {step} {note}"
        if kind == "random":  # it ran past at least one more checkpoint, so a resume goes further
            assert step > restored[-1], f"{restored} then {step} {note}"
        restored.append(step)
        resumed_at.append(_resumed_step(log))

    print(f"kills: {kills}, restored steps after each: {restored[1:]} {note}")  # shown on failure
    final = _start(run, tmp_path / "stderr_final.txt")
    out, _ = final.communicate(timeout=240)
    err = (tmp_path / "stderr_final.txt").read_text()
    assert final.returncode == 0, f"final resume failed {note}:\n{err}"
    assert json.loads(out.strip().splitlines()[-1])["step"] == TOTAL
    assert "Traceback" not in err
    # every process resumed exactly at the newest checkpoint the previous one left (None: it was killed
    # before saying so, or there was no checkpoint and it started from scratch)
    for before, said in zip(restored, resumed_at):
        assert said in (None, before) and not (before == 0 and said is not None), (restored, resumed_at, note)
    assert _resumed_step(tmp_path / "stderr_final.txt") == (restored[-1] or None), (restored, note)
    assert kills >= 5, f"only {kills} kills landed before the run finished {note}"
    assert midwrite_hits >= 2, f"fewer than two kills landed while a checkpoint was being written {note}"

    assert _check_disk(run) == TOTAL
    assert not _tmp_files(ckdir), "temp files of killed writes are cleaned up by the next checkpoint"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line parses: no torn line survives
    steps = [r["step"] for r in rows]
    assert steps == sorted(steps), "metrics steps go backwards"
    train_steps = [r["step"] for r in rows if "train/sps" in r]
    eval_steps = [r["step"] for r in rows if "eval/return_mean" in r]
    assert train_steps == list(range(LOG_EVERY, TOTAL + 1, LOG_EVERY)), "training rows missing or duplicated"
    assert eval_steps == list(range(EVAL_EVERY, TOTAL + 1, EVAL_EVERY)), "eval rows missing or duplicated"


def _freeze_mid_write(proc: subprocess.Popen, ckdir: Path, timeout: float = 180) -> bool:
    """SIGSTOP the process as soon as a new temp file appears in ``ckdir``; True when it is frozen
    while that temp file still exists (in the middle of an atomic write), else it is resumed and the
    next write is tried. False when the process ended first."""
    seen = set(_tmp_files(ckdir))  # left by an earlier kill; removed by the next checkpoint
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        new = set(_tmp_files(ckdir)) - seen
        if new:
            proc.send_signal(signal.SIGSTOP)
            if set(_tmp_files(ckdir)) & new:
                return True
            proc.send_signal(signal.SIGCONT)
            seen |= new
        time.sleep(0.0002)
    raise AssertionError("no checkpoint write was caught in progress")


def _last_logged(run: Path) -> int:
    return max((r["step"] for r in read_metrics(run / "metrics.jsonl")), default=0)


def _resumed_step(stderr: Path) -> int | None:
    for line in stderr.read_text().splitlines():
        if "resumed at step" in line:
            return int(line.split("resumed at step")[1].split(")")[0].split(";")[0])
    return None


class _Crash(Exception):
    """Stands for the process dying (raised from the metrics callback)."""


def _crash_at(step_to_crash: int):
    def callback(step, row):
        if step >= step_to_crash:
            raise _Crash(step)
    return callback


def test_metrics_rule_after_a_crash_past_a_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path / "run", total_steps=500, learning_starts=350, log_every=50, eval_every=250,
                      checkpoint_every=200)
    cfg.log.tensorboard = False
    with pytest.raises(_Crash):
        train(cfg, callback=_crash_at(350))  # checkpoint at 200; rows up to 350 written
    path = tmp_path / "run" / "metrics.jsonl"
    assert max(r["step"] for r in read_metrics(path)) == 350
    with open(path, "a") as f:
        f.write('{"step": 400, "train/sps": 1')  # a torn line, as left by a kill mid-write
    cfg.resume = True
    result = train(cfg)
    assert result.step == 500
    lines = path.read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["step"] for r in rows if "train/sps" in r] == list(range(50, 501, 50))
    assert [r["step"] for r in rows if "eval/return_mean" in r] == [250, 500]


def test_resume_without_a_checkpoint_starts_from_scratch(tmp_path):
    cfg = tiny_config(tmp_path / "run", total_steps=400, learning_starts=300, log_every=50, eval_every=400,
                      checkpoint_every=1000)
    cfg.log.tensorboard = False
    with pytest.raises(_Crash):
        train(cfg, callback=_crash_at(150))  # config.json and metrics rows exist, no checkpoint yet
    run = tmp_path / "run"
    assert (run / "config.json").exists() and not list_checkpoints(run)
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [50, 100, 150]
    cfg.resume = True
    result = train(cfg)
    assert result.step == 400
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows if "train/sps" in r] == list(range(50, 401, 50))
    assert load_checkpoint(list_checkpoints(run)[-1][1])["step"] == 400
