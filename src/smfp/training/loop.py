"""The training loop: env -> replay buffer -> learner update -> logger, top to bottom.

``train`` opens the run (``training.run``: its directory, the parts, a resumed run's state, the logger
and what watches it), then per step collects one transition, updates, and does the periodic duties
(log, evaluate, checkpoint). The loop knows nothing about the algorithm: ``Learner.update`` does.
Checkpoints are complete and atomic; SIGINT/SIGTERM stop after the current step with a final one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from smfp import keys as K
from smfp.agent import evaluate
from smfp.training.collect import TrainingDiverged
from smfp.training.recovery import MIN_RECOVERY_LR_FRACTION, recovery_lr_factor
from smfp.training.run import Run, StopSignals, open_run, prepare_run_dir


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    final_eval: Optional[dict]
    stopped_early: bool
    stop_signal: Optional[int] = None  # the signal (SIGINT/SIGTERM) that stopped it early, if any


def stop_report(result: TrainResult) -> str:
    """What a signal left behind: "stopped by SIGTERM at step N; a checkpoint of step N was written" (or which
    checkpoint is the newest: the loop refuses to checkpoint a learner holding non-finite values)."""
    import signal

    from smfp.storage.checkpoint import list_checkpoints

    name, step = signal.Signals(result.stop_signal).name, result.step
    newest = max((s for s, _ in list_checkpoints(result.run_dir)), default=None)
    if newest == step:
        saved = f"a checkpoint of step {step} was written"
    else:
        saved = f"no checkpoint of step {step} could be written (" + (
            f"the newest is of step {newest})" if newest is not None else "there is none)")
    return f"stopped by {name} at step {step}; {saved}"


class TrainingStopped(Exception):
    """A signal stopped one run of a command that trains several (the demo, ``smfp bench multigoal``): the
    command stops too, with the signal's exit status, instead of going on to the next run."""

    def __init__(self, result: TrainResult):
        self.signum = int(result.stop_signal)
        super().__init__(f"{stop_report(result)} ({result.run_dir})")


def train(cfg, callback: Optional[Callable[[int, dict], None]] = None) -> TrainResult:
    """Train according to ``cfg``; ``callback(step, row)`` receives every metrics row."""
    with open_run(cfg) as run:
        if callback is not None:
            run.logger.subscribe(callback)
        return run_training(run)


def train_or_stop(cfg, callback: Optional[Callable[[int, dict], None]] = None) -> TrainResult:
    """``train``, raising ``TrainingStopped`` when a signal stopped the run early."""
    result = train(cfg, callback)
    if result.stop_signal is not None:
        raise TrainingStopped(result)
    return result


def run_training(run: Run) -> TrainResult:
    cfg, final_eval = run.cfg, None
    clock = _Clock(run.step)
    with StopSignals() as stop:
        while run.step < cfg.total_steps:
            run.collector.step(run.step)
            run.step += 1
            metrics = update(run)
            if run.step % cfg.log.log_every == 0:
                log_training_row(run, metrics, clock)
            elif run.logger.bar is not None and run.step % 100 == 0:
                run.logger.progress(run.step)
            last = run.step == cfg.total_steps
            if cfg.eval.eval_every and run.step % cfg.eval.eval_every == 0 or last:
                final_eval = evaluate_now(run)
            if cfg.checkpoint.checkpoint_every and run.step % cfg.checkpoint.checkpoint_every == 0 or last:
                checkpoint(run)
            if stop.signum is not None and not last:
                run.logger.message(f"smfp: stop requested; writing a checkpoint at step {run.step} and exiting")
                checkpoint(run)
                break
    if run.alarms is not None:
        run.logger.message(f"smfp: alarms: {run.alarms.summary()}")
    stopped = run.step < cfg.total_steps
    return TrainResult(run.dir.path, run.step, final_eval, stopped, stop.signum if stopped else None)


