"""``smfp bench bandit --cases ... [policy/update settings]``: a candidate's rows from the command line."""

from __future__ import annotations

import json

from conftest import assert_one_line_error, run_cli


def test_cases_and_settings_reach_the_suite(tmp_path):
    proc = run_cli("bench", "bandit", "--seeds", "0", "--algos", "smfp", "--cases", "Unimodal", "--steps", "20",
                   "--actor-update", "hybrid", "--fit-coef", "5", "--json", timeout=300)
    assert proc.returncode in (0, 1), proc.stderr  # 1: SMFP does not pass (20 updates)
    report = json.loads(proc.stdout)
    assert [(r["target"], r["alpha"]) for r in report["results"]] == [("unimodal", 0.2), ("unimodal", 0.6)]
    assert report["settings"] == {"actor_update": "hybrid", "fit_coef": 5.0}
    assert report["passed"] == {"smfp": [sum(r["pass"] for r in report["results"]), 2]}


def test_a_setting_reaches_the_learner_and_bad_ones_are_one_line():
    # --fit-noises 1 is refused by the learner the suite builds: the setting got there
    proc = run_cli("bench", "bandit", "--seeds", "0", "--algos", "smfp", "--cases", "unimodal", "--steps", "5",
                   "--actor-update", "fit", "--fit-noises", "1")
    assert_one_line_error(proc, "--fit-noises")
    assert_one_line_error(run_cli("bench", "bandit", "--cases", "seven peaks"), "--cases")
    assert_one_line_error(run_cli("bench", "bandit", "--threads", "0"), "--threads must be >= 1")
    assert_one_line_error(run_cli("bench", "bandit", "--seeds", "0", "--algos", "smfp", "--cases", "unimodal",
                                  "--heads", "2"), "--heads 2 needs --actor-update em")
    # the cases fix alpha, so --alpha is not an option here; a prefix of --alpha-lr is not taken for it either
    assert_one_line_error(run_cli("bench", "bandit", "--alpha", "0.3"), "unrecognized arguments")
    assert_one_line_error(run_cli("train", "--total-step", "10"), "unrecognized arguments",
                          "did you mean --total-steps?", "see smfp train --help")
    # the options a mistyped one may have meant, from the subcommand that got it
    assert_one_line_error(run_cli("train", "--lr", "1e-3"), "--actor-lr", "--critic-lr", "see smfp train --help")
    assert_one_line_error(run_cli("bench", "bandit", "--step", "5"), "did you mean --steps",
                          "see smfp bench bandit --help")
