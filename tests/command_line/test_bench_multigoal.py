"""``smfp bench multigoal``: the MultiGoal evidence table (issue "Assess multimodality"), end to end on a tiny budget."""

from __future__ import annotations

import json
import math

import pytest

from conftest import assert_one_line_error, run_cli


def test_multigoal_bench_trains_evaluates_and_writes_its_table(tmp_path):
    out = tmp_path / "mg"
    proc = run_cli("bench", "multigoal", "--out", out, "--seeds", "0", "--algos", "sac,smfp", "--settings", "default",
                   "--steps", "800", "--episodes", "4", timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((out / "multigoal.json").read_text())
    assert [(r["setting"], r["algo"], r["seed"]) for r in rows] == [("default", "sac", 0), ("default", "smfp", 0)]
    for r in rows:
        assert sum(r["goal_counts"].values()) == r["reached"] <= 4
        assert 0.0 <= r["goal_entropy"] <= math.log(4) + 1e-9
        assert 0.0 <= r["tv_origin"] <= 1.0 and 0.0 <= r["tv_(2.5, 2.5)"] <= 1.0 and r["target_modes_origin"] >= 1
        assert r["blocked_goal"] in ("right", "left", "up", "down") and 0 <= r["blocked_success"] <= 4
    assert (out / "multigoal.md").read_text().count("\n") == 2 + len(rows)
    again = run_cli("bench", "multigoal", "--out", out, "--seeds", "0", "--algos", "sac", "--settings", "default",
                    "--steps", "800", "--episodes", "4", timeout=600)
    assert again.returncode == 0, again.stderr  # a finished run is evaluated again, not retrained
    table = json.loads((out / "multigoal.json").read_text())
    assert [(r["algo"], r["step"]) for r in table] == [("sac", 800), ("smfp", 800)]  # smfp's row stays
    (out / "multigoal.json").write_text("[1, 2]")
    broken = run_cli("bench", "multigoal", "--out", out, "--seeds", "0", "--algos", "sac", "--settings", "default",
                     "--steps", "800", "--episodes", "1")
    assert_one_line_error(broken, "MultiGoal table", "multigoal.json")


@pytest.mark.parametrize("args,needle", [
    (["--seeds", "x"], "--seeds"),
    (["--settings", "fancy"], "unknown setting"),
    (["--algos", "ppo"], "unknown algo"),
    (["--alpha", "0"], "must be positive"),
    (["--settings", "heads", "--algos", "sac"], "the heads setting runs smfp only"),
])
def test_multigoal_bench_mistakes_are_one_line(tmp_path, args, needle):
    assert_one_line_error(run_cli("bench", "multigoal", "--out", tmp_path / "mg", *args), needle)


def test_the_heads_setting_is_multimodal_smfp_with_heads_and_em():
    from smfp.bench.acceptance.multigoal import run_config

    cfg = run_config("heads", "smfp", 0, 20_000, 10.0, "unused").resolved()  # resolved() validates it
    assert cfg.multimodal and cfg.update.alpha == 10.0 and not cfg.update.autotune_alpha
    assert cfg.policy.heads == 4 and cfg.update.actor_update == "em" and cfg.update.md_lambda == 0.0
    plain = run_config("multimodal", "smfp", 0, 20_000, 10.0, "unused").resolved()
    assert plain.policy.heads == 1 and plain.update.actor_update == "reparam"
