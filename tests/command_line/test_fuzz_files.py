"""Damaged files, fuzzed with a seeded generator: checkpoints, ``config.json``, ``metrics.jsonl`` and
``alerts.jsonl`` through ``smfp eval``, ``smfp report``, ``smfp inspect`` and ``smfp train --resume``.

Every call either works (where the damaged file is not needed, or an intact older checkpoint stands in)
or exits non-zero with one ``smfp: error:`` line; never a traceback, never a hang. The cases are drawn
from ``numpy.random.default_rng(SEED)``, so every run of the suite tests the same bytes; the kinds and
counts are listed in docs/reliability.md.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cli_worker import check_outcome, worker  # noqa: F401 - worker is a fixture

SEED = 19
PER_KIND = 50  # damaged checkpoints per kind: 4 kinds, 200 in all
BASE_TRAIN = ["train", "--algo", "sac", "--env", "Pendulum-v1", "--total-steps", "80", "--learning-starts", "20",
              "--batch-size", "8", "--hidden", "8", "--critic-hidden", "8", "--log-every", "10",
              "--eval-every", "40", "--eval-episodes", "1", "--max-episode-steps", "20", "--checkpoint-every", "40",
              "--probe-every", "0", "--no-progress", "--no-tensorboard", "--threads", "1"]
NEWEST, OLDER = "step_0000000080.pt", "step_0000000040.pt"


def damaged_checkpoints(good: bytes, rng: np.random.Generator) -> list[tuple[str, bytes]]:
    """``PER_KIND`` cases of each kind: random bytes (1 B to 64 KiB, log-uniform lengths), a truncation,
    1-8 flipped bits, a zeroed range (1 B to 4 KiB)."""
    cases = []
    for i in range(PER_KIND):
        n = int(np.exp(rng.uniform(0.0, np.log(64 * 1024))))
        cases.append((f"random{i}", rng.integers(0, 256, n, dtype=np.uint8).tobytes()))
    for i, cut in enumerate(np.linspace(0, len(good) - 1, PER_KIND).astype(int)):  # every part of the file
        cases.append((f"truncated{i}", good[:cut]))
    for i in range(PER_KIND):
        data = bytearray(good)
        for pos in rng.integers(0, len(good) * 8, int(rng.integers(1, 9))):
            data[pos // 8] ^= 1 << (pos % 8)
        cases.append((f"bitflip{i}", bytes(data)))
    for i in range(PER_KIND):
        data = bytearray(good)
        start, length = int(rng.integers(0, len(good))), int(rng.integers(1, 4097))
        data[start:start + length] = bytes(len(data[start:start + length]))
        cases.append((f"zeroed{i}", bytes(data)))
    return cases


@pytest.fixture(scope="module")
def trained(worker) -> Path:
    """A finished tiny run with checkpoints at steps 40 and 80, metrics, and an alerts file."""
    case = worker.new_dir()
    run = case / "run"
    code, _, err = worker.run([*BASE_TRAIN, "--run-dir", str(run)], case)
    assert code == 0, err
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*.pt")) == [OLDER, NEWEST]
    (run / "alerts.jsonl").write_text(json.dumps({"step": 40, "alarm": "nonfinite", "message": "m", "value": 1.0})
                                      + "\n")
    return run


@pytest.fixture(scope="module")
def checkpoint_cases(trained) -> list[tuple[str, bytes]]:
    cases = damaged_checkpoints((trained / "checkpoints" / NEWEST).read_bytes(), np.random.default_rng(SEED))
    assert len(cases) == 4 * PER_KIND
    return cases


def _run_all(worker, cases, make_argv) -> dict:
    """Each case through the CLI; returns the outcome counts and the failures (asserted empty by the caller)."""
    counts, failures = {"ok": 0, "error": 0}, []
    for name, data in cases:
        case = worker.new_dir()
        argv = make_argv(case, name, data)
        try:
            code, _, err = worker.run(argv, case)
            counts[check_outcome(argv, code, err)] += 1
        except AssertionError as exc:
            failures.append(f"{name}: {str(exc)[:2000]}")
        shutil.rmtree(case, ignore_errors=True)
    assert not failures, f"{len(failures)} of {len(cases)} cases failed; the first:\n" + failures[0]
    return counts


def _report_all(worker, cases, prepare) -> None:
    """All cases as the runs of one ``smfp report`` (it overlays runs, each read and plotted on its own): it must work
    and list every run, each under its case's name. One call, not one per case: the figures cost a second a call."""
    case = worker.new_dir()
    runs = [prepare(case / name, data) for name, data in cases]
    argv = ["report", *map(str, runs), "--out", str(case / "rep")]
    code, _, err = worker.run(argv, case)
    assert check_outcome(argv, code, err) == "ok", err
    table = (case / "rep" / "report.md").read_text()
    assert sorted(line.split(" | ")[0][2:] for line in table.splitlines()
                  if line.startswith("| ") and not line.startswith("| run ")) == sorted(name for name, _ in cases)
    shutil.rmtree(case, ignore_errors=True)


