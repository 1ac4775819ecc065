"""`smfp demo` (the main job) in its reduced-budget smoke form, and its bookkeeping."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli
from smfp.demo import demo_config, summarize


def _ep(info):
    return {"return": 0.0, "length": 1, "info": info, "path": np.zeros((2, 2))}


def test_multigoal_summary_counts_goals():
    eps = [_ep({"goal": g}) for g in [0, 0, 2, -1, 3, 0, -1, 2, 2, 2]]
    s = summarize("multigoal", eps)
    assert s["goal_counts"] == {"right": 3, "left": 0, "up": 4, "down": 1}
    assert s["reached"] == 8 and s["distinct"] == 3
    assert s["distinct_10pct"] == 3  # 'down' is reached in 1 of 10 episodes: exactly 10% counts
    assert summarize("multigoal", eps + [_ep({"goal": -1})])["distinct_10pct"] == 2  # 1 of 11 does not


def test_hallway_summary_counts_routes_successes_and_collisions():
    infos = [{"route": "up", "success": True, "collision": False}] * 3 + \
            [{"route": "down", "success": True, "collision": False}] * 2 + \
            [{"route": "down", "success": False, "collision": True},
             {"route": "none", "success": False, "collision": True},
             {"route": "none", "success": False, "collision": False}]
    s = summarize("hallway", [_ep(i) for i in infos])
    assert s["success"] == 5 and s["collision"] == 2 and s["routes"] == {"up": 3, "down": 3}


def test_demo_config_trains_each_algo_with_its_settings(tmp_path):
    cfg = demo_config("multigoal", "smfp", 3, 900, tmp_path / "r", {"update.fit_local": 5})
    assert cfg.algo == "smfp" and cfg.seed == 3 and cfg.total_steps == 900
    assert cfg.env.env.startswith("smfp/MultiGoal") and cfg.update.fit_local == 5
    # MultiGoal: both algorithms with --multimodal at the same temperature; SMFP with four heads
    sac = demo_config("multigoal", "sac", 3, None, tmp_path / "q").resolved()
    smfp = cfg.resolved()
    for c in (sac, smfp):
        assert c.multimodal and not c.update.autotune_alpha and c.update.value_backup == "soft-optimal"
        assert c.update.alpha == sac.update.alpha and c.update.learning_starts == 10_000  # --multimodal's warm-up
    assert smfp.policy.heads == 4 and smfp.update.actor_update == "em"
    assert demo_config("multigoal", "smfp", 3, None, tmp_path / "p").total_steps == sac.total_steps
    hallway = demo_config("hallway", "smfp", 0, 900, tmp_path / "h")
    assert hallway.update.learning_starts <= 300  # never more than a third of a small budget
    sac = demo_config("hallway", "sac", 0, None, tmp_path / "s")
    assert sac.env.env == "smfp/Hallway-v0" and sac.total_steps > 1000


@pytest.mark.slow
def test_demo_quick_smoke_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = run_cli("demo", "--quick", "--steps", "400", "--out", out, "--no-progress", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the comparison table names the task (MultiGoal only by default), both algorithms and the figure paths
    assert "smfp/MultiGoal-v0" in proc.stdout and "smfp/Hallway-v0" not in proc.stdout
    for algo in ("sac", "smfp"):
        assert any(line.strip().startswith(algo) for line in proc.stdout.splitlines())
    figures = [line.split("figure: ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("figure: ")]
    assert len(figures) == 2
    for f in figures:
        data = open(f, "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    # progress was visible while training
    assert "[multigoal smfp seed 0] step" in proc.stderr and "[multigoal sac seed 0] training" in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    mg = summary["tasks"]["multigoal"]["smfp"]["0"]
    assert mg["episodes"] == 10 and sum(mg["goal_counts"].values()) == mg["reached"] <= 10
    assert 0 <= mg["blocked_success"] <= 10 and mg["blocked_goal"] in mg["goal_counts"]
    assert 0 <= mg["blocked_escaped"] <= mg["blocked_met"] <= 10  # an escape is an episode that met the wall
    assert mg["blocked_success"] - mg["blocked_escaped"] <= 10 - mg["blocked_met"]
    assert {"tv_to_target_start", "tv_to_target_between", "goal_entropy"} <= set(mg)
    # smfp inspect's verdict on each SAC run (what `smfp inspect RUN_DIR` would print), from the run's own critic
    for task in ("multigoal",):
        prefix = f"smfp inspect on the SAC run ({task}, seed 0): "
        line = next(x for x in proc.stdout.splitlines() if x.startswith(prefix))
        assert line.split(": ", 1)[1] == summary["tasks"][task]["sac"]["0"]["task_verdict"]
        assert summary["tasks"][task]["sac"]["0"]["task_verdict"].startswith("the critic's target")
    for run in ("multigoal/sac-s0", "multigoal/smfp-s0"):
        assert (out / run / "config.json").exists() and any((out / run / "checkpoints").glob("step_*.pt"))
    # the same folder is not overwritten
    again = run_cli("demo", "--quick", "--steps", "400", "--out", out, "--no-progress", "--tasks", "multigoal")
    assert_one_line_error(again, "already holds a run")


@pytest.mark.parametrize("args,needle", [
    (["--tasks", "maze"], "unknown demo task 'maze'"),
    (["--algos", "ppo"], "unknown algo 'ppo'"),
    (["--episodes", "0"], "--episodes must be positive"),
    (["--seeds", "a,b"], "--seeds expects"),
    (["--steps", "-5"], "--steps must be positive"),
])
def test_demo_user_mistakes_are_one_line(tmp_path, args, needle):
    proc = run_cli("demo", "--out", tmp_path / "d", "--no-progress", *args)
    assert_one_line_error(proc, needle)
