"""The training loop: env -> replay buffer -> learner update -> logger, top to bottom.

The loop knows nothing about the algorithm: ``Learner.update`` does. Checkpoints are complete
and atomic; ``resume=True`` continues from the latest one. SIGINT/SIGTERM stop gracefully
after the current step with a final checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from smfp import keys as K
from smfp.agent import Agent, evaluate
from smfp.buffer import ReplayBuffer
from smfp.config import ConfigError, TrainConfig, flatten_config
from smfp.envs import env_dims, make_env
from smfp.monitor.alarms import AlarmMonitor, kl_watch
from smfp.monitor.health import HealthProbe
from smfp.monitor.logger import MetricsLogger
from smfp.storage.atomic import atomic_write_text
from smfp.storage.checkpoint import CheckpointError, latest_checkpoint, safe_load, save_checkpoint
from smfp.storage.lock import lock_run_dir
from smfp.storage.userfiles import describe, read_saved_config
from smfp.update import Learner

# Fields that may differ when a run is resumed (they do not change the method).
RESUMABLE_CHANGES = {"total_steps", "resume", "threads", "run_dir", "label", "log.progress", "update.precision",
                     "eval.eval_every", "eval.eval_episodes", "checkpoint.checkpoint_every",
                     "checkpoint.keep_checkpoints"}
RESUMABLE_PREFIXES = ("monitor.",)  # alarms watch the run; they do not change the method
# Fields added after runs were first saved, with the value that reproduces what those runs did.
ADDED_FIELDS = {"update.lambda_per_alpha": False}
# Repeated non-finite recoveries never take the learning rates below this fraction of the configured ones.
MIN_RECOVERY_LR_FRACTION = 1e-3


class TrainingDiverged(RuntimeError):
    """Non-finite updates persisted and there is no good checkpoint to return to."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    final_eval: Optional[dict]
    stopped_early: bool
    stop_signal: Optional[int] = None  # the signal (SIGINT/SIGTERM) that stopped it early, if any


def prepare_run_dir(cfg: TrainConfig, closing: Optional[contextlib.ExitStack] = None) -> Path:
    """Create/check the run dir; refuse to mix two different runs in one folder. With ``closing``, also
    lock the run dir against a second writer (``smfp.storage.lock``) until ``closing`` closes."""
    run_dir = Path(cfg.run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write_probe.{os.getpid()}"  # per process: two starting at once do not collide
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to run dir {run_dir}: {exc.strerror or exc}; choose another --run-dir") from None
    if closing is not None:  # before anything is read: the holder may be rewriting it
        closing.callback(lock_run_dir(run_dir).release)
    if (run_dir / "config.json").exists() and not cfg.resume:
        raise ConfigError(f"run dir {run_dir} already holds a run; pass --resume to continue it "
                          "or choose another --run-dir")
    old = read_saved_config(run_dir, "cannot resume this run; move it away or choose another --run-dir")
    if old is not None:
        diff = changed_fields(old, cfg)
        if diff:
            shown = ", ".join(diff[:8]) + (f" and {len(diff) - 8} more" if len(diff) > 8 else "")
            raise ConfigError(f"run dir {run_dir} holds a different run (differs in: {shown}); "
                              "use the same options to resume or choose another --run-dir")
    return run_dir


def changed_fields(saved: dict, cfg: TrainConfig) -> list[str]:
    """Flattened fields in which a saved run's config (``flatten_config``-ed) differs from ``cfg``, other than
    those a resume may change; a field the saved run predates counts with its ``ADDED_FIELDS`` value."""
    old = {**ADDED_FIELDS, **saved}
    new = flatten_config(cfg.to_dict())
    return sorted(k for k in set(old) | set(new) if k not in RESUMABLE_CHANGES
                  and not k.startswith(RESUMABLE_PREFIXES) and old.get(k) != new.get(k))


def _dense(sizes: list[int]) -> int:
    return sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))