def test_damaged_checkpoint_files_through_eval_and_inspect(worker, checkpoint_cases):
    def eval_argv(case, name, data):
        (case / "c.pt").write_bytes(data)
        return ["eval", str(case / "c.pt"), "--episodes", "1", "--json"]

    def inspect_argv(case, name, data):
        (case / "c.pt").write_bytes(data)
        return ["inspect", str(case / "c.pt"), "--samples", "20", "--states", "1", "--episodes", "1", "--out",
                str(case / "i.png")]

    counts = _run_all(worker, checkpoint_cases, eval_argv)
    assert counts["error"] >= 0.9 * len(checkpoint_cases), counts  # damage must be noticed, not loaded
    _run_all(worker, checkpoint_cases, inspect_argv)


def test_damaged_newest_checkpoint_on_resume(worker, trained, checkpoint_cases):
    """``eval`` of the run dir uses the older checkpoint; ``--resume`` cannot (only the newest checkpoint keeps its
    replay buffer), and a damaged checkpoint alone is refused too (starting again from step 0 would cut the run's
    logs): one line either way. Without the damaged file, the same resume works (the control)."""
    def resume_argv(keep_older):
        def make(case, name, data):
            run = case / "run"
            shutil.copytree(trained, run)
            (run / "checkpoints" / NEWEST).write_bytes(data)
            if not keep_older:
                (run / "checkpoints" / OLDER).unlink()
            return [*BASE_TRAIN, "--run-dir", str(run), "--resume", "--total-steps", "40"]
        return make

    def eval_run_argv(case, name, data):
        run = case / "run"
        shutil.copytree(trained, run)
        (run / "checkpoints" / NEWEST).write_bytes(data)
        return ["eval", str(run), "--episodes", "1"]

    with_older = _run_all(worker, checkpoint_cases, resume_argv(True))
    assert with_older["error"] >= 0.9 * len(checkpoint_cases), with_older
    alone = _run_all(worker, checkpoint_cases, resume_argv(False))
    assert alone["error"] >= 0.9 * len(checkpoint_cases), alone
    assert _run_all(worker, checkpoint_cases[::4], eval_run_argv)["ok"] == len(checkpoint_cases[::4])


def test_a_damaged_newest_checkpoint_alone_is_refused_and_nothing_is_cut(worker, trained):
    case = worker.new_dir()
    run = case / "run"
    shutil.copytree(trained, run)
    before = (run / "metrics.jsonl").read_bytes()
    (run / "checkpoints" / OLDER).unlink()
    (run / "checkpoints" / NEWEST).write_bytes(b"\0" * 100)
    argv = [*BASE_TRAIN, "--run-dir", str(run), "--resume"]
    code, _, err = worker.run(argv, case)
    assert check_outcome(argv, code, err) == "error"
    assert "no checkpoint" in err and "move the checkpoints folder away" in err, err
    assert (run / "metrics.jsonl").read_bytes() == before


CONFIGS = [("empty", b""), ("brace", b"{"), ("array", b"[]"), ("null", b"null"), ("number", b"3"),
           ("string", b'"x"'), ("binary", bytes(range(256))), ("bad_utf8", b'{"algo": "\xff"}'),
           ("nested", b"[" * 100_000 + b"]" * 100_000), ("algo_list", b'{"algo": []}'),
           ("env_number", b'{"env": 3, "eval": []}'), ("eval_string", b'{"algo": "sac", "eval": "x"}'),
           ("section_list", b'{"update": [1, 2]}'), ("huge_int", b'{"seed": ' + b"9" * 400 + b"}"),
           ("values_dicts", b'{"algo": {"a": {"b": 1}}, "env": {"env": {"x": 1}}}'),
           ("nan", b'{"update": {"gamma": NaN}}')]


def _valid_config_variants(trained) -> list[tuple[str, bytes]]:
    """Wrong types in an otherwise valid config: each field in turn replaced by a list, a dict, a string."""
    valid = json.loads((trained / "config.json").read_text())
    out = []
    for section in ("algo", "seed", "env", "update", "eval"):
        for i, value in enumerate(([1], {"k": None}, "junk", None, True)):
            cfg = json.loads(json.dumps(valid))
            if isinstance(cfg.get(section), dict):
                first = sorted(cfg[section])[0]
                cfg[section][first] = value
            else:
                cfg[section] = value
            out.append((f"{section}_{i}", json.dumps(cfg).encode()))
    return out


