"""Bad input, fuzzed (hypothesis): ``smfp train``/``eval``/``report`` arguments and the run dir's
config.json on ``--resume``. Every input either works (exit 0) or exits non-zero with its error
as one line (the last on stderr; lines before it can only be the run's own ``smfp:`` messages),
never a traceback, never a hang.

Starting a Python process that imports torch costs seconds on a busy machine, so the CLI runs in
one long-lived worker process per module: the worker calls ``smfp.cli.main.main(argv)`` exactly as
the ``smfp`` script does, with its real stdout/stderr file descriptors redirected to files, and
reports the exit status (an escaping exception is reported as the traceback the user would see).
Each call has a subprocess timeout: a hang kills the worker and fails the test. Valid inputs are
kept tiny (a few dozen steps) so they finish in well under a second; most inputs fail in parsing
or validation. ``SMFP_FUZZ_EXAMPLES`` scales the number of examples (default 30 per test).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_worker import check_outcome, worker  # noqa: F401 - worker is a fixture
from smfp.cli.main import build_parser

EXAMPLES = int(os.environ.get("SMFP_FUZZ_EXAMPLES", "30"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
# ---------------------------------------------------------------------------------------------- values

JUNK = st.sampled_from(["", " ", "abc", "1e3", "0x10", "1_000", "+3", "-", "--", "nan", "inf", "-inf", "1e400",
                        "none", "None", "NaN", "٣", "3.5", "-0", "00", "1 2", "true", "é", "--help-me",
                        "9" * 30, "-9" * 10, "[]", "{}", "%s", "\t", "a\nb", "\r", "x\x1b[2J"])


def _small_or_not_an_int(text: str, limit: int = 100) -> bool:
    """Junk for flags whose large values legitimately take long (steps, episodes, widths...)."""
    try:
        return abs(int(text)) <= limit
    except ValueError:
        return True


SMALL_JUNK = JUNK.filter(_small_or_not_an_int)
SAFE_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters=":/\\"),
                    max_size=12)
SMALL_INT = st.integers(-3, 40).map(str)
ANY_FLOAT = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                      st.sampled_from(["0", "1", "0.5", "-1", "1e-3", "1e30", "-1e30"]))
# int flags whose large values only cost validation or are bounded by --total-steps
LARGE_OK = {"--seed", "--log-every", "--eval-every", "--checkpoint-every", "--anchor-period", "--probe-every",
            "--meanflow-every", "--max-nonfinite", "--keep-checkpoints", "--entropy-collapse-window",
            "--buffer-size", "--learning-starts"}
ENVS = st.one_of(st.sampled_from(["Pendulum-v1", "MountainCarContinuous-v0", "CartPole-v1", "Nope-v9",
                                  "smfp/MultiGoal-v0", "smfp/Nope-v0", "gymnasium:Nope-v0", ":", "::",
                                  "nosuchmodule_xyz:Env-v0", ".:X-v0", "..x:Y", "Pendulum-v1:", "ALE/Pong-v5"]),
                 SAFE_TEXT)


def _train_actions():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in sub.choices["train"]._actions if a.option_strings and a.dest != "help"]


TRAIN_ACTIONS = _train_actions()


def _value_for(action, run_dir_name):
    flag = action.option_strings[0]
    kind = getattr(action.type, "__name__", None)
    if flag == "--env":
        return ENVS.map(lambda v: [v])
    if flag == "--run-dir":
        return SAFE_TEXT.map(lambda v: [run_dir_name(v)])
    if flag == "--threads":
        return st.sampled_from(["1", "2", "0", "-1", "x"]).map(lambda v: [v])
    if action.nargs == "+":
        return st.lists(st.one_of(st.integers(-2, 24).map(str), SMALL_JUNK), min_size=0, max_size=3)
    if action.choices:
        return st.one_of(st.sampled_from(list(action.choices)), JUNK).map(lambda v: [v])
    if kind == "int":
        if flag in LARGE_OK:
            return st.one_of(SMALL_INT, st.integers(-(2**70), 2**70).map(str), JUNK).map(lambda v: [v])
        return st.one_of(SMALL_INT, SMALL_JUNK).map(lambda v: [v])
    if kind == "float":
        return st.one_of(ANY_FLOAT, JUNK).map(lambda v: [v])
    return st.one_of(SAFE_TEXT, JUNK).map(lambda v: [v])


@st.composite
def train_mutation(draw, run_dir_name):
    action = draw(st.sampled_from(TRAIN_ACTIONS))
    if action.nargs == 0:  # --x / --no-x
        return [draw(st.sampled_from(action.option_strings))]
    if draw(st.integers(0, 9)) == 0:  # a flag without its value, or a stray token
        return [draw(st.sampled_from([action.option_strings[0], "--bogus", "-x", "stray", "--"]))]
    return [action.option_strings[0], *draw(_value_for(action, run_dir_name))]


# Tiny valid settings: any input that passes validation trains for a fraction of a second.
BASE_TRAIN = ["train", "--env", "Pendulum-v1", "--total-steps", "24", "--learning-starts", "6", "--batch-size", "8",
              "--hidden", "8", "--sigma-hidden", "8", "--critic-hidden", "8", "--components", "2",
              "--meanflow-batch", "8", "--best-of-n", "4", "--probe-samples", "16", "--probe-every", "12",
              "--log-every", "6", "--eval-every", "12", "--eval-episodes", "1", "--max-episode-steps", "8",
              "--checkpoint-every", "12", "--no-progress", "--no-tensorboard", "--threads", "1"]


@FUZZ
@given(data=st.data())
def test_fuzz_train_arguments(worker, data):
    case = worker.new_dir()
    name = lambda text: str(case / ("run_" + "".join(c for c in text if c not in ". ")))  # noqa: E731
    mutations = data.draw(st.lists(train_mutation(name), min_size=1, max_size=4), label="mutations")
    argv = [*BASE_TRAIN, "--run-dir", str(case / "run"), *itertools.chain.from_iterable(mutations)]
    code, _, err = worker.run(argv, case)
    check_outcome(argv, code, err)


# ---------------------------------------------------------------------------------------------- eval

@pytest.fixture(scope="module")
def trained(worker) -> Path:
    case = worker.new_dir()
    argv = [*BASE_TRAIN, "--run-dir", str(case / "run")]
    code, _, err = worker.run(argv, case)
    assert code == 0, err
    return case / "run"


@FUZZ
@given(data=st.data())
def test_fuzz_eval_arguments(worker, trained, data):
    case = worker.new_dir()
    (case / "junk.pt").write_bytes(b"\x00junk" * 10)
    (case / "empty_dir").mkdir()
    ckpt = sorted((trained / "checkpoints").glob("step_*.pt"))[-1]
    target = data.draw(st.one_of(
        st.sampled_from([str(trained), str(ckpt)]),
        st.sampled_from([str(case / "junk.pt"), str(case / "empty_dir"), str(case / "missing.pt"), "", ".", "/"]),
        SAFE_TEXT.map(lambda t: str(case / ("x" + t)))), label="target")
    options = data.draw(st.lists(st.one_of(
        st.tuples(st.just("--episodes"), st.one_of(st.integers(-2, 2).map(str), JUNK.filter(
            lambda t: _small_or_not_an_int(t, 3)))),
        st.tuples(st.just("--mode"), st.one_of(st.sampled_from(["auto", "sample", "best-of-n", "mean"]), JUNK)),
        st.tuples(st.just("--seed"), st.one_of(st.integers(-(2**70), 2**70).map(str), JUNK)),
        st.tuples(st.sampled_from(["--json", "--bogus", "--episodes"])),
    ), max_size=4), label="options")
    argv = ["eval", target, "--episodes", "1", *itertools.chain.from_iterable(options)]
    code, out, err = worker.run(argv, case)
    if check_outcome(argv, code, err) == "ok" and "--json" in argv:
        assert "return_mean" in json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- report

@settings(FUZZ, max_examples=max(EXAMPLES // 2, 5))
@given(data=st.data())
def test_fuzz_report_arguments(worker, trained, data):
    case = worker.new_dir()
    (case / "a_file").write_text("x")
    bad = case / "bad_run"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text('{"step": "a"}\n{"step": 1, "eval/return_mean": "x"}\nnot json\n[1]\n')
    (bad / "config.json").write_text(data.draw(st.sampled_from(["[1]", "{bad", '{"env": 3}', "null", "{}"])))
    dirs = data.draw(st.lists(st.one_of(
        st.sampled_from([str(trained), str(bad), str(case / "a_file"), str(case), str(case / "missing"), ""]),
        SAFE_TEXT.map(lambda t: str(case / ("r" + t)))), min_size=1, max_size=3), label="run_dirs")
    out_dir = data.draw(st.one_of(
        st.none(), st.sampled_from([str(case / "a_file" / "out"), str(case / "a_file"), str(case / "out")]),
        SAFE_TEXT.map(lambda t: str(case / ("o" + t)))), label="out")
    argv = ["report", *dirs, *(["--out", out_dir] if out_dir is not None else [])]
    if str(trained) in dirs and out_dir is None:
        argv += ["--out", str(case / "out")]  # never write into the shared trained run
    code, _, err = worker.run(argv, case)
    check_outcome(argv, code, err)


# ---------------------------------------------------------------------------------------------- config.json

@pytest.fixture(scope="module")
def resumable(worker) -> tuple[Path, dict]:
    case = worker.new_dir()
    code, _, err = worker.run([*BASE_TRAIN, "--run-dir", str(case / "run")], case)
    assert code == 0, err
    return case / "run", json.loads((case / "run" / "config.json").read_text())


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=12)


def _paths(d: dict, prefix=()):
    for k, v in d.items():
        yield (*prefix, k)
        if isinstance(v, dict):
            yield from _paths(v, (*prefix, k))


@st.composite
def config_file(draw, valid: dict) -> bytes:
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "json", "bytes", "text"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "text":
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    if kind == "json":
        return json.dumps(draw(JSON_VALUES)).encode()
    cfg = json.loads(json.dumps(valid))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(sorted(_paths(cfg))))
        parent = cfg
        for part in path[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        op = draw(st.sampled_from(["set", "set", "delete", "add"]))
        if op == "set":
            parent[path[-1]] = draw(JSON_VALUES)
        elif op == "delete":
            parent.pop(path[-1], None)
        else:
            parent[draw(st.text(max_size=6))] = draw(JSON_VALUES)
    return json.dumps(cfg).encode()


@FUZZ
@given(data=st.data())
def test_fuzz_config_json_on_resume(worker, resumable, data):
    template, valid = resumable
    case = worker.new_dir()
    run = case / "run"
    shutil.copytree(template, run)
    (run / "config.json").write_bytes(data.draw(config_file(valid), label="config.json"))
    argv = [*BASE_TRAIN, "--run-dir", str(run), "--resume"]
    code, _, err = worker.run(argv, case)
    check_outcome(argv, code, err)


def test_unchanged_config_resumes_and_the_worker_sees_real_errors(worker, resumable):
    """Controls for the fuzz tests above: an untouched config resumes (exit 0), a known mistake is
    reported as one line with status 2."""
    template, _ = resumable
    case = worker.new_dir()
    shutil.copytree(template, case / "run")
    code, out, err = worker.run([*BASE_TRAIN, "--run-dir", str(case / "run"), "--resume"], case)
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["step"] == 24, err
    code, _, err = worker.run(["train", "--total-steps", "0"], case)
    assert code == 2 and err.strip() == "smfp: error: --total-steps must be positive, got 0"
