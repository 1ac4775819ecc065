"""Opening a run: its directory (locked, checked against a saved config), the parts that train (envs, learner,
replay buffer, collector), the state of a resumed run, and the logger with its subscribers.

``open_run(cfg)`` is a context manager: whatever it opened is closed when the block ends, however it ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from smfp.agent import Agent
from smfp.buffer import ReplayBuffer
from smfp.config import ConfigError, TrainConfig, changed_fields
from smfp.envs import env_dims, make_env
from smfp.monitor.alarms import AlarmMonitor, kl_watch
from smfp.monitor.health import HealthProbe
from smfp.monitor.logger import MetricsLogger, TensorBoardSink
from smfp.provenance import SAME_NUMBERS, git_commit, machine, machine_changes
from smfp.storage.atomic import atomic_write_text
from smfp.storage.checkpoint import CheckpointError, latest_checkpoint, safe_load, save_checkpoint
from smfp.storage.lock import lock_run_dir
from smfp.storage.rundir import RunDir, resolve_for_run_dir
from smfp.storage.userfiles import UserFileError, describe, read_rows
from smfp.training.collect import Collector
from smfp.training.recovery import Recovery
from smfp.update import Learner


@dataclass
class Run:
    """Everything a training run holds. ``save_checkpoint`` is the writer the loop calls (a seam for tests)."""
    cfg: TrainConfig
    dir: RunDir
    meta: dict
    env: object
    eval_env: object
    learner: Learner
    buffer: ReplayBuffer
    rng: np.random.Generator
    collector: Collector
    agent: Agent
    logger: MetricsLogger
    recovery: Recovery
    probe: Optional[HealthProbe] = None
    alarms: Optional[AlarmMonitor] = None
    start_step: int = 0
    step: int = 0
    save_checkpoint: Callable = field(default=save_checkpoint)


@contextlib.contextmanager
def open_run(cfg: TrainConfig) -> Iterator[Run]:
    with contextlib.ExitStack() as closing:
        yield _open(resolve_for_run_dir(cfg), closing)


SOFT_BACKUP_MAX_DIM = 4  # past this the uniform candidates of the soft-optimal backup cover the box too thinly


def _open(cfg: TrainConfig, closing: contextlib.ExitStack) -> Run:
    torch.set_num_threads(cfg.threads)
    env = closing.enter_context(contextlib.closing(
        make_env(cfg.env.env, seed=cfg.seed, max_episode_steps=cfg.env.max_episode_steps)))
    eval_env = closing.enter_context(contextlib.closing(
        make_env(cfg.env.env, seed=cfg.seed + 10_000, max_episode_steps=cfg.env.max_episode_steps)))
    run = build_parts(cfg, prepare_run_dir(cfg, closing), env, eval_env)
    damaged: list[str] = []
    ckpt = latest_checkpoint(run.dir.path, damaged) if cfg.resume else None
    if damaged and ckpt is None:  # starting again from step 0 would cut the run's logs: the user decides
        raise CheckpointError(f"cannot resume: no checkpoint in {run.dir.checkpoints} loads ({len(damaged)} "
                              f"damaged; the newest: {damaged[0]}); restore an intact copy, or move the "
                              "checkpoints folder away to start again from step 0")
    recoveries = resume_from(run, ckpt, damaged) if ckpt is not None else 0
    atomic_write_text(run.dir.config, json.dumps(cfg.to_dict(), indent=2) + "\n")
    attach_logging(run, closing, recoveries)
    moved = record_start(run)
    run.logger.message(f"smfp: {cfg.algo} on {cfg.env.env} seed {cfg.seed} -> {run.dir.path} "
                       f"(replay buffer {run.buffer.capacity} transitions, {run.buffer.nbytes / 2**20:.1f} MiB "
                       "allocated" + (f"; resumed at step {run.start_step}" if run.start_step else "")
                       + (f"; skipped {len(damaged)} damaged newer checkpoint(s): {damaged[0]}" if damaged else "")
                       + ("; --resume found no checkpoint, starting from step 0" if cfg.resume and ckpt is None
                          else "") + ")")
    if moved:
        run.logger.message(f"smfp: note: resumed on another CPU, library version, thread count or precision "
                           f"({'; '.join(moved)}): the "
                           "run goes on correctly, but its numbers will not repeat an uninterrupted run's "
                           f"bit-for-bit (docs/reliability.md; each start is in {RunDir.STARTS})")
    act_dim = run.learner.act_dim
    if cfg.update.value_backup == "soft-optimal" and act_dim > SOFT_BACKUP_MAX_DIM:
        run.logger.message(f"smfp: warning: the soft-optimal backup (--multimodal) estimates an integral over a "
                           f"{act_dim}-D action box from {cfg.update.backup_uniform_samples} uniform and "
                           f"{cfg.update.backup_policy_samples} policy candidates: above {SOFT_BACKUP_MAX_DIM}-D "
                           "the uniform ones rarely land near a peak and the estimate is noisy (docs/method.md)")
    run.collector.reset(seed=cfg.seed + run.start_step)
    return run


def build_parts(cfg: TrainConfig, run_dir: RunDir, env, eval_env) -> Run:
    """Seeded networks, optimisers, replay buffer, collector and health probe of a fresh run."""
    obs_dim, act_dim = env_dims(env)
    capacity = min(cfg.buffer.buffer_size, max(cfg.total_steps, 1))
    check_memory(cfg, capacity, obs_dim, act_dim)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    learner = Learner(cfg, obs_dim, act_dim)
    buffer = ReplayBuffer(obs_dim, act_dim, capacity, seed=cfg.seed)
    space = env.unwrapped.action_space
    meta = {"env_id": cfg.env.env, "obs_dim": obs_dim, "act_dim": act_dim,
            "action_low": np.asarray(space.low, dtype=np.float64).tolist(),
            "action_high": np.asarray(space.high, dtype=np.float64).tolist(),
            "policy_kind": cfg.policy_kind, "policy_kwargs": learner.policy.init_kwargs(),
            "critic_kwargs": learner.critic.init_kwargs()}
    probe = HealthProbe(cfg.monitor, learner.policy) if cfg.monitor.alarms and cfg.monitor.probe_every else None
    collector = Collector(env, buffer, learner.policy, rng, cfg.update.learning_starts)
    agent = Agent(learner.policy, learner.critic, cfg.env.env, np.asarray(meta["action_low"]),
                  np.asarray(meta["action_high"]), cfg.eval.best_of_n)
    return Run(cfg, run_dir, meta, env, eval_env, learner, buffer, rng, collector, agent, logger=None,
               recovery=None, probe=probe)


def attach_logging(run: Run, closing: contextlib.ExitStack, recoveries: int) -> None:
    """The metrics logger (cut back to the resumed step) and its subscribers: TensorBoard and the alarms; the
    non-finite recovery, which logs through it."""
    cfg = run.cfg
    purge = run.start_step if run.start_step > 0 or run.dir.metrics.exists() else None
    run.logger = logger = closing.enter_context(contextlib.closing(
        MetricsLogger(run.dir.metrics, cfg.total_steps, run.start_step, cfg.log.progress)))
    if cfg.log.tensorboard:
        logger.subscribe(closing.enter_context(contextlib.closing(TensorBoardSink(run.dir.tensorboard, purge))))
    if cfg.monitor.alarms:
        kl_reference, kl_from_step = kl_watch(cfg.update, run.learner.act_dim)
        run.alarms = AlarmMonitor(cfg.monitor, run.dir, run.learner.target_entropy, kl_reference, run.learner.use_md,
                                  emit=logger.message, start_step=run.start_step, kl_from_step=kl_from_step,
                                  probing=run.probe is not None)
        logger.subscribe(run.alarms.on_row)
    run.recovery = Recovery(cfg, run.dir, run.learner, logger.log, logger.message, recoveries)


def record_start(run: Run) -> list[str]:
    """Add this start to the run's ``starts.jsonl`` (a fresh start replaces the file): the step, the code and the
    machine. Returns what changed since the previous start that can change the numbers (empty on a fresh start).
    A record that cannot be read or written is a warning: it documents the run, the run does not need it."""
    now = {"step": run.start_step, "time": round(time.time(), 3), "commit": git_commit(),
           "threads": run.cfg.threads, "precision": run.cfg.update.precision, **machine()}
    try:
        earlier = read_rows(run.dir.starts) if run.start_step > 0 else []
        atomic_write_text(run.dir.starts, "".join(json.dumps(row) + "\n" for row in earlier + [now]))
    except (UserFileError, OSError) as exc:
        run.logger.message(f"smfp: warning: cannot record this start in {run.dir.starts} ({describe(exc)}); "
                           "the run goes on without it")
        return []
    return machine_changes(earlier[-1], now, SAME_NUMBERS + ("threads", "precision")) if earlier else []


def resume_from(run: Run, ckpt: dict, damaged: list[str]) -> int:
    """Load a checkpoint's state into the run (still reading the user's file: any failure is one line);
    returns its count of non-finite recoveries."""
    cfg = run.cfg
    if cfg.total_steps < int(ckpt["step"]):
        raise ConfigError(f"--total-steps {cfg.total_steps} is below the step of the checkpoint to resume "
                          f"({ckpt['step']}); pass --total-steps >= {ckpt['step']}")
    buf_state = None
    if ckpt.get("buffer_file"):
        buffer_file = run.dir.checkpoints / Path(str(ckpt["buffer_file"])).name
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
        run.learner.load_state_dict(ckpt["learner"])
        if buf_state is not None:
            run.buffer.load_state_dict(buf_state)
        torch.set_rng_state(ckpt["rng"]["torch"])
        run.rng.bit_generator.state = ckpt["rng"]["numpy"]
        if run.probe is not None and ckpt.get("probe") is not None:
            run.probe.load_state_dict(ckpt["probe"])
        if ckpt.get("episodes") is not None:  # older checkpoints: the interval's statistics start empty
            run.collector.load_state_dict(ckpt["episodes"])
        recoveries = max(0, int(ckpt.get("recoveries", 0)))  # older checkpoints: none counted
    except Exception as exc:  # noqa: BLE001 - still reading the user's file: any failure is one line
        raise CheckpointError(f"{ckpt['path']} does not fit this run ({describe(exc)}); "
                              "cannot resume from it") from None
    run.start_step = run.step = int(ckpt["step"])
    return recoveries


def prepare_run_dir(cfg: TrainConfig, closing: Optional[contextlib.ExitStack] = None) -> RunDir:
    """Create/check the run dir; refuse to mix two different runs in one folder. With ``closing``, also
    lock the run dir against a second writer (``smfp.storage.lock``) until ``closing`` closes."""
    run_dir = RunDir(cfg.run_dir)
    try:
        run_dir.path.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write_probe.{os.getpid()}"  # per process: two starting at once do not collide
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot write to run dir {run_dir.path}: {exc.strerror or exc}; choose another "
                          "--run-dir") from None
    if closing is not None:  # before anything is read: the holder may be rewriting it
        closing.callback(lock_run_dir(run_dir.path).release)
    if run_dir.config.exists() and not cfg.resume:
        raise ConfigError(f"run dir {run_dir.path} already holds a run; pass --resume to continue it "
                          "or choose another --run-dir")
    old = run_dir.read_flat_config("cannot resume this run; move it away or choose another --run-dir")
    if old is not None:
        diff = changed_fields(old, cfg)
        if diff:
            shown = ", ".join(diff[:8]) + (f" and {len(diff) - 8} more" if len(diff) > 8 else "")
            raise ConfigError(f"run dir {run_dir.path} holds a different run (differs in: {shown}); "
                              "use the same options to resume or choose another --run-dir")
    return run_dir


def _dense(sizes: list[int]) -> int:
    return sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))


def check_memory(cfg: TrainConfig, capacity: int, obs_dim: int, act_dim: int) -> None:
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


class StopSignals:
    """Turns SIGINT/SIGTERM into a flag the loop checks once per step (graceful stop); the first one wins."""

    def __init__(self):
        self.signum: Optional[int] = None
        self.count = 0  # signals received (a sweep driver stops at once on the second)
        self.previous = {}

    def __enter__(self) -> "StopSignals":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum if self.signum is None else self.signum
        self.count += 1

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


__all__ = ["Run", "StopSignals", "check_memory", "open_run", "prepare_run_dir", "resume_from"]
