"""What a resume carries on and what a failed run leaves open (docs/reliability.md sections 1 and 7).

- the alarms after ``--resume`` continue as if the run had not stopped (no alert repeated, in
  particular not ``nonfinite_updates`` for updates skipped before the checkpoint);
- non-finite recoveries: one cut of the configured learning rates per recovery, with a floor, and
  the recovery count in the checkpoint;
- the health probe's states and schedule are in the checkpoint;
- ``train`` closes its metrics file, TensorBoard writer and both environments however it ends.

The tasks are one-step, one-state env_module_dir: their episodes end every step and their reset draws
nothing, so an interrupted-and-resumed run must train exactly like an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from conftest import load_weights_only, read_jsonl, tiny_config
from smfp.monitor.health import HealthProbe
from smfp.monitor.logger import TensorBoardSink
from smfp.storage.checkpoint import CheckpointWriteError, list_checkpoints, load_checkpoint
from smfp.training.loop import MIN_RECOVERY_LR_FRACTION, TrainingDiverged, run_training, train
from smfp.training.run import open_run

def _bandit(run_dir: Path, name: str, total_steps: int, **kw):
    cfg = tiny_config(run_dir, env=f"smfp_test_envs:SmfpResume{name}-v0", total_steps=total_steps,
                      eval_every=0, log_every=100, **kw)
    cfg.update.gamma = 0.0
    cfg.log.tensorboard = False
    return cfg


class _Crash(Exception):
    pass


def _interrupted(cfg, crash_at: int):
    """Train ``cfg``, crash it when it logs step ``crash_at`` (after a checkpoint: it resumes from an
    earlier step), then resume it to ``cfg.total_steps``."""
    def crash(step: int, row: dict) -> None:
        if step == crash_at:
            raise _Crash

    with pytest.raises(_Crash):
        train(cfg, callback=crash)
    assert list_checkpoints(Path(cfg.run_dir))[-1][0] < crash_at
    return train(dataclasses.replace(cfg, resume=True))


def _training_rows(run_dir: Path) -> list[dict]:
    """The metrics rows without what depends on the wall clock or on episodes in progress at a resume."""
    skip = ("train/sps", "train/episode_return", "train/episode_length")
    return [{k: v for k, v in r.items() if k not in skip} for r in read_jsonl(run_dir / "metrics.jsonl")]


def _alerts(run_dir: Path) -> list[tuple]:
    path = run_dir / "alerts.jsonl"
    return [(r["step"], r["alarm"], r["value"]) for r in read_jsonl(path)] if path.exists() else []


def _lrs(checkpoint: Path) -> list[float]:
    learner = load_weights_only(checkpoint)["learner"]
    return [g["lr"] for opt in ("actor_opt", "critic_opt") for g in learner[opt]["param_groups"]]


def _expected_lrs(cfg, recoveries: int):
    """The configured learning rates x factor^recoveries, never below the floor."""
    factor = max(cfg.monitor.recovery_lr_factor ** recoveries, MIN_RECOVERY_LR_FRACTION)
    return pytest.approx([cfg.update.actor_lr * factor, cfg.update.critic_lr * factor], rel=1e-9)


# --- alarms across a resume ---------------------------------------------------------------------------

def _pushed(cfg):
    cfg.update.alpha, cfg.update.autotune_alpha, cfg.update.actor_lr = 0.01, False, 3e-3  # as the saturation test
    return cfg


@pytest.mark.parametrize("task, total, expected", [("Poison", 1300, {"nonfinite_updates"}),
                                                   ("Push", 1500, {"saturation", "entropy_collapse"})])
def test_a_resumed_run_raises_the_alerts_of_an_uninterrupted_one(tmp_path, env_module_dir, task, total, expected):
    """Alarms whose condition held at the checkpoint (updates skipped before it, actions pinned at the
    bounds, entropy low for some rows) are not reported again, or late, by the resumed run."""
    settings = _pushed if task == "Push" else lambda cfg: cfg
    whole = settings(_bandit(tmp_path / "whole", task, total, checkpoint_every=300))
    train(whole)
    assert {a[1] for a in _alerts(tmp_path / "whole")} == expected  # the conditions this test is about
    assert _alerts(tmp_path / "whole")[0][0] <= 900  # a condition already held at the checkpoint of step 900
    parts = settings(_bandit(tmp_path / "parts", task, total, checkpoint_every=300))
    _interrupted(parts, 1000)  # resumes at 900 (its env's new clock would poison steps 1401-1430)
    assert _alerts(tmp_path / "parts") == _alerts(tmp_path / "whole")
    assert _training_rows(tmp_path / "parts") == _training_rows(tmp_path / "whole")  # of the same training


# --- non-finite recoveries -------------------------------------------------------------------------------

def _recoveries(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("train/recoveries")]


def test_each_recovery_sets_the_configured_lr_times_the_factor_to_the_power_of_the_recoveries(tmp_path, env_module_dir):
    base = _bandit(tmp_path / "r", "Poison", 900, checkpoint_every=300)
    base.buffer.buffer_size = 100  # the poisoned transitions of steps 501-530 are gone by step 631
    train(base)
    n = len(_recoveries(tmp_path / "r"))
    assert n >= 2, n  # the poison outlived the first restore
    final = list_checkpoints(tmp_path / "r")[-1][1]
    assert _lrs(final) == _expected_lrs(base, n)
    assert load_checkpoint(final)["recoveries"] == n
    # a checkpoint written between two recoveries (it holds the lowered lr) does not make the cut compound
    often = _bandit(tmp_path / "often", "Poison", 900, checkpoint_every=10)
    often.buffer.buffer_size = 100
    train(often)
    m = len(_recoveries(tmp_path / "often"))
    assert m >= 2, m
    final = list_checkpoints(tmp_path / "often")[-1][1]
    assert _lrs(final) == _expected_lrs(often, m)
    assert load_checkpoint(final)["recoveries"] == m


def test_poison_that_stays_in_the_buffer_lowers_the_lr_to_its_floor_not_to_zero(tmp_path, env_module_dir):
    cfg = _bandit(tmp_path / "r", "LongPoison", 1300, checkpoint_every=20)  # 600 steps of poisoned rewards
    cfg.buffer.buffer_size = 100
    train(cfg)
    n = len(_recoveries(tmp_path / "r"))
    assert cfg.monitor.recovery_lr_factor ** n < MIN_RECOVERY_LR_FRACTION / 100, n  # far past the floor
    final = list_checkpoints(tmp_path / "r")[-1][1]
    assert _lrs(final) == _expected_lrs(cfg, n)  # the floor
    assert load_checkpoint(final)["recoveries"] == n


def test_the_recovery_count_survives_a_resume(tmp_path, env_module_dir):
    cfg = _bandit(tmp_path / "r", "Poison", 1600, checkpoint_every=300)
    cfg.buffer.buffer_size = 100
    _interrupted(cfg, 1000)  # resumes at 900; the resumed env's own clock poisons steps 1401-1430 again
    steps = _recoveries(tmp_path / "r")
    first, second = [s for s in steps if s <= 900], [s for s in steps if s > 900]
    assert first and second, steps
    final = list_checkpoints(tmp_path / "r")[-1][1]
    assert _lrs(final) == _expected_lrs(cfg, len(steps))
    assert load_checkpoint(final)["recoveries"] == len(steps)


def test_a_checkpoint_without_a_recovery_count_still_resumes(tmp_path, env_module_dir):
    """Checkpoints written before the count existed lack the key: they resume with a count of 0."""
    cfg = _bandit(tmp_path / "r", "Quadratic", 400, checkpoint_every=400)
    train(cfg)
    path = list_checkpoints(tmp_path / "r")[-1][1]
    ckpt = load_weights_only(path)
    ckpt.pop("recoveries", None)
    torch.save(ckpt, path)
    assert train(dataclasses.replace(cfg, total_steps=600, resume=True)).step == 600


# --- the health probe ----------------------------------------------------------------------------------

def test_a_resumed_run_probes_the_same_states_on_the_same_schedule(tmp_path, env_module_dir):
    # (rewritten against the loop's seams: the probes are the ones open_run built, not recorded by
    # monkeypatching loop.py's HealthProbe; the assertions are unchanged)
    probes: list[HealthProbe] = []

    def interrupted_keeping_probes(cfg, crash_at):  # the module's _interrupted, keeping each run's probe
        def crash(step: int, row: dict) -> None:
            if step == crash_at:
                raise _Crash

        with pytest.raises(_Crash), open_run(cfg) as run:
            probes.append(run.probe)
            run.logger.subscribe(crash)
            run_training(run)
        assert list_checkpoints(Path(cfg.run_dir))[-1][0] < crash_at
        with open_run(dataclasses.replace(cfg, resume=True)) as run:
            probes.append(run.probe)
            return run_training(run)

    # a task with varied states: the probe states are a sample of the replay buffer
    cfg = tiny_config(tmp_path / "pendulum", total_steps=900, learning_starts=200, log_every=100, eval_every=0,
                      checkpoint_every=600)
    cfg.algo, cfg.monitor.probe_every, cfg.log.tensorboard = "smfp", 300, False
    interrupted_keeping_probes(cfg, 700)  # resumes at 600
    assert len(probes) == 2 and probes[0].states is not None
    assert probes[1].states is not None and bool((probes[1].states == probes[0].states).all())
    probed = [r["step"] for r in read_jsonl(tmp_path / "pendulum" / "metrics.jsonl") if "health/modes" in r]
    assert probed == [300, 600, 900]  # every probe_every steps, not again at the first row after the resume
    # on a one-step task the whole run, probes included, is the uninterrupted one
    whole = _bandit(tmp_path / "whole", "Quadratic", 1200, checkpoint_every=600)
    whole.algo, whole.monitor.probe_every = "smfp", 300
    train(whole)
    parts = _bandit(tmp_path / "parts", "Quadratic", 1200, checkpoint_every=600)
    parts.algo, parts.monitor.probe_every = "smfp", 300
    _interrupted(parts, 800)  # resumes at 600
    assert _training_rows(tmp_path / "parts") == _training_rows(tmp_path / "whole")


# --- train() always closes what it opened ------------------------------------------------------------

def _train_watched(cfg, made: dict, patch=None) -> None:
    """``train`` through its seams, noting the environments and the logger ``open_run`` made and the ``close``
    calls of the environments. (Rewritten from monkeypatching loop.py's make_env and MetricsLogger.)"""
    made.update(envs=[], closed=[], loggers=[])
    with open_run(cfg) as run:
        for env in (run.env, run.eval_env):
            real_close = env.close

            def close(env=env, real_close=real_close):
                made["closed"].append(env)
                real_close()

            env.close = close
            made["envs"].append(env)
        made["loggers"].append(run.logger)
        if patch is not None:
            patch(run)
        run_training(run)


def _assert_all_closed(made: dict) -> None:
    assert len(made["envs"]) == 2 and all(any(e is c for c in made["closed"]) for e in made["envs"])
    (logger,) = made["loggers"]
    assert logger.file.closed
    sinks = [s for s in logger.subscribers if isinstance(s, TensorBoardSink)]
    assert all(s.writer.all_writers is None for s in sinks)  # SummaryWriter.close() drops them


def test_divergence_closes_the_metrics_file_the_tensorboard_writer_and_both_envs(tmp_path, env_module_dir):
    cfg = _bandit(tmp_path / "r", "EarlyPoison", 1000, checkpoint_every=600)  # diverges before any checkpoint
    cfg.log.tensorboard = True
    opened: dict = {}
    with pytest.raises(TrainingDiverged):
        _train_watched(cfg, opened)
    _assert_all_closed(opened)


def test_a_failed_checkpoint_write_closes_them_too(tmp_path, env_module_dir):
    def full_disk(run_dir, step, *a, **kw):
        raise CheckpointWriteError(f"cannot write the checkpoint of step {step} (No space left on device)")

    cfg = _bandit(tmp_path / "r", "Quadratic", 400, checkpoint_every=300)
    cfg.log.tensorboard = True
    opened: dict = {}
    with pytest.raises(CheckpointWriteError):
        _train_watched(cfg, opened, patch=lambda run: setattr(run, "save_checkpoint", full_disk))
    _assert_all_closed(opened)


def test_a_completed_run_closes_them(tmp_path, env_module_dir):
    opened: dict = {}
    _train_watched(_bandit(tmp_path / "r", "Quadratic", 300, checkpoint_every=300), opened)
    _assert_all_closed(opened)
