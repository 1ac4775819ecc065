"""``smfp bench multigoal``: the MultiGoal evidence table (issue "Assess multimodality"), end to end on a tiny budget."""

from __future__ import annotations

import json
import math

import pytest

from conftest import assert_one_line_error, run_cli


def test_multigoal_bench_trains_evaluates_and_writes_its_table(tmp_path):
    out = tmp_path / "mg"
    proc = run_cli("bench", "multigoal", "--out", out, "--seeds", "0", "--algos", "sac,smfp", "--settings", "default",
                   "--steps", "800", "--episodes", "4", "--precision", "bf16", timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((out / "multigoal.json").read_text())
    assert [(r["setting"], r["algo"], r["seed"]) for r in rows] == [("default", "sac", 0), ("default", "smfp", 0)]
    for r in rows:
        assert sum(r["goal_counts"].values()) == r["reached"] <= 4
        assert 0.0 <= r["goal_entropy"] <= math.log(4) + 1e-9
        assert 0.0 <= r["tv_origin"] <= 1.0 and 0.0 <= r["tv_(2.5, 2.5)"] <= 1.0 and r["target_modes_origin"] >= 1
        assert r["target_grid"] == "cell centres"
        assert r["blocked_goal"] in ("right", "left", "up", "down") and 0 <= r["blocked_success"] <= 4
        assert 0 <= r["blocked_escaped"] <= r["blocked_met"] <= 4  # an escape is an episode that met the obstacle
        assert r["blocked_success"] - r["blocked_escaped"] <= 4 - r["blocked_met"]
        assert r["block_radius"] == 2.0
        assert json.loads((out / "default" / f"{r['algo']}-s0" / "config.json").read_text())["update"]["precision"] == "bf16"
    assert (out / "multigoal.md").read_text().count("\n") == 2 + len(rows)
    again = run_cli("bench", "multigoal", "--out", out, "--seeds", "0", "--algos", "sac", "--settings", "default",
                    "--steps", "800", "--episodes", "4", "--block-radius", "4", timeout=600)
    assert again.returncode == 0, again.stderr  # a finished run is evaluated again, not retrained
    table = json.loads((out / "multigoal.json").read_text())
    assert [(r["algo"], r["step"]) for r in table] == [("sac", 800), ("smfp", 800)]  # smfp's row stays
    assert [r["block_radius"] for r in table] == [4.0, 2.0] and "obstacle radius 4" in again.stdout
    assert json.loads((out / "default" / "sac-s0" / "config.json").read_text())["update"]["precision"] == "bf16"
    (out / "multigoal.json").write_text("[1, 2]")
    broken = run_cli("bench", "multigoal", "--out", out, "--seeds", "0", "--algos", "sac", "--settings", "default",
                     "--steps", "800", "--episodes", "1")
    assert_one_line_error(broken, "MultiGoal table", "multigoal.json")


@pytest.mark.parametrize("args,needle", [
    (["--seeds", "x"], "--seeds"),
    (["--settings", "fancy"], "unknown setting"),
    (["--algos", "ppo"], "unknown algo"),
    (["--alpha", "0"], "must be positive"),
    (["--block-radius", "0"], "--block-radius"),
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


def test_a_screen_changes_one_setting_on_top_of_the_heads_setting():
    from smfp.bench.acceptance.multigoal import run_config

    cfg = run_config("heads", "smfp", 0, 20_000, 3.0, "unused", {"actor_lr": 1e-3, "em_per_head": 8}).resolved()
    assert cfg.update.actor_lr == 1e-3 and cfg.update.em_per_head == 8  # the screen's values win
    assert cfg.policy.heads == 4 and cfg.update.actor_update == "em" and cfg.update.alpha == 3.0  # the rest stays
    assert cfg.policy.hidden == (256, 256, 256)
    two = run_config("heads", "smfp", 0, 20_000, 3.0, "unused", {"hidden": [256, 256]}).resolved()
    assert two.policy.hidden == (256, 256) and two.policy.heads == 4  # the library default, given, wins too


def test_the_bench_passes_policy_and_update_options_and_refuses_its_own(monkeypatch, tmp_path):
    import smfp.bench.acceptance.multigoal as mg

    # nothing trained: the options the command hands to run_multigoal

    seen = {}
    monkeypatch.setattr(mg, "run_multigoal", lambda opts, say: seen.setdefault("opts", opts))
    monkeypatch.setattr(mg, "previous_rows", lambda out: [])
    from smfp.cli.main import main

    assert main(["bench", "multigoal", "--out", str(tmp_path / "mg"), "--settings", "heads", "--algos", "smfp",
                 "--actor-lr", "0.001"]) == 0
    assert seen["opts"].overrides == {"actor_lr": 0.001}
    assert_one_line_error(run_cli("bench", "multigoal", "--out", tmp_path / "mg", "--value-backup", "policy"),
                          "unrecognized arguments")


def _row(setting, algo, seed, counts, entropy, tv, blocked):
    return {"setting": setting, "algo": algo, "seed": seed, "goal_counts": dict(zip(("right", "left", "up", "down"), counts)),
            "reached": sum(counts), "goal_entropy": entropy, "tv_origin": tv, "blocked_success": blocked,
            "target_grid": "cell centres"}


def test_the_goal_check_counts_each_bar_per_seed():
    from smfp.bench.acceptance.multigoal import goal_check

    sac = [_row("multimodal", "sac", s, (28, 15, 37, 20), 1.33, 0.59, 72) for s in range(5)]
    heads = [_row("heads", "smfp", s, (20, 22, 36, 22), 1.36, 0.15, 75) for s in range(4)]
    heads.append(_row("heads", "smfp", 4, (5, 30, 35, 30), 1.20, 0.25, 70))  # one seed misses three bars
    lines = goal_check(sac + heads)
    assert lines[0] == "smfp (heads) vs sac (multimodal), seeds 0,1,2,3,4:"
    assert "4 of 5 seeds (goal: >= 4 of 5): met" in lines[1]
    assert "1.33 on average" in lines[2] and lines[2].endswith(": met")  # (4 x 1.36 + 1.20) / 5
    assert "0.17 on average (sac 0.59); <= 0.2 in 4 of 5 seeds, below sac's in 5 of 5" in lines[3]
    assert lines[3].endswith("met on average, not met in every seed")
    assert "4 of 5 seeds" in lines[4] and lines[4].endswith(": met")
    heads[0]["episodes"] = 250  # 10% of the episodes, not of those that reached a goal: 20 of 250 is too few
    assert "3 of 5 seeds (goal: >= 4 of 5): not met" in goal_check(sac + heads)[1]
    # Fewer than five seeds are not judged, and a setting without SAC's rows of the same seeds is not checked.
    short = goal_check(sac[:3] + heads[:3])
    assert short[0].endswith("seeds 0,1,2:") and all("too few seeds to judge" in line and " met" not in line for line in short[1:])
    assert goal_check(heads) == [] and goal_check(sac) == []
    assert len(lines) == 5  # rows written before the obstacle counts: no line about them
    assert "(obstacle radius 2)" in lines[4]  # rows written before the radius was recorded: the bench's 2
    heads[1]["block_radius"] = 4.0
    assert goal_check(sac + heads)[4].endswith("not judged: the rows' obstacles differ; evaluate them again with one "
                                               "--block-radius")
    del heads[1]["block_radius"]
    # TVs from two target grids are not compared; rows from before the grid was recorded are judged with a warning
    del heads[2]["target_grid"]
    assert goal_check(sac + heads)[3].endswith("not judged: the rows' TVs come from two target grids; re-assess them "
                                               "with tools/multigoal_retarget.py")
    for r in sac + heads:
        r.pop("target_grid", None)
    assert "not met in every seed (TVs from the edge-to-edge grid used before 2026-12-06" in goal_check(sac + heads)[3]
    for r, (met, escaped) in zip(sac + heads, [(27, 0)] * 5 + [(30, 2), (30, 3), (30, 0), (30, 1), (35, 4)]):
        r["blocked_met"], r["blocked_escaped"] = met, escaped
    assert goal_check(sac + heads)[5] == ("  (episodes that met the obstacle and still reached another goal, seeds "
                                          "0,1,2,3,4: smfp 10 of 155, sac 0 of 135; the rest of the success is episodes "
                                          "that never headed for the walled goal)")


def test_merge_joins_per_seed_folders_into_one_table_and_goal_check(tmp_path):
    from smfp.bench.acceptance.multigoal import write

    def full(r):
        return {**r, "tv_(2.5, 2.5)": 0.3, "target_modes_origin": 4, "blocked_goal": "up", "train_seconds": 1,
                "episodes": 100, "block_radius": 4.0, "blocked_met": 25, "blocked_escaped": 1 + (r["algo"] == "smfp")}

    folders = []
    for s in range(5):
        for algo, setting, tv, blocked in (("sac", "multimodal", 0.6, 74), ("smfp", "heads", 0.18, 78)):
            folder = tmp_path / f"{algo}-s{s}"
            write(folder, [full(_row(setting, algo, s, (25, 25, 25, 25), 1.38, tv, blocked))])
            folders.append(folder)
    proc = run_cli("bench", "multigoal", "--out", tmp_path / "all", "--merge", *folders)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "all" / "multigoal.json").read_text())
    assert [(r["seed"], r["algo"]) for r in rows] == [(s, a) for s in range(5) for a in ("sac", "smfp")]  # by seed, setting
    assert "merged 10 rows from 10 folders" in proc.stdout
    assert "blocked-goal success above sac's (obstacle radius 4): 5 of 5 seeds (goal: >= 4 of 5): met" in proc.stdout
    assert "smfp 10 of 125, sac 5 of 125" in proc.stdout
    assert not (tmp_path / "all" / "heads").exists()  # nothing trained
    twice = run_cli("bench", "multigoal", "--out", tmp_path / "x", "--merge", folders[0], folders[0])
    assert_one_line_error(twice, "seed 0 is in both")
    assert_one_line_error(run_cli("bench", "multigoal", "--out", tmp_path / "y", "--merge", tmp_path / "none"),
                          "holds no multigoal.json")
