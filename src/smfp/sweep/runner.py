"""Run a sweep grid on Ray: one task per run, resumable, with progress and ``sweep.json``.

Each task calls the normal entry point ``smfp.training.loop.train`` with ``resume=True`` in its own
run dir, with ``threads`` = the CPUs Ray granted it. Resumability comes from the checkpoints:

- a run whose latest checkpoint is at ``total_steps`` is finished and is not submitted again;
- a run with an earlier checkpoint continues from it (same config, or Ray's retry);
- a worker killed mid-run (OOM, node lost, ``kill -9``) is a system failure that Ray retries
  (``max_retries``); the retry resumes from the last checkpoint, so at most
  ``--checkpoint-every`` steps are redone. A worker stopped by SIGTERM/SIGINT writes a
  checkpoint first (the training loop's graceful stop) and the task is retried the same way.
- SIGTERM/SIGINT to the sweep itself stops the whole sweep gracefully: every task is cancelled
  without force, which Ray delivers to a running task as SIGINT, so each running run writes a
  checkpoint at the step it reached and returns (a cancelled task is not retried); queued runs
  never start. The sweep waits for them (at most ``STOP_GRACE_S``; a second signal stops at once,
  losing at most ``--checkpoint-every`` steps per run) and records them as ``interrupted``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Optional

from smfp.storage.rundir import RunDir
from smfp.sweep.grid import (ATTEMPTS_FILE, LOG_FILE, PROGRESS_FILE, RunSpec, SweepError, SweepRecord,
                             read_attempts, read_progress, run_state)

LOCAL_OBJECT_STORE_BYTES = 100 * 2**20  # tasks exchange only small dicts; keep shared memory small
STOP_GRACE_S = 300.0  # after SIGTERM/SIGINT: how long running runs get to write their checkpoints


class RunInterrupted(RuntimeError):
    """The training loop stopped before ``total_steps`` (SIGTERM/SIGINT); Ray retries the task."""


@contextlib.contextmanager
def _redirect_output(path: Path):
    """Send stdout/stderr to ``path`` at both levels (Python objects and fds 1, 2), then restore them."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            log.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def train_task(config: dict, sweep_id: str, train_fn: Optional[Callable] = None) -> dict:
    """Body of one Ray task (also callable directly): train one run with resume semantics.

    ``train_fn(cfg, callback=...)``: the trainer (default ``smfp.training.loop.train``)."""
    from smfp.config import TrainConfig
    from smfp.provenance import git_commit
    from smfp.storage.atomic import atomic_write_text
    from smfp.storage.checkpoint import list_checkpoints
    from smfp.training.loop import train

    cfg = TrainConfig.from_dict(config)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpts = list_checkpoints(run_dir)
    start_step = ckpts[-1][0] if ckpts else 0
    if not ckpts:
        # An attempt that died before its first checkpoint restarts from scratch: drop its logs,
        # otherwise the new attempt would append to them.
        for path in (RunDir(run_dir).metrics, RunDir(run_dir).alerts):
            path.unlink(missing_ok=True)
        shutil.rmtree(RunDir(run_dir).tensorboard, ignore_errors=True)
    host, pid = socket.gethostname(), os.getpid()
    with open(run_dir / ATTEMPTS_FILE, "a") as f:  # commit: the code this attempt runs (smfp aggregate --csv)
        f.write(json.dumps({"sweep": sweep_id, "time": time.time(), "host": host, "pid": pid,
                            "start_step": start_step, "commit": git_commit()}) + "\n")

    def heartbeat(step: int, row: dict) -> None:
        atomic_write_text(run_dir / PROGRESS_FILE, json.dumps(
            {"sweep": sweep_id, "step": int(step), "time": time.time(), "host": host, "pid": pid}))

    heartbeat(start_step, {})
    with _redirect_output(run_dir / LOG_FILE):
        result = (train_fn or train)(cfg, callback=heartbeat)
    if result.step < cfg.total_steps:
        raise RunInterrupted(f"stopped at step {result.step} of {cfg.total_steps}")
    heartbeat(result.step, {})
    final = result.final_eval or {}
    return {"step": result.step, "final_eval": final.get("return_mean"), "host": host}


def _fmt_steps(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


def _fmt_duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _one_line(exc: BaseException) -> str:
    """A short message for a failed task: the original exception's last line."""
    cause = getattr(exc, "cause", None)
    text = f"{type(cause).__name__}: {cause}" if cause is not None else f"{type(exc).__name__}: {exc}"
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]


