"""A damaged ``config.json`` in a sweep folder is one line from ``smfp sweep`` (before Ray starts) and a
skipped run for ``smfp aggregate``, as it is one line for ``smfp train --resume`` (docs/reliability.md 5)."""

from __future__ import annotations

import json

import pytest

from conftest import one_line_error_in_process
from smfp.cli.main import main

ENV = "Pendulum-v1"
RUN = f"sac-{ENV}-s0"
DAMAGED = {"a JSON list": b"[1, 2, 3]", "a JSON string": b'"sac"', "bad JSON": b'{"algo": ',
           "not UTF-8": b'{"algo": "\xff\xfe"}', "absurd nesting": b"[" * 100_000 + b"]" * 100_000}


@pytest.mark.parametrize("what", DAMAGED)
def test_sweep_over_a_run_dir_with_a_damaged_config_is_one_line(tmp_path, capsys, what):
    (tmp_path / RUN).mkdir()
    (tmp_path / RUN / "config.json").write_bytes(DAMAGED[what])
    line = one_line_error_in_process(["sweep", "--algos", "sac", "--envs", ENV, "--seeds", "0", "--out", str(tmp_path),
                            "--total-steps", "300"], capsys)
    assert str(tmp_path / RUN / "config.json") in line and ("unreadable" in line or "JSON object" in line), line
    assert not (tmp_path / "sweep.json").exists()  # refused before anything was written or started


@pytest.mark.parametrize("what", DAMAGED)
def test_aggregate_skips_a_run_whose_config_is_damaged(tmp_path, capsys, what):
    rows = [{"step": 100, "eval/return_mean": -900.0}, {"step": 200, "eval/return_mean": -800.0}]
    for name, config in ((RUN, DAMAGED[what]), (f"sac-{ENV}-s1", None)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        good = {"algo": "sac", "seed": 1, "total_steps": 200, "env": {"env": ENV}, "eval": {"eval_mode": "mean"}}
        (tmp_path / name / "config.json").write_bytes(config if config is not None else json.dumps(good).encode())
    (tmp_path / "random_scores.json").write_text("[]")  # a damaged cache of the random policy's score, too
    main(["aggregate", str(tmp_path), "--out", str(tmp_path / "agg.md"), "--reps", "200", "--random-episodes", "1"])
    err = capsys.readouterr().err
    assert f"skipping {RUN}: unreadable config.json" in err and "Traceback" not in err
    assert json.loads((tmp_path / "agg.json").read_text())["per_task"][ENV]["sac"]["seeds"] == [1]