def _check_memory(cfg: TrainConfig, capacity: int, obs_dim: int, act_dim: int) -> None:
    """Refuse, before allocating anything, a run whose replay buffer (allocated and zero-filled up
    front), networks or update batches cannot fit in the available memory: a rough upper estimate,
    meant to turn absurd sizes into one clear line instead of an allocation traceback or the OOM killer."""
    p, c, u = cfg.policy, cfg.critic, cfg.update
    buffer = capacity * (2 * obs_dim + act_dim + 2) * 4  # float32 obs, next_obs, action, reward, terminated
    widths = [*p.hidden, *p.sigma_hidden, *c.critic_hidden]
    params = (_dense([obs_dim + 2 * act_dim + 2, *p.hidden, 2 * act_dim]) + _dense([obs_dim, *p.sigma_hidden, act_dim])
              + c.num_q * _dense([obs_dim + act_dim, *c.critic_hidden, 1]))
    nets = params * 4 * 8  # weights, target / anchor copies, gradients, two Adam moments
    rows = max(u.batch_size * max(p.components, p.target_components, 1), p.meanflow_batch, cfg.eval.best_of_n,
               cfg.monitor.probe_states * cfg.monitor.probe_samples)
    batches = rows * sum(widths) * 4 * 4  # float32 activations of every layer, with gradients and temporaries
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return  # not Linux: no check
    parts = {"replay buffer": buffer, "networks": nets, "update batches": batches}
    if sum(parts.values()) > avail:
        big = max(parts, key=parts.get)
        hint = {"replay buffer": "lower --buffer-size", "networks": "use smaller --hidden/--critic-hidden widths",
                "update batches": "lower --batch-size, --components, the network widths or the probe sizes"}[big]
        raise ConfigError(f"this run needs about {sum(parts.values()) / 2**30:.3g} GiB ({big}: "
                          f"{parts[big] / 2**30:.3g} GiB) but only {avail / 2**30:.3g} GiB of memory is available; {hint}")


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag checked once per step (graceful stop)."""

    def __init__(self):
        self.stop = False
        self.signum: Optional[int] = None  # the first signal received
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.stop = True
        self.signum = signum if self.signum is None else self.signum

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def recovery_lr_factor(cfg: TrainConfig, recoveries: int) -> float:
    """The learning rates after ``recoveries`` non-finite recoveries, as a fraction of the configured ones."""
    return max(cfg.monitor.recovery_lr_factor ** recoveries, MIN_RECOVERY_LR_FRACTION)


def train(cfg: TrainConfig, callback: Optional[Callable[[int, dict], None]] = None) -> TrainResult:
    """Train according to ``cfg``; ``callback(step, row)`` receives every metrics row."""
    with contextlib.ExitStack() as closing:  # the logger and both envs are closed however training ends
        return _train(cfg, callback, closing)


def _train(cfg: TrainConfig, callback: Optional[Callable[[int, dict], None]],
           closing: contextlib.ExitStack) -> TrainResult:
    cfg = cfg.resolved()
    torch.set_num_threads(cfg.threads)
    env = make_env(cfg.env.env, seed=cfg.seed, max_episode_steps=cfg.env.max_episode_steps)
    closing.callback(env.close)
    eval_env = make_env(cfg.env.env, seed=cfg.seed + 10_000, max_episode_steps=cfg.env.max_episode_steps)
    closing.callback(eval_env.close)
    run_dir = prepare_run_dir(cfg, closing)
    obs_dim, act_dim = env_dims(env)
    base_space = env.unwrapped.action_space
    meta = {"env_id": cfg.env.env, "obs_dim": obs_dim, "act_dim": act_dim,
            "action_low": np.asarray(base_space.low, dtype=np.float64).tolist(),
            "action_high": np.asarray(base_space.high, dtype=np.float64).tolist(),
            "policy_kind": cfg.policy_kind}

    capacity = min(cfg.buffer.buffer_size, max(cfg.total_steps, 1))
    _check_memory(cfg, capacity, obs_dim, act_dim)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    learner = Learner(cfg, obs_dim, act_dim)
    meta["policy_kwargs"] = learner.policy.init_kwargs()
    meta["critic_kwargs"] = learner.critic.init_kwargs()
    buffer = ReplayBuffer(obs_dim, act_dim, capacity, seed=cfg.seed)
    probe = HealthProbe(cfg.monitor, learner.policy) if cfg.monitor.alarms and cfg.monitor.probe_every else None

    start_step = 0
    recoveries = 0
    damaged: list[str] = []
    ckpt = latest_checkpoint(run_dir, damaged) if cfg.resume else None
    if damaged and ckpt is None:  # starting again from step 0 would cut the run's logs: the user decides
        raise CheckpointError(f"cannot resume: no checkpoint in {run_dir / 'checkpoints'} loads ({len(damaged)} "
                              f"damaged; the newest: {damaged[0]}); restore an intact copy, or move the "
                              "checkpoints folder away to start again from step 0")
    if ckpt is not None:
        if cfg.total_steps < int(ckpt["step"]):
            raise ConfigError(f"--total-steps {cfg.total_steps} is below the step of the checkpoint to resume "
                              f"({ckpt['step']}); pass --total-steps >= {ckpt['step']}")
        if ckpt.get("buffer_file"):
            buffer_file = run_dir / "checkpoints" / Path(str(ckpt["buffer_file"])).name
            newer = f" (the newer ones are damaged: {damaged[0]})" if damaged else ""
            if not buffer_file.exists():  # only the newest checkpoint keeps its buffer
                raise CheckpointError(f"cannot resume exactly from {ckpt['path']}{newer}: its replay buffer "
                                      f"{buffer_file.name} is not on disk; restore the newest checkpoint from a copy")
            try:
                buf_state = safe_load(buffer_file)
            except CheckpointError as exc:
                raise CheckpointError(f"cannot resume exactly from {ckpt['path']}{newer}: its replay buffer is "
                                      f"damaged ({exc})") from None
        try:  # a checkpoint that loads safely may still not fit this run (edited or copied from another one)
            learner.load_state_dict(ckpt["learner"])
            if ckpt.get("buffer_file"):
                buffer.load_state_dict(buf_state)
            torch.set_rng_state(ckpt["rng"]["torch"])
            rng.bit_generator.state = ckpt["rng"]["numpy"]
            recoveries = max(0, int(ckpt.get("recoveries", 0)))  # older checkpoints: none counted
            if probe is not None and ckpt.get("probe") is not None:
                probe.load_state_dict(ckpt["probe"])
        except Exception as exc:  # noqa: BLE001 - still reading the user's file: any failure is one line
            raise CheckpointError(f"{ckpt['path']} does not fit this run ({describe(exc)}); "
                                  "cannot resume from it") from None
        start_step = int(ckpt["step"])
    atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")

    logger = MetricsLogger(run_dir, cfg.total_steps, start_step, cfg.log.tensorboard, cfg.log.progress, callback)
    closing.callback(logger.close)
    logger.message(f"smfp: {cfg.algo} on {cfg.env.env} seed {cfg.seed} -> {run_dir} "
                   f"(replay buffer {buffer.capacity} transitions, {buffer.nbytes / 2**20:.1f} MiB allocated"
                   + (f"; resumed at step {start_step}" if start_step else "")
                   + (f"; skipped {len(damaged)} damaged newer checkpoint(s): {damaged[0]}" if damaged else "")
                   + ("; --resume found no checkpoint, starting from step 0" if cfg.resume and ckpt is None else "")
                   + ")")

    kl_reference, kl_from_step = kl_watch(cfg.update, act_dim)
    alarms = AlarmMonitor(cfg.monitor, run_dir, learner.target_entropy, kl_reference, learner.use_md,
                          emit=logger.message, start_step=start_step,
                          kl_from_step=kl_from_step, probing=probe is not None) if cfg.monitor.alarms else None

    agent = Agent(learner.policy, learner.critic, cfg.env.env, np.asarray(meta["action_low"]),
                  np.asarray(meta["action_high"]), cfg.eval.best_of_n)

    def run_eval(step: int) -> dict:
        """The configured mode, and ``sample`` beside it (like for like across algorithms: one stochastic pass)."""
        result = evaluate(agent, cfg.eval.eval_episodes, cfg.eval.eval_mode, seed=cfg.seed + 10_000, env=eval_env)
        row = {K.EVAL_RETURN_MEAN: result["return_mean"], K.EVAL_RETURN_STD: result["return_std"]}
        if result["mode"] != "sample":
            sampled = evaluate(agent, cfg.eval.eval_episodes, "sample", seed=cfg.seed + 10_000, env=eval_env)
            result["return_mean_sample"], result["return_std_sample"] = sampled["return_mean"], sampled["return_std"]
            row.update({K.EVAL_RETURN_MEAN_SAMPLE: sampled["return_mean"], K.EVAL_RETURN_STD_SAMPLE: sampled["return_std"]})
        logger.log(step, row)
        logger.progress(step, eval_return=result["return_mean"])
        return result

    def checkpoint(step: int) -> None:
        if not learner.all_finite():
            logger.message(f"smfp: NOT writing the checkpoint at step {step}: the learner holds non-finite values")
            return
        rng_state = {"torch": torch.get_rng_state(), "numpy": rng.bit_generator.state}
        extra = {"recoveries": recoveries, **({"probe": probe.state_dict()} if probe is not None else {})}
        save_checkpoint(run_dir, step, cfg.to_dict(), meta, learner.state_dict(), rng_state,
                        buffer.state_dict() if cfg.buffer.save_buffer else None, cfg.checkpoint.keep_checkpoints,
                        extra)

    def recover(step: int) -> None:
        """After too many non-finite updates in a row: reload the last good checkpoint and set the lr to
        the configured one x factor^recoveries (the checkpoint's own lr may already be lowered)."""
        nonlocal recoveries
        good = latest_checkpoint(run_dir)
        if good is None:
            raise TrainingDiverged(f"training diverged at step {step} ({learner.consecutive_nonfinite} non-finite "
                                   "updates in a row) before any checkpoint was written; lower the learning "
                                   "rates or use --grad-clip")
        skipped = learner.skipped_updates
        learner.load_state_dict(good["learner"])
        learner.skipped_updates = skipped
        recoveries += 1
        factor = recovery_lr_factor(cfg, recoveries)
        learner.set_learning_rate_factor(factor)
        logger.message(f"smfp: {cfg.monitor.max_nonfinite} non-finite updates in a row at step {step}: restored the "
                       f"checkpoint of step {good['step']} and set the learning rates to {factor:g} x the configured "
                       f"ones (recovery {recoveries})")
        logger.log(step, {K.RECOVERIES: 1.0, K.SKIPPED_UPDATES: float(skipped)})

    obs, _ = env.reset(seed=cfg.seed + start_step)
    recent_returns: list[float] = []
    recent_lengths: list[int] = []
    final_eval = None
    step = start_step
    last_time, last_step = time.perf_counter(), start_step
    update_every = cfg.update.updates_per_step
    stopped = False
    with _StopFlag() as flag:
        while step < cfg.total_steps:
            if step < cfg.update.learning_starts:
                action = rng.uniform(-1.0, 1.0, act_dim).astype(np.float32)
            else:
                with torch.inference_mode():
                    action = learner.policy.act(torch.from_numpy(obs).unsqueeze(0), "sample")[0].numpy()
                if not np.isfinite(action).all():  # not the env's fault: say so before the env sees it
                    raise TrainingDiverged(f"the policy produced a non-finite action at step {step + 1}; lower "
                                           "the learning rates or use --grad-clip")
            next_obs, reward, terminated, truncated, info = env.step(action)
            buffer.add(obs, action, reward, next_obs, terminated)
            obs = next_obs
            if terminated or truncated:
                recent_returns.append(float(info["episode"]["r"]))
                recent_lengths.append(int(info["episode"]["l"]))
                obs, _ = env.reset()
            step += 1

            metrics = {}
            if step > cfg.update.learning_starts:
                log_now = step % cfg.log.log_every == 0
                for i in range(update_every):
                    metrics = learner.update(buffer.sample(cfg.update.batch_size),
                                             with_metrics=log_now and i == update_every - 1)
                if learner.consecutive_nonfinite >= cfg.monitor.max_nonfinite:
                    recover(step)

            if step % cfg.log.log_every == 0:
                now = time.perf_counter()
                row = dict(metrics)
                row[K.SPS] = (step - last_step) / max(now - last_time, 1e-9)
                last_time, last_step = now, step
                row[K.UPDATES] = learner.updates
                if recent_returns:
                    row[K.EPISODE_RETURN] = float(np.mean(recent_returns))
                    row[K.EPISODE_LENGTH] = float(np.mean(recent_lengths))
                if K.ALPHA not in row:
                    row[K.ALPHA] = learner.alpha
                if probe is not None and step > cfg.update.learning_starts:
                    if step - probe.last_step >= cfg.monitor.probe_every or probe.last_step < 0:
                        row.update(probe.measure(step, buffer))
                row = logger.log(step, row)
                if alarms is not None:
                    alarms.observe(step, row)
                logger.progress(step, sps=row[K.SPS],
                                **({"ret": row[K.EPISODE_RETURN]} if recent_returns else {}))
                recent_returns, recent_lengths = recent_returns[-1:], recent_lengths[-1:]
            elif logger.bar is not None and step % 100 == 0:
                logger.progress(step)

            last = step == cfg.total_steps
            if cfg.eval.eval_every and step % cfg.eval.eval_every == 0 or last:
                final_eval = run_eval(step)
            if (cfg.checkpoint.checkpoint_every and step % cfg.checkpoint.checkpoint_every == 0) or last:
                checkpoint(step)
            if flag.stop and not last:
                logger.message(f"smfp: stop requested; writing a checkpoint at step {step} and exiting")
                checkpoint(step)
                stopped = True
                break
    if alarms is not None:
        logger.message(f"smfp: alarms: {alarms.summary()}")
    return TrainResult(run_dir, step, final_eval, stopped, flag.signum if stopped else None)


__all__ = ["TrainResult", "train", "prepare_run_dir"]
