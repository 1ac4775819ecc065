"""``smfp aggregate`` statistics against hand-computed values, and the report on synthetic run dirs."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli
from smfp.cli.main import main
from smfp.config import TrainConfig
from smfp.sweep.aggregate import aggregate, load_runs, to_markdown, write_aggregate
from smfp.sweep.grid import SweepError
from smfp.sweep.stats import bootstrap_ci, iqm, mean, normalise, stratified_bootstrap_ci


# ---------------------------------------------------------------- statistics, by hand

def test_iqm_cuts_a_quarter_from_each_end():
    assert iqm([4, 1, 3, 2, 8, 6, 5, 7]) == pytest.approx((3 + 4 + 5 + 6) / 4)  # n=8: cut 2 and 2
    assert iqm([1, 2, 3, 7, 100]) == pytest.approx((2 + 3 + 7) / 3)  # n=5: cut floor(1.25)=1 each end
    assert iqm([1, 2, 30]) == pytest.approx(11.0)  # n=3: nothing cut, plain mean
    assert iqm([10, 0, 1, 1000, 2, -50, 3, 4, 5, 9]) == pytest.approx((1 + 2 + 3 + 4 + 5 + 9) / 6)  # n=10: cut 2
    rows = iqm(np.array([[4, 1, 3, 2], [0, 0, 10, 10]]), axis=1)  # per row: middle two
    np.testing.assert_allclose(rows, [2.5, 5.0])


def test_percentile_bootstrap_of_the_mean_matches_the_exact_distribution():
    # values [0, 0, 3]: the resampled mean is k with k ~ Binomial(3, 1/3) copies of 3, i.e.
    # P(0) = 8/27, P(1) = 12/27, P(2) = 6/27, P(3) = 1/27 (cumulative .296, .741, .963, 1).
    point, lo, hi = bootstrap_ci([0, 0, 3], mean, reps=40_000, confidence=0.90, seed=1)
    assert point == 1.0
    assert (lo, hi) == (0.0, 2.0)  # 5th percentile in the first atom, 95th in the third (.741 < .95 < .963)
    _, lo, hi = bootstrap_ci([0, 0, 3], mean, reps=40_000, confidence=0.95, seed=1)
    assert (lo, hi) == (0.0, 3.0)  # 97.5th percentile is past .963: the last atom
    # two seeds: resampled mean in {a, (a+b)/2, b} with probabilities 1/4, 1/2, 1/4 -> CI = [a, b]
    assert bootstrap_ci([-3.0, 5.0], mean, reps=20_000, seed=0) == (1.0, -3.0, 5.0)


def test_stratified_bootstrap_resamples_within_each_task():
    # Task A runs [0, 1], task B runs [10, 10]. Stratified: B stays {10, 10}; A becomes {0,0}, {0,1}
    # or {1,1} (prob. 1/4, 1/2, 1/4). IQM of 4 pooled scores = mean of the middle two:
    # {0,0,10,10} -> 5, {0,1,10,10} -> 5.5, {1,1,10,10} -> 5.5. So IQM = 5 w.p. 1/4, else 5.5.
    point, lo, hi = stratified_bootstrap_ci([[0.0, 1.0], [10.0, 10.0]], iqm, reps=20_000, seed=3)
    assert (point, lo, hi) == (5.5, 5.0, 5.5)
    # Pooled (unstratified) resampling could draw {0,0,0,10} -> IQM 0: a much lower bound.
    _, lo_pooled, _ = bootstrap_ci([0.0, 1.0, 10.0, 10.0], iqm, reps=20_000, seed=3)
    assert lo_pooled < 1.0
    # Every stratified resample of tasks {0,0} and {1,1} has two 0s and two 1s: a degenerate CI.
    assert stratified_bootstrap_ci([[0, 0], [1, 1]], iqm, reps=2000) == (0.5, 0.5, 0.5)


def test_stratified_bootstrap_accepts_tasks_with_different_numbers_of_runs():
    # mean over pooled runs, 1 + 2 + 3 runs; task C is constant so only A and B move.
    point, lo, hi = stratified_bootstrap_ci([[4.0], [0.0, 6.0], [1.0, 1.0, 1.0]], mean, reps=20_000, seed=0)
    assert point == pytest.approx((4 + 0 + 6 + 3) / 6)
    # B resamples to {0,0}, {0,6}, {6,6}: pooled mean (4 + {0, 6, 12} + 3) / 6 -> [7/6, 19/6]
    assert lo == pytest.approx(7 / 6) and hi == pytest.approx(19 / 6)


def test_normalise_maps_random_to_zero_and_reference_to_one():
    np.testing.assert_allclose(normalise([10, 110, 60, -40], random_score=10, reference_score=110), [0, 1, 0.5, -0.5])
    np.testing.assert_allclose(normalise([-1000, -200], random_score=-1000, reference_score=-200), [0, 1])
    with pytest.raises(ValueError, match="equals the random score"):
        normalise([1.0], 5.0, 5.0)


# ---------------------------------------------------------------- reports on synthetic run dirs

def make_run(root: Path, algo: str, env: str, seed: int, evals: list[float], every: int = 100,
             total: int | None = None, label: str | None = None) -> Path:
    d = root / f"{label or algo}-{env}-s{seed}"
    d.mkdir(parents=True)
    cfg = TrainConfig(algo=algo, seed=seed, total_steps=total or every * len(evals), run_dir=str(d), label=label)
    cfg.env.env = env
    (d / "config.json").write_text(json.dumps(cfg.to_dict()))
    rows = []
    for i, r in enumerate(evals):
        rows.append({"step": (i + 1) * every - 50, "train/sps": 100.0})
        rows.append({"step": (i + 1) * every, "eval/return_mean": r, "eval/return_std": 0.0})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


@pytest.fixture
def two_task_dir(tmp_path):
    root = tmp_path / "sweep"
    # final return = mean of the last 3 evals
    make_run(root, "sac", "Pendulum-v1", 0, [-1500, -700, -500, -300])  # -500
    make_run(root, "sac", "Pendulum-v1", 1, [-1200, -100, -200, -300])  # -200
    make_run(root, "smfp", "Pendulum-v1", 0, [-900, -600, -400, -200])  # -400
    make_run(root, "smfp", "Pendulum-v1", 1, [-800, -400, -100, -100])  # -200
    make_run(root, "sac", "MountainCarContinuous-v0", 0, [0, 40, 50, 60])  # 50
    make_run(root, "sac", "MountainCarContinuous-v0", 1, [0, 90, 100, 110])  # 100
    make_run(root, "smfp", "MountainCarContinuous-v0", 0, [0, 10, 20, 30, 40])  # 30
    make_run(root, "smfp", "MountainCarContinuous-v0", 1, [0, 140, 150, 160, 170], total=1000)  # 160, incomplete
    (root / "not-a-run").mkdir()
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"Pendulum-v1": {"random": -1000.0, "reference": -200.0},
                               "MountainCarContinuous-v0": {"random": 0.0, "reference": 100.0}}))
    return root, ref


def test_aggregate_with_a_reference_table_matches_hand_computed_numbers(two_task_dir):
    root, ref = two_task_dir
    res = aggregate(root, reference=ref, reps=20_000)
    assert res["tasks"] == ["MountainCarContinuous-v0", "Pendulum-v1"] and res["algos"] == ["sac", "smfp"]
    pend, car = res["per_task"]["Pendulum-v1"], res["per_task"]["MountainCarContinuous-v0"]
    assert pend["sac"]["final"] == [-500.0, -200.0] and pend["smfp"]["final"] == [-400.0, -200.0]
    assert car["sac"]["final"] == [50.0, 100.0] and car["smfp"]["final"] == [30.0, 160.0]
    # two seeds: mean, and the CI spans the two runs exactly
    assert (pend["sac"]["mean"], pend["sac"]["lo"], pend["sac"]["hi"]) == (-350.0, -500.0, -200.0)
    assert (car["smfp"]["mean"], car["smfp"]["lo"], car["smfp"]["hi"]) == (95.0, 30.0, 160.0)
    assert pend["sac"]["complete"] and not car["smfp"]["complete"]
    # normalised: Pendulum (R + 1000) / 800, MountainCar R / 100
    sac = res["aggregate"]["sac"]
    np.testing.assert_allclose(sac["normalised"]["Pendulum-v1"], [0.625, 1.0])
    np.testing.assert_allclose(sac["normalised"]["MountainCarContinuous-v0"], [0.5, 1.0])
    smfp = res["aggregate"]["smfp"]
    np.testing.assert_allclose(smfp["normalised"]["Pendulum-v1"], [0.75, 1.0])
    np.testing.assert_allclose(smfp["normalised"]["MountainCarContinuous-v0"], [0.3, 1.6])
    # IQM of 4 pooled scores = mean of the middle two: sac {0.5, .625, 1, 1} -> .8125;
    # smfp {.3, .75, 1, 1.6} -> .875. Means: sac 3.125/4, smfp 3.65/4.
    assert sac["iqm"][0] == pytest.approx(0.8125) and smfp["iqm"][0] == pytest.approx(0.875)
    assert sac["mean"][0] == pytest.approx(3.125 / 4) and smfp["mean"][0] == pytest.approx(3.65 / 4)
    for o in (sac, smfp):
        assert o["iqm"][1] <= o["iqm"][0] <= o["iqm"][2] and o["mean"][1] <= o["mean"][0] <= o["mean"][2]
        assert o["runs"] == 4 and o["tasks"] == ["MountainCarContinuous-v0", "Pendulum-v1"]
    # smfp's stratified mean CI, by hand: each task's pair resamples to {a,a}, {a,b}, {b,b};
    # the extremes need both tasks at their lowest (prob 1/16 > 2.5%): [(.3+.3+.75+.75)/4, (1.6+1.6+1+1)/4]
    assert smfp["mean"][1] == pytest.approx(2.1 / 4) and smfp["mean"][2] == pytest.approx(5.2 / 4)
    md = to_markdown(res, "x.png")
    assert "| Pendulum-v1 | -350.0 [-500.0, -200.0] (n=2, 400) | -300.0 [-400.0, -200.0] (n=2, 400) |" in md
    assert "| smfp | 0.875 [" in md and "**Incomplete**" in md and "smfp on MountainCarContinuous-v0" in md


def test_runs_with_a_label_are_their_own_row(two_task_dir):
    root, ref = two_task_dir
    make_run(root, "smfp", "Pendulum-v1", 0, [-900, -300, -100, -100], label="smfp-lam0")  # -166.7
    res = aggregate(root, reference=ref, reps=2000)
    assert res["algos"] == ["sac", "smfp", "smfp-lam0"]
    assert res["per_task"]["Pendulum-v1"]["smfp"]["final"] == [-400.0, -200.0]  # unchanged by the ablation
    assert res["per_task"]["Pendulum-v1"]["smfp-lam0"]["final"] == pytest.approx([-500.0 / 3])
    # 'auto' is reported as the mode it resolves to for the policy class
    assert res["per_task"]["Pendulum-v1"]["sac"]["eval_mode"] == "mean"
    assert res["per_task"]["Pendulum-v1"]["smfp-lam0"]["eval_mode"] == "best-of-n"


@pytest.mark.filterwarnings("ignore::UserWarning")  # gymnasium's float32 Box notice
def test_default_normalisation_uses_a_measured_random_policy_and_the_sac_mean(tmp_path):
    root = tmp_path / "sweep"
    make_run(root, "sac", "Pendulum-v1", 0, [-900, -700, -500, -300])  # -500
    make_run(root, "sac", "Pendulum-v1", 1, [-900, -300, -200, -100])  # -200
    make_run(root, "smfp", "Pendulum-v1", 0, [-900, -200, -200, -200])  # -200
    res = aggregate(root, reps=5000, random_episodes=3)
    # The random score, recomputed independently: uniform actions in [-1, 1] rescaled to the
    # task's [-2, 2], episodes reset with seeds 10000 + i, same generator seed.
    env = gym.wrappers.RescaleAction(gym.make("Pendulum-v1"), -1.0, 1.0)
    rng = np.random.default_rng(10_000)
    totals = []
    for i in range(3):
        env.reset(seed=10_000 + i)
        total, done = 0.0, False
        while not done:
            _, r, term, trunc, _ = env.step(rng.uniform(-1, 1, (1,)).astype(np.float32))
            total, done = total + r, term or trunc
        totals.append(total)
    rnd = float(np.mean(totals))
    norm = res["normalisation"]["Pendulum-v1"]
    assert norm["random"] == pytest.approx(rnd, rel=1e-6) and norm["reference"] == -350.0
    np.testing.assert_allclose(res["aggregate"]["smfp"]["normalised"]["Pendulum-v1"], [(-200 - rnd) / (-350 - rnd)])
    np.testing.assert_allclose(res["aggregate"]["sac"]["mean"][0], 1.0)  # the baseline's mean is 1 by definition
    cached = json.loads((root / "random_scores.json").read_text())["Pendulum-v1"]
    assert cached["return_mean"] == norm["random"] and cached["episodes"] == 3


def test_write_aggregate_writes_markdown_png_and_json(two_task_dir, tmp_path):
    root, ref = two_task_dir
    out = tmp_path / "report" / "results.md"
    path, res = write_aggregate(root, out, reference=ref, reps=2000)
    assert path == out and out.read_text().startswith("# Sweep results")
    png = out.with_name("results_curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert json.loads(out.with_suffix(".json").read_text())["aggregate"]["sac"]["runs"] == 4
    assert "![learning curves](results_curves.png)" in out.read_text()


def test_runs_without_evaluations_are_skipped_with_a_warning(tmp_path):
    root = tmp_path / "s"
    make_run(root, "sac", "Pendulum-v1", 0, [-300.0])
    empty = root / "sac-Pendulum-v1-s1"
    empty.mkdir()
    (empty / "config.json").write_text((root / "sac-Pendulum-v1-s0" / "config.json").read_text())
    (empty / "metrics.jsonl").write_text('{"step": 100, "train/sps": 3.0}\n')
    warnings = []
    runs = load_runs(root, warn=warnings.append)
    assert [r.name for r in runs] == ["sac-Pendulum-v1-s0"] and "no evaluation yet" in warnings[0]
    with pytest.raises(SweepError, match="no evaluated runs"):
        load_runs(tmp_path)


def test_aggregate_user_mistakes_are_one_line(tmp_path, two_task_dir, capsys):
    root, _ = two_task_dir
    assert_one_line_error(run_cli("aggregate", str(tmp_path / "nothing")), "is not a folder")  # real CLI
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"Pendulum-v1": {"reference": 1.0, "random": 0.0}}))
    only_smfp = tmp_path / "only_smfp"
    make_run(only_smfp, "smfp", "Pendulum-v1", 0, [1.0])
    for argv, needle in [(["aggregate", str(root), "--reference", str(partial)],
                          "MountainCarContinuous-v0 is missing from the reference table"),
                         (["aggregate", str(only_smfp)], "no sac runs on Pendulum-v1"),
                         (["aggregate", str(root), "--reference", str(tmp_path / "none.json")], "does not exist")]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(argv)  # in-process: the same code path without another interpreter start-up
        assert exc.value.code == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and needle in lines[0], lines