def test_damaged_config_json(worker, trained):
    cases = CONFIGS + _valid_config_variants(trained)

    def with_config(case, data, run_name="run"):
        run = case / run_name
        shutil.copytree(trained, run)
        (run / "config.json").write_bytes(data)
        return run

    resumed = _run_all(worker, cases, lambda c, n, d: [*BASE_TRAIN, "--run-dir", str(with_config(c, d)), "--resume"])
    assert resumed["error"] == len(cases), resumed  # no damaged config is the same run
    # eval and inspect read the config inside the checkpoint; report only displays it
    assert _run_all(worker, cases, lambda c, n, d: ["eval", str(with_config(c, d)), "--episodes", "1"])["ok"] == len(cases)
    _report_all(worker, cases, lambda run, d: with_config(run.parent, d, run.name))
    assert _run_all(worker, cases[:6], lambda c, n, d: ["inspect", str(with_config(c, d)), "--samples", "20",
                                                        "--states", "1", "--episodes", "1"])["ok"] == 6


def _log_cases(rng: np.random.Generator, rows: list[bytes]) -> list[tuple[str, bytes]]:
    whole = b"".join(rows)
    junk = [rng.integers(0, 256, int(n), dtype=np.uint8).tobytes() for n in rng.integers(1, 2000, 8)]
    cases = [(f"torn{i}", whole + rows[-1][:cut]) for i, cut in enumerate((1, 5, len(rows[-1]) // 2, len(rows[-1]) - 2))]
    cases += [(f"junk_end{i}", whole + j) for i, j in enumerate(junk)]
    cases += [(f"junk_middle{i}", b"".join(rows[:2]) + j + b"\n" + b"".join(rows[2:])) for i, j in enumerate(junk[:4])]
    wrong = [b'{"step": "5"}', b'{"step": 1.5}', b'{"step": true}', b'{"step": -3}', b'{"step": ' + b"9" * 400 + b"}",
             b"[1, 2]", b"null", b'"text"', b'{"step": 50, "eval/return_mean": [1]}',
             b'{"step": 60, "eval/return_mean": {"a": 1}, "train/sps": "fast", "train/entropy": null}',
             b'{"step": 70, "eval/return_mean": ' + b"9" * 400 + b"}", b'{"step": 75, "alarm": 3, "message": []}',
             b'{"step": 76, "alarm": "x"}', b'{"step": 77, "alarm": "x", "message": "y", "value": [1]}',
             b'{"step": 78, "eval/return_mean": NaN, "train/sps": Infinity}', b"\xff\xfe{}", b"{" * 50_000]
    cases += [(f"wrong{i}", whole + w + b"\n") for i, w in enumerate(wrong)]
    cases += [("empty", b""), ("only_junk", junk[0])]
    return cases


def test_damaged_metrics_and_alerts(worker, trained):
    rng = np.random.default_rng(SEED + 1)
    metric_rows = [line + b"\n" for line in (trained / "metrics.jsonl").read_bytes().splitlines()]
    alert_rows = [line + b"\n" for line in (trained / "alerts.jsonl").read_bytes().splitlines()] * 3
    for name, rows in (("metrics.jsonl", metric_rows), ("alerts.jsonl", alert_rows)):
        cases = _log_cases(rng, rows)

        def with_log(case, data, name=name, run_name="run"):
            run = case / run_name
            shutil.copytree(trained, run)
            (run / name).write_bytes(data)
            return run

        _report_all(worker, cases, lambda run, d: with_log(run.parent, d, run_name=run.name))
        commands = [lambda c, n, d: [*BASE_TRAIN, "--run-dir", str(with_log(c, d)), "--resume"]]
        if name == "metrics.jsonl":  # inspect reads the metrics (the probe states' rows), not the alerts
            commands.append(lambda c, n, d: ["inspect", str(with_log(c, d)), "--samples", "20", "--states", "1",
                                             "--episodes", "1"])
        for make in commands:
            counts = _run_all(worker, cases, make)
            assert counts["ok"] == len(cases), (name, counts)  # a damaged log never stops a run or a report


def test_a_half_written_last_metrics_line_keeps_every_complete_row_in_the_report(worker, trained):
    case = worker.new_dir()
    run = case / "torn_run"
    shutil.copytree(trained, run)
    lines = (run / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    evals = [json.loads(x)["eval/return_mean"] for x in lines if b"eval/return_mean" in x]
    last_eval_line = max(i for i, x in enumerate(lines) if b"eval/return_mean" in x)
    kept = lines[:last_eval_line]
    (run / "metrics.jsonl").write_bytes(b"".join(kept) + lines[last_eval_line][: len(lines[last_eval_line]) // 2])
    code, out, err = worker.run(["report", str(run), "--out", str(case / "rep")], case)
    assert code == 0 and "Traceback" not in err, err
    table = (case / "rep" / "report.md").read_text()
    last_complete = max(json.loads(x)["step"] for x in kept)
    cells = [line for line in table.splitlines() if line.startswith(f"| {run.name} ")][0].split(" | ")
    assert cells[4] == str(last_complete), table
    assert float(cells[5]) == pytest.approx(float(np.mean(evals[:-1][-3:])), rel=1e-3), table