@dataclasses.dataclass
class SweepResult:
    out: Path
    statuses: dict  # run name -> done | skipped | failed | interrupted
    errors: dict  # run name -> message
    elapsed: float
    stop_signal: Optional[int] = None  # SIGTERM/SIGINT that stopped the sweep before every run finished
    stopped_at: dict = dataclasses.field(default_factory=dict)  # interrupted run name -> its checkpoint step

    def count(self, status: str) -> int:
        return sum(1 for s in self.statuses.values() if s == status)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a HOST:PORT nobody listens on (ray.init would retry for minutes)."""
    host, sep, port = address.rpartition(":")
    if address == "auto" or "://" in address or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise SweepError(f"cannot reach a Ray cluster at {address} ({exc.strerror or type(exc).__name__}); "
                         "start one with `ray start --head` or check --address") from None


def connect_ray(address: Optional[str], num_cpus: Optional[int]) -> bool:
    """Start a light local Ray instance or join ``address``; True if this call started/joined it."""
    try:
        import ray
    except ImportError:
        raise SweepError("smfp sweep needs Ray: pip install 'smfp[sweep]' (or pip install 'ray>=2.9')") from None
    if ray.is_initialized():
        return False
    common = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        if address:
            if num_cpus is not None:
                raise SweepError("--num-cpus sizes a local Ray instance; with --address the cluster's CPUs are used")
            common.pop("include_dashboard")
            _check_reachable(address)
            ray.init(address=address, **common)
        else:
            # address="local": a private instance even if `ray start` or RAY_ADDRESS points elsewhere
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1,
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                     **common)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        if isinstance(exc, SweepError):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise SweepError(f"cannot {'join Ray at ' + address if address else 'start a local Ray instance'}: "
                         f"{first[:200]}") from None
    return True


def run_sweep(specs: list[RunSpec], out: Path, grid: dict, cpus_per_run: int = 1, max_retries: int = 3,
              address: Optional[str] = None, num_cpus: Optional[int] = None, progress_every: float = 30.0,
              emit: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> SweepResult:
    """Submit every unfinished run of ``specs`` as a Ray task and wait for all of them.

    Nothing is written and no line is emitted before the run dirs are checked and Ray is reached,
    so a mistake there is a single error.
    """
    out = Path(out).resolve()
    states = {spec.name: run_state(spec) for spec in specs}  # raises if a run dir holds another run
    record = SweepRecord.open(out)
    todo = [spec for spec in specs if not states[spec.name].finished]
    started_ray = connect_ray(address, num_cpus) if todo else False
    if todo:
        import ray
    try:
        if todo:
            total_cpus = int(ray.cluster_resources().get("CPU", 0))
            if total_cpus < cpus_per_run:
                raise SweepError(f"--cpus-per-run {cpus_per_run} exceeds the {total_cpus} CPUs Ray has; "
                                 "no run could ever start")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SweepError(f"cannot create --out {out}: {exc.strerror or exc}") from None
    except BaseException:
        if started_ray:
            ray.shutdown()
        raise
    sweep_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    record.start(sweep_id, grid)
    statuses: dict[str, str] = {}
    errors: dict[str, str] = {}
    for spec in specs:
        if states[spec.name].finished:
            statuses[spec.name] = "skipped"
            record.set_run(spec, status="done", step=states[spec.name].step, sweep=sweep_id, reused=True)
        else:
            statuses[spec.name] = "queued"
            record.set_run(spec, status="queued", step=states[spec.name].step, sweep=sweep_id, reused=False,
                           error=None)
    record.save()
    emit(f"smfp sweep: {len(specs)} runs in {out} ({len(specs) - len(todo)} already finished, "
         f"{len(todo)} to run)")
    t_start = time.time()
    if not todo:
        return SweepResult(out, statuses, errors, 0.0)

    from smfp.training.run import StopSignals

    stop = StopSignals()
    stop_deadline = None  # set when the first signal has cancelled the tasks
    stopped_at: dict[str, int] = {}
    try:
        stop.__enter__()
        remote = ray.remote(train_task).options(num_cpus=cpus_per_run, max_retries=max_retries,
                                                retry_exceptions=[RunInterrupted], name="smfp-train")
        pending = {remote.remote(spec.config.to_dict(), sweep_id): spec for spec in todo}
        emit(f"smfp sweep: {len(todo)} tasks submitted to Ray ({total_cpus} CPUs, {cpus_per_run} per run, "
             f"up to {max(1, total_cpus // cpus_per_run)} at once)")
        start_steps = {spec.name: states[spec.name].step for spec in todo}
        t0 = time.time()  # throughput and ETA count from submission, not from Ray's start-up
        last_emit = -1e9
        last_line = ""
        while True:
            if stop.signum is not None and stop_deadline is None:
                emit(f"smfp sweep: {signal.Signals(stop.signum).name}: asking {len(pending)} unfinished run(s) to "
                     "checkpoint and stop (a second signal stops at once)")
                for ref in pending:
                    ray.cancel(ref, force=False)  # a running task gets SIGINT: the loop checkpoints and returns
                stop_deadline = time.time() + STOP_GRACE_S
            if stop_deadline is not None and (stop.count > 1 or time.time() > stop_deadline):
                break
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=min(1.0, progress_every)) \
                if pending else ([], [])
            for ref in ready:
                spec = pending.pop(ref)
                attempts = len(read_attempts(spec.run_dir, sweep_id))
                try:
                    res = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - any task failure is recorded, the others go on
                    if stop_deadline is not None and _stopped_by_cancel(exc):
                        statuses[spec.name] = "interrupted"
                        record.set_run(spec, status="interrupted", attempts=attempts, step=run_state(spec).step)
                        continue
                    statuses[spec.name] = "failed"
                    errors[spec.name] = _one_line(exc)
                    record.set_run(spec, status="failed", error=errors[spec.name], attempts=attempts,
                                   step=run_state(spec).step)
                    emit(f"smfp sweep: {spec.name} FAILED after {attempts} attempt(s): {errors[spec.name]} "
                         f"(log: {spec.run_dir / LOG_FILE})")
                else:
                    statuses[spec.name] = "done"
                    record.set_run(spec, status="done", step=res["step"], final_eval=res["final_eval"],
                                   attempts=attempts, host=res["host"], error=None)
            now = time.time()
            if ready or not pending or now - last_emit >= progress_every:
                line = _progress_line(specs, todo, statuses, start_steps, sweep_id, now - t0, record)
                record.save()
                if line != last_line or now - last_emit >= progress_every:
                    emit(line)
                    last_line, last_emit = line, now
            if not pending:
                break
        if stop_deadline is not None:
            stopped_at = _mark_interrupted(todo, statuses, record)
    except KeyboardInterrupt:
        _mark_interrupted(todo, statuses, record)
        raise
    finally:
        stop.__exit__(None, None, None)
        if started_ray:
            ray.shutdown()
    return SweepResult(out, statuses, errors, time.time() - t_start,
                       stop.signum if stop_deadline is not None else None, stopped_at)


def _stopped_by_cancel(exc: BaseException) -> bool:
    """A task that ended because the sweep cancelled it: before it started (TaskCancelledError) or after its
    graceful stop (RunInterrupted, raised by ``train_task`` when the loop stopped early)."""
    import ray.exceptions

    return isinstance(exc, (ray.exceptions.TaskCancelledError, RunInterrupted)) or \
        isinstance(getattr(exc, "cause", None), RunInterrupted)


def _mark_interrupted(todo, statuses, record) -> dict[str, int]:
    """Record every unfinished run as interrupted; returns run name -> the step of its last checkpoint."""
    steps = {}
    for spec in todo:
        if statuses[spec.name] in ("queued", "running", "interrupted"):
            statuses[spec.name] = "interrupted"
            steps[spec.name] = run_state(spec).step
            record.set_run(spec, status="interrupted", step=steps[spec.name])
    record.save()
    return steps


def _progress_line(specs, todo, statuses, start_steps, sweep_id, elapsed, record) -> str:
    """Refresh running/queued from the heartbeats and return the progress line with an ETA."""
    done_steps = remaining = 0.0
    total = sum(s.total_steps for s in specs)
    finished_steps = 0.0
    for spec in todo:
        status = statuses[spec.name]
        beat = read_progress(spec.run_dir)
        step = beat["step"] if beat and beat.get("sweep") == sweep_id else start_steps[spec.name]
        if status in ("queued", "running"):
            status = "running" if beat and beat.get("sweep") == sweep_id else "queued"
            statuses[spec.name] = status
            record.set_run(spec, status=status, step=step)
        if status == "done":
            step = spec.total_steps
        done_steps += max(0, step - start_steps[spec.name])
        if status in ("queued", "running"):
            remaining += spec.total_steps - step
        finished_steps += step
    for spec in specs:
        if statuses[spec.name] == "skipped":
            finished_steps += spec.total_steps
    rate = done_steps / elapsed if elapsed > 0 else 0.0
    eta = _fmt_duration(remaining / rate) if rate > 0 and remaining > 0 else ("0s" if remaining == 0 else "?")
    n = {k: sum(1 for s in statuses.values() if s == k) for k in ("done", "skipped", "running", "failed", "queued")}
    return (f"smfp sweep: {n['done'] + n['skipped']}/{len(specs)} done ({n['skipped']} skipped), "
            f"{n['running']} running, {n['failed']} failed, {n['queued']} queued | "
            f"{_fmt_steps(finished_steps)}/{_fmt_steps(total)} steps, {rate:.0f} steps/s | "
            f"elapsed {_fmt_duration(elapsed)}, ETA {eta}")


__all__ = ["run_sweep", "train_task", "connect_ray", "SweepResult", "RunInterrupted"]
