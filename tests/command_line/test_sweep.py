"""``smfp sweep`` through a real local Ray instance: a tiny grid trains, a worker killed mid-run is
retried and resumes from its checkpoint, and a rerun skips finished runs and resumes a partial one.

One Ray instance is started for the whole module (start-up is the slow part); every ``smfp sweep``
runs as a real CLI subprocess joining it with ``--address``.

Two deadlines per sweep subprocess: on a loaded machine Ray can take minutes to start the worker
processes of a new job (each imports torch), which is not a hang, so a generous ``RAY_STARTUP_S``
runs until a worker has started training (its first heartbeat); from then on ``RUN_S`` bounds the
tiny runs themselves, so a sweep that hangs once its workers are up still fails within minutes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import ray

from conftest import (REPO, assert_one_line_error, load_weights_only, one_line_error_in_process, read_jsonl, run_cli,
                      smfp_command)
from smfp.cli.main import build_parser
from smfp.cli.args import build_dataclass
from smfp.config import TrainConfig
from smfp.sweep.grid import build_grid, parse_list, parse_seeds, read_attempts
from smfp.sweep.runner import run_sweep
from smfp.storage.checkpoint import list_checkpoints
from smfp.training.loop import train

pytestmark = pytest.mark.slow

TOTAL = 1500
TRAIN_FLAGS = ["--total-steps", str(TOTAL), "--hidden", "32", "32", "--critic-hidden", "32", "32",
               "--batch-size", "32", "--learning-starts", "500", "--eval-every", "500", "--eval-episodes", "1",
               "--checkpoint-every", "300", "--log-every", "100", "--no-tensorboard", "--no-progress"]
ENV = "Pendulum-v1"
RAY_STARTUP_S = 600.0  # until a (new) worker process is training
RUN_S = 150.0  # from then on, until the sweep exits


class Deadline:
    """``RAY_STARTUP_S`` until ``workers_up`` (once per start-up phase), then ``RUN_S``."""

    def __init__(self):
        self.phase = "Ray start-up"
        self.until = time.monotonic() + RAY_STARTUP_S

    def workers_up(self) -> None:
        if self.phase != "run":
            self.phase, self.until = "run", time.monotonic() + RUN_S

    def restart(self) -> None:
        """A new worker has to start (a retried task): start-up time again."""
        self.phase, self.until = "Ray start-up (retry)", time.monotonic() + RAY_STARTUP_S

    def left(self) -> float:
        return self.until - time.monotonic()

    def check(self, proc: subprocess.Popen) -> None:
        if self.left() <= 0:
            proc.kill()
            limit = RUN_S if self.phase == "run" else RAY_STARTUP_S
            raise AssertionError(f"smfp sweep timed out in its {self.phase} phase ({limit:.0f} s)")


def _beats(out: Path, since: float) -> dict[str, dict]:
    """Heartbeats written since ``since`` (wall clock), by run name."""
    found = {}
    for path in out.glob("*/sweep_progress.json"):
        try:
            beat = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(beat, dict) and beat.get("time", 0) >= since:
            found[path.parent.name] = beat
    return found


def _start_sweep(argv: list[str]) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    return subprocess.Popen([*smfp_command(), *argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait(proc: subprocess.Popen, seconds: float) -> tuple[str, str] | None:
    """(stdout, stderr) once ``proc`` has exited, None after ``seconds`` (its pipes keep being drained)."""
    try:
        return proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


def run_sweep_cli(argv: list[str], out: Path) -> subprocess.CompletedProcess:
    """``smfp sweep`` in a subprocess under the two deadlines."""
    since = time.time()
    proc = _start_sweep(argv)
    deadline = Deadline()
    try:
        while (done := _wait(proc, 0.2)) is None:
            if _beats(out, since):
                deadline.workers_up()
            deadline.check(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, *done)


def sweep_argv(out: Path, seeds: str, address: str) -> list[str]:
    return ["sweep", "--algos", "sac", "--envs", ENV, "--seeds", seeds, "--out", str(out), "--address", address,
            "--progress-every", "2", *TRAIN_FLAGS]


def specs_for(argv: list[str]):
    """The run specs the CLI builds for ``argv`` (same parser, same grid builder)."""
    args = build_parser().parse_args(argv)
    base = build_dataclass(TrainConfig, vars(args))
    return build_grid(parse_list(args.algos, "algos"), parse_list(args.envs, "envs"), parse_seeds(args.seeds),
                      Path(args.out), base, args.cpus_per_run)


def snapshot(run_dir: Path) -> dict:
    return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns,
                                          hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def assert_clean_metrics(run_dir: Path) -> None:
    """One training row per log interval and one eval row per eval step, in order, up to TOTAL."""
    rows = read_jsonl(run_dir / "metrics.jsonl")
    steps = [r["step"] for r in rows]
    assert steps == sorted(steps)
    assert [r["step"] for r in rows if "train/sps" in r] == list(range(100, TOTAL + 1, 100))
    assert [r["step"] for r in rows if "eval/return_mean" in r] == [500, 1000, 1500]


@pytest.fixture(scope="module")
def ray_address():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=100 * 2**20,
             logging_level=logging.WARNING)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def killed_sweep(ray_address, tmp_path_factory):
    """A 2-run sweep; the worker training seed 1 is SIGKILLed after its first checkpoints."""
    out = tmp_path_factory.mktemp("sweep")
    victim = f"sac-{ENV}-s1"
    since = time.time()
    proc = _start_sweep(sweep_argv(out, "0,1", ray_address))
    deadline = Deadline()
    killed = None
    try:
        while (done := _wait(proc, 0.05)) is None:
            beats = _beats(out, since)
            beat = beats.get(victim)
            if beats and killed is None or beat is not None and killed is not None and beat["pid"] != killed["pid"]:
                deadline.workers_up()  # a worker is training (after the kill: the retry)
            deadline.check(proc)
            if beat is None or killed is not None:
                continue
            ckpts = [s for s, _ in list_checkpoints(out / victim)]
            if beat["step"] >= TOTAL:
                break
            if ckpts and ckpts[-1] >= 300 and 600 <= beat["step"] < TOTAL - 200:
                os.kill(beat["pid"], signal.SIGKILL)
                killed = {"pid": beat["pid"], "step": beat["step"], "checkpoint": ckpts[-1]}
                deadline.restart()  # Ray starts a new worker for the retry
        while done is None:
            deadline.check(proc)
            done = _wait(proc, 0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
    stdout, stderr = done
    assert killed is not None, f"the run finished before it could be killed; stderr:\n{stderr}"
    return {"out": out, "rc": proc.returncode, "stdout": stdout, "stderr": stderr, "killed": killed}


def test_tiny_sweep_trains_every_run_through_ray(killed_sweep):
    out = killed_sweep["out"]
    assert killed_sweep["rc"] == 0, killed_sweep["stderr"]
    summary = json.loads(killed_sweep["stdout"].strip().splitlines()[-1])
    assert (summary["runs"], summary["done"], summary["failed"], summary["skipped"]) == (2, 2, 0, 0)
    record = json.loads((out / "sweep.json").read_text())
    assert record["grid"]["seeds"] == [0, 1] and record["grid"]["total_steps"] == TOTAL
    assert record["grid"]["train_options"]["hidden"] == [32, 32]
    for seed in (0, 1):
        name = f"sac-{ENV}-s{seed}"
        run_dir = out / name
        assert record["runs"][name]["status"] == "done" and record["runs"][name]["step"] == TOTAL
        assert isinstance(record["runs"][name]["final_eval"], float)
        ckpt = load_weights_only(run_dir / "checkpoints" / f"step_{TOTAL:010d}.pt")
        assert ckpt["step"] == TOTAL
        assert json.loads(ckpt["config"])["threads"] == 1  # torch threads = the 1 CPU Ray granted
        evals = [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "eval/return_mean" in r]
        assert evals == [500, 1000, 1500]
        assert "smfp: sac on Pendulum-v1" in (run_dir / "train.log").read_text()
    assert "2/2 done" in killed_sweep["stderr"] and "ETA" in killed_sweep["stderr"]


def test_killed_worker_is_retried_and_resumes_from_its_checkpoint(killed_sweep):
    out, killed = killed_sweep["out"], killed_sweep["killed"]
    run_dir = out / f"sac-{ENV}-s1"
    sweep_id = json.loads((out / "sweep.json").read_text())["invocations"][-1]["id"]
    attempts = read_attempts(run_dir, sweep_id)
    assert len(attempts) == 2, attempts
    assert attempts[0]["pid"] == killed["pid"] and attempts[0]["start_step"] == 0
    assert attempts[1]["pid"] != killed["pid"]
    # the retry resumed from the last checkpoint the killed worker wrote, not from scratch
    assert killed["checkpoint"] <= attempts[1]["start_step"] <= killed["step"] and attempts[1]["start_step"] > 0
    assert f"resumed at step {attempts[1]['start_step']}" in (run_dir / "train.log").read_text()
    assert_clean_metrics(run_dir)  # no rows duplicated by the killed attempt
    assert json.loads((out / "sweep.json").read_text())["runs"][f"sac-{ENV}-s1"]["attempts"] == 2
    # the other run was not disturbed
    assert len(read_attempts(out / f"sac-{ENV}-s0", sweep_id)) == 1


def test_rerun_skips_finished_runs_and_resumes_an_interrupted_one(killed_sweep, ray_address):
    out = killed_sweep["out"]
    argv = sweep_argv(out, "0,1,2", ray_address)
    # seed 2 was interrupted part-way (Ctrl-C at step 700: the loop checkpoints and stops),
    # trained with exactly the config the sweep builds for it
    spec = next(s for s in specs_for(argv) if s.seed == 2)

    def interrupt(step, row):
        if step == 700:
            os.kill(os.getpid(), signal.SIGINT)

    result = train(spec.config, callback=interrupt)
    assert result.stopped_early and result.step == 700
    before = {s: snapshot(out / f"sac-{ENV}-s{s}") for s in (0, 1)}

    proc = run_sweep_cli(argv, out)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (summary["runs"], summary["skipped"], summary["done"], summary["failed"]) == (3, 2, 1, 0)
    assert "3 runs in" in proc.stderr and "2 already finished, 1 to run" in proc.stderr
    for s in (0, 1):  # finished runs: not a byte, not a timestamp changed, no file added
        assert snapshot(out / f"sac-{ENV}-s{s}") == before[s]
    run_dir = out / f"sac-{ENV}-s2"
    record = json.loads((out / "sweep.json").read_text())
    sweep_id = record["invocations"][-1]["id"]
    assert [a["start_step"] for a in read_attempts(run_dir, sweep_id)] == [700]
    assert list_checkpoints(run_dir)[-1][0] == TOTAL
    assert_clean_metrics(run_dir)
    assert len(record["invocations"]) == 2
    assert record["runs"][f"sac-{ENV}-s0"]["reused"] is True and record["runs"][f"sac-{ENV}-s2"]["status"] == "done"


def test_aggregate_reads_the_real_sweep(killed_sweep, tmp_path):
    out = killed_sweep["out"]
    md = tmp_path / "agg.md"
    proc = run_cli("aggregate", str(out), "--out", str(md), "--reps", "2000", "--random-episodes", "2")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(md.with_suffix(".json").read_text())
    finals = res["per_task"][ENV]["sac"]["final"]
    assert len(finals) in (2, 3)  # 3 once the rerun test has run
    for seed, final in zip(res["per_task"][ENV]["sac"]["seeds"], finals):
        evals = [r["eval/return_mean"] for r in read_jsonl(out / f"sac-{ENV}-s{seed}" / "metrics.jsonl")
                 if "eval/return_mean" in r]
        assert final == pytest.approx(sum(evals[-3:]) / 3)
    assert md.with_name("agg_curves.png").stat().st_size > 5000
    assert f"| {ENV} | " in md.read_text()


def test_a_failing_run_is_recorded_and_the_others_still_finish(ray_address, tmp_path):
    """In-process API on the module's Ray instance: one run's task raises, the other completes."""
    argv = sweep_argv(tmp_path / "s", "0,1", ray_address)
    argv[argv.index("--total-steps") + 1] = "300"
    argv[argv.index("--learning-starts") + 1] = "100"
    specs = specs_for(argv)
    specs[1].config.env.env = "NoSuchTask-v0"  # validated grid, then broken: the task itself fails
    result = run_sweep(specs, tmp_path / "s", {"test": True}, progress_every=1.0, emit=lambda line: None)
    ok, bad = specs[0].name, specs[1].name
    assert result.statuses == {ok: "done", bad: "failed"}
    assert "EnvError" in result.errors[bad] and "NoSuchTask-v0" in result.errors[bad]
    record = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert record["runs"][bad]["status"] == "failed" and record["runs"][bad]["attempts"] == 1  # not retried
    assert record["runs"][ok]["status"] == "done" and list_checkpoints(specs[0].run_dir)[-1][0] == 300


def test_sweep_user_mistakes_are_one_line_before_ray_starts(killed_sweep, tmp_path, ray_address, capsys):
    proc = run_cli("sweep", "--algos", "sac,ppo", "--envs", ENV, "--out", str(tmp_path / "x"))
    assert_one_line_error(proc, "unknown algo 'ppo'")  # the real CLI process
    proc = run_cli("sweep", "--algos", "sac", "--envs", ENV, "--out", str(tmp_path / "x"), "--address", "127.0.0.1:1")
    assert_one_line_error(proc, "cannot reach a Ray cluster at 127.0.0.1:1")  # fast, not Ray's minutes of retries
    one_line_error_in_process(["sweep", "--envs", ENV, "--seeds", "0,x", "--out", str(tmp_path / "x")], capsys,
                              "--seeds expects integers")
    one_line_error_in_process(["sweep", "--algos", "sac", "--envs", f"{ENV},Hoper-v5", "--out", str(tmp_path / "x")],
                              capsys, "Hoper-v5")
    one_line_error_in_process(["sweep", "--algos", "sac", "--envs", ENV, "--out", str(tmp_path / "x"),
                               "--md-lambda", "1"], capsys, f"sac-{ENV}-s0", "mirror-descent")
    # same sweep dir, other network sizes: refused instead of mixing two runs in one folder
    argv = sweep_argv(killed_sweep["out"], "0", ray_address)
    argv[argv.index("--hidden") + 1] = "64"
    one_line_error_in_process(argv, capsys, "holds a different run", "policy.hidden")
    assert not (tmp_path / "x").exists()


def test_two_sweeps_sharing_a_folder_keep_each_others_records(tmp_path):
    from smfp.sweep.grid import SweepRecord

    out = tmp_path / "shared"
    out.mkdir()
    specs = build_grid(["sac"], ["Pendulum-v1"], [0, 1], out, TrainConfig(total_steps=300), 1)
    first, second = SweepRecord.open(out), SweepRecord.open(out)  # both opened before either saves
    first.start("sweep-a", {"seeds": [0]})
    first.set_run(specs[0], status="running", step=0)
    first.save()
    second.start("sweep-b", {"seeds": [1]})
    second.set_run(specs[1], status="running", step=0)
    second.save()
    first.set_run(specs[0], status="done", step=300)
    first.save()
    record = json.loads((out / "sweep.json").read_text())
    assert record["runs"][specs[0].name]["status"] == "done" and record["runs"][specs[1].name]["status"] == "running"
    assert [inv["id"] for inv in record["invocations"]] == ["sweep-a", "sweep-b"]


def test_sigterm_to_the_sweep_checkpoints_its_running_runs_and_records_them(ray_address, tmp_path):
    """SIGTERM to ``smfp sweep`` (not to its workers): each running run writes a checkpoint at the step it
    reached, is not retried, and is recorded as interrupted; the sweep exits 143 with one error line."""
    out = tmp_path / "stopped"
    argv = sweep_argv(out, "0,1", ray_address)
    total = 20000  # far more than the runs reach before the signal
    argv[argv.index("--total-steps") + 1] = str(total)
    argv[argv.index("--checkpoint-every") + 1] = str(total)  # so any checkpoint below total is the stop's own
    since = time.time()
    proc = _start_sweep(argv)
    deadline = Deadline()
    names = [f"sac-{ENV}-s{seed}" for seed in (0, 1)]
    seen = None
    try:
        while (done := _wait(proc, 0.05)) is None:
            beats = _beats(out, since)
            if beats:
                deadline.workers_up()
            deadline.check(proc)
            if seen is None and all(n in beats and beats[n]["step"] >= 600 for n in names):
                seen = {n: beats[n]["step"] for n in names}
                proc.send_signal(signal.SIGTERM)
                deadline.workers_up()
        stdout, stderr = done
    finally:
        if proc.poll() is None:
            proc.kill()
    assert seen is not None, f"the sweep exited before both runs were training; stderr:\n{stderr}"
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("smfp: error: stopped by SIGTERM; 2 run(s) not finished") and "Traceback" not in stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert (summary["runs"], summary["done"], summary["failed"], summary["interrupted"]) == (2, 0, 0, 2)
    record = json.loads((out / "sweep.json").read_text())
    sweep_id = record["invocations"][-1]["id"]
    for name in names:
        run_dir = out / name
        steps = [s for s, _ in list_checkpoints(run_dir)]
        assert len(steps) == 1 and seen[name] <= steps[0] < total, (name, steps, seen)  # written by the stop
        assert f"{name} at {steps[0]}" in last
        assert len(read_attempts(run_dir, sweep_id)) == 1  # a cancelled task is not retried
        assert record["runs"][name]["status"] == "interrupted" and record["runs"][name]["step"] == steps[0]
        assert load_weights_only(run_dir / "checkpoints" / f"step_{steps[0]:010d}.pt")["step"] == steps[0]