def update(run: Run) -> dict:
    """``--updates-per-step`` learner updates once learning has started (metrics from the last one on a log
    step); then the non-finite watch."""
    cfg, metrics = run.cfg, {}
    if run.step <= cfg.update.learning_starts:
        return metrics
    log_now = run.step % cfg.log.log_every == 0
    for i in range(cfg.update.updates_per_step):
        metrics = run.learner.update(run.buffer.sample(cfg.update.batch_size),
                                     with_metrics=log_now and i == cfg.update.updates_per_step - 1)
    run.recovery.check(run.step)
    return metrics


class _Clock:
    """Environment steps per second between two log rows."""

    def __init__(self, step: int):
        self.time, self.step = time.perf_counter(), step

    def rate(self, step: int) -> float:
        now = time.perf_counter()
        sps = (step - self.step) / max(now - self.time, 1e-9)
        self.time, self.step = now, step
        return sps


def log_training_row(run: Run, metrics: dict, clock: _Clock) -> None:
    """The update's metrics, throughput, episode statistics, temperature and (every ``--probe-every`` steps)
    the health probe, as one row; the logger hands it on to TensorBoard, the alarms and callbacks."""
    cfg, step = run.cfg, run.step
    row = {**metrics, K.SPS: clock.rate(step), K.UPDATES: run.learner.updates, **run.collector.episode_stats()}
    row.setdefault(K.ALPHA, run.learner.alpha)
    probe = run.probe
    if probe is not None and step > cfg.update.learning_starts:
        if step - probe.last_step >= cfg.monitor.probe_every or probe.last_step < 0:
            row.update(probe.measure(step, run.buffer))
    row = run.logger.log(step, row)
    run.logger.progress(step, sps=row[K.SPS], **({"ret": row[K.EPISODE_RETURN]} if K.EPISODE_RETURN in row else {}))


def evaluate_now(run: Run) -> dict:
    """The configured mode, and ``sample`` beside it (like for like across algorithms: one stochastic pass)."""
    cfg = run.cfg
    result = evaluate(run.agent, cfg.eval.eval_episodes, cfg.eval.eval_mode, seed=cfg.seed + 10_000, env=run.eval_env,
                      seed_actions=False)
    row = {K.EVAL_RETURN_MEAN: result["return_mean"], K.EVAL_RETURN_STD: result["return_std"]}
    if result["mode"] != "sample":
        sampled = evaluate(run.agent, cfg.eval.eval_episodes, "sample", seed=cfg.seed + 10_000, env=run.eval_env,
                           seed_actions=False)
        result["return_mean_sample"], result["return_std_sample"] = sampled["return_mean"], sampled["return_std"]
        row.update({K.EVAL_RETURN_MEAN_SAMPLE: sampled["return_mean"], K.EVAL_RETURN_STD_SAMPLE: sampled["return_std"]})
    run.logger.log(run.step, row)
    run.logger.progress(run.step, eval_return=result["return_mean"])
    return result


def checkpoint(run: Run) -> None:
    """Everything a resume needs, atomically; never a learner holding non-finite values."""
    if not run.learner.all_finite():
        run.logger.message(f"smfp: NOT writing the checkpoint at step {run.step}: the learner holds non-finite values")
        return
    cfg = run.cfg
    rng_state = {"torch": torch.get_rng_state(), "numpy": run.rng.bit_generator.state}
    extra = {"recoveries": run.recovery.count, "episodes": run.collector.state_dict(),
             **({"probe": run.probe.state_dict()} if run.probe is not None else {})}
    run.save_checkpoint(run.dir.path, run.step, cfg.to_dict(), run.meta, run.learner.state_dict(), rng_state,
                        run.buffer.state_dict() if cfg.buffer.save_buffer else None, cfg.checkpoint.keep_checkpoints,
                        extra)


__all__ = ["MIN_RECOVERY_LR_FRACTION", "TrainResult", "TrainingDiverged", "TrainingStopped", "stop_report", "train_or_stop", "checkpoint", "evaluate_now",
           "log_training_row", "prepare_run_dir", "recovery_lr_factor", "run_training", "train", "update"]
