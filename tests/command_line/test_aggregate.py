"""``smfp aggregate``: its rliable estimates against rliable called directly, the hand-written per-task
bootstrap against hand-computed values, and the report on synthetic run dirs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli
from smfp.cli.main import main
from smfp.config import TrainConfig
from smfp.sweep.aggregate import aggregate, load_runs, to_markdown, write_aggregate
from smfp.sweep.grid import SweepError
from smfp.sweep.stats import bootstrap_ci, iqm_and_mean, normalise, probability_of_improvement


# ---------------------------------------------------------------- statistics

# The IQM, the mean and their stratified-bootstrap CIs used to be hand-written numpy, tested here
# against hand-computed values. They are rliable's now (smfp.sweep.stats); the tests below that
# still hold for rliable's estimators were rewritten against iqm_and_mean, the others replaced by
# test_aggregate_equals_rliable_called_directly. The per-task bootstrap CI is still ours.

def test_iqm_cuts_a_quarter_from_each_end():
    # rewritten against rliable: the point estimate of iqm_and_mean is rliable's aggregate_iqm
    # (scipy.stats.trim_mean(x, 0.25): floor(n/4) cut from each end), here on one task.
    for scores, expected in [([4, 1, 3, 2, 8, 6, 5, 7], (3 + 4 + 5 + 6) / 4),  # n=8: cut 2 and 2
                             ([1, 2, 3, 7, 100], (2 + 3 + 7) / 3),  # n=5: cut floor(1.25)=1 each end
                             ([1, 2, 30], 11.0),  # n=3: nothing cut, plain mean
                             ([10, 0, 1, 1000, 2, -50, 3, 4, 5, 9], (1 + 2 + 3 + 4 + 5 + 9) / 6)]:  # n=10: cut 2
        assert iqm_and_mean({"t": scores}, reps=10)["iqm"][0] == pytest.approx(expected)


def test_percentile_bootstrap_of_the_mean_matches_the_exact_distribution():
    # kept: the per-task CI over seeds is still this hand-written bootstrap (rliable has none per task).
    # values [0, 0, 3]: the resampled mean is k with k ~ Binomial(3, 1/3) copies of 3, i.e.
    # P(0) = 8/27, P(1) = 12/27, P(2) = 6/27, P(3) = 1/27 (cumulative .296, .741, .963, 1).
    point, lo, hi = bootstrap_ci([0, 0, 3], reps=40_000, confidence=0.90, seed=1)
    assert point == 1.0
    assert (lo, hi) == (0.0, 2.0)  # 5th percentile in the first atom, 95th in the third (.741 < .95 < .963)
    _, lo, hi = bootstrap_ci([0, 0, 3], reps=40_000, confidence=0.95, seed=1)
    assert (lo, hi) == (0.0, 3.0)  # 97.5th percentile is past .963: the last atom
    # two seeds: resampled mean in {a, (a+b)/2, b} with probabilities 1/4, 1/2, 1/4 -> CI = [a, b]
    assert bootstrap_ci([-3.0, 5.0], reps=20_000, seed=0) == (1.0, -3.0, 5.0)


def test_stratified_bootstrap_resamples_within_each_task():
    # rewritten against rliable (StratifiedBootstrap through get_interval_estimates).
    # Task A runs [0, 1], task B runs [10, 10]. Stratified: B stays {10, 10}; A becomes {0,0}, {0,1}
    # or {1,1} (prob. 1/4, 1/2, 1/4). IQM of 4 pooled scores = mean of the middle two:
    # {0,0,10,10} -> 5, {0,1,10,10} -> 5.5, {1,1,10,10} -> 5.5. So IQM = 5 w.p. 1/4, else 5.5.
    # (Resampling the 4 runs unstratified could draw {0,0,0,10} -> IQM 0: a much lower bound.)
    assert iqm_and_mean({"A": [0.0, 1.0], "B": [10.0, 10.0]}, reps=5000, seed=3)["iqm"] == (5.5, 5.0, 5.5)
    # Every stratified resample of tasks {0,0} and {1,1} has two 0s and two 1s: a degenerate CI.
    assert iqm_and_mean({"A": [0, 0], "B": [1, 1]}, reps=2000)["iqm"] == (0.5, 0.5, 0.5)


def test_stratified_bootstrap_accepts_tasks_with_different_numbers_of_runs():
    # rewritten against rliable: tasks with 1, 2 and 3 runs go through its list form
    # (StratifiedIndependentBootstrap); the mean is rliable's, the mean of the per-task means.
    out = iqm_and_mean({"A": [4.0], "B": [0.0, 6.0], "C": [1.0, 1.0, 1.0]}, reps=5000, seed=0)
    point, lo, hi = out["mean"]
    assert point == pytest.approx((4 + 3 + 1) / 3)
    # only B moves: it resamples to {0,0}, {0,6}, {6,6}, task mean 0, 3, 6 -> (4 + {0..6} + 1) / 3
    assert lo == pytest.approx(5 / 3) and hi == pytest.approx(11 / 3)
    # the IQM pools the 6 runs {0, 1, 1, 1, 4, 6}: cut 1 from each end -> (1 + 1 + 1 + 4) / 4
    assert out["iqm"][0] == pytest.approx(7 / 4)


def test_probability_of_improvement_is_rliables_average_over_tasks():
    # rliable's P(X > Y) on a task is Mann-Whitney U / (n_x n_y), ties counting 1/2; averaged over tasks.
    # A: x [1, 2] vs y [0, 3]: pairs 1>0, 2>0 -> 2/4; B: x [5] vs y [5]: equal -> 1/2; mean 1/2.
    assert probability_of_improvement({"A": [1.0, 2.0], "B": [5.0]}, {"A": [0.0, 3.0], "B": [5.0]},
                                      reps=200)[0] == pytest.approx(0.5)
    p, lo, hi = probability_of_improvement({"A": [3.0, 4.0]}, {"A": [0.0, 1.0], "C": [9.0]}, reps=200)
    assert (p, lo, hi) == (1.0, 1.0, 1.0)  # only the common task counts; X always better


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
    res = aggregate(root, reference=ref, reps=5000)
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
    # smfp's stratified mean CI (rliable's), by hand: each task's pair resamples to {a,a}, {a,b}, {b,b};
    # the extremes need both tasks at their lowest (prob 1/16 > 2.5%): [(.3+.3+.75+.75)/4, (1.6+1.6+1+1)/4]
    assert smfp["mean"][1] == pytest.approx(2.1 / 4) and smfp["mean"][2] == pytest.approx(5.2 / 4)
    # P(smfp > sac): Pendulum [.75, 1] vs [.625, 1]: 1 + 0 + 1 + 1/2 (tie) of 4 pairs = .625;
    # MountainCar [.3, 1.6] vs [.5, 1]: 2 of 4 = .5. Averaged over the two tasks: .5625.
    imp = res["improvement"]
    assert list(imp) == ["smfp"] and imp["smfp"]["baseline"] == "sac"
    assert res["settings"]["reps"] == 5000 and res["settings"]["reps_improvement_profiles"] == 2000  # capped
    assert imp["smfp"]["p"][0] == pytest.approx(0.5625) and imp["smfp"]["p"][1] <= 0.5625 <= imp["smfp"]["p"][2]
    md = to_markdown(res, "x.png")
    assert "| Pendulum-v1 | -350.0 [-500.0, -200.0] (n=2, 400) | -300.0 [-400.0, -200.0] (n=2, 400) |" in md
    assert "| smfp | 0.875 [" in md and "**Incomplete**" in md and "smfp on MountainCarContinuous-v0" in md
    assert "### Probability of improvement over sac" in md and "| smfp | 0.562 [" in md


def test_aggregate_equals_rliable_called_directly(tmp_path):
    """IQM, mean, their CIs, the probability of improvement and the performance profiles of
    ``aggregate`` are what rliable computes on the same score matrix with the same seed and reps."""
    from rliable import library, metrics

    tasks = ["Ant-v5", "Hopper-v5", "Walker2d-v5"]  # sorted, as aggregate orders them
    smfp = np.array([[0.91, 0.42, 1.30], [0.75, 0.10, 1.05], [1.12, 0.55, 0.64], [0.33, 0.81, 1.21]])  # runs x tasks
    sac = np.array([[0.80, 0.48, 0.97], [1.04, 0.22, 1.10], [0.95, 0.30, 0.88], [0.61, 0.67, 1.02]])
    root = tmp_path / "sweep"
    for algo, scores in (("sac", sac), ("smfp", smfp)):
        for run in range(4):
            for j, task in enumerate(tasks):
                make_run(root, algo, task, run, [float(scores[run, j])])  # final return = that one eval
    ref = tmp_path / "ref.json"  # random 0, reference 1: normalised score = final return
    ref.write_text(json.dumps({t: {"random": 0.0, "reference": 1.0} for t in tasks}))
    seed, reps = 7, 1000
    res = aggregate(root, reference=ref, reps=reps, seed=seed)
    np.testing.assert_allclose(np.column_stack([res["aggregate"]["smfp"]["normalised"][t] for t in tasks]), smfp)

    def direct(scores, func, n=reps):
        np.random.seed(seed)  # rliable 1.2.0 resamples with NumPy's global generator
        with pytest.warns(FutureWarning):  # arch's notice about random_state
            point, ci = library.get_interval_estimates({"x": scores}, func, reps=n,
                                                       random_state=np.random.RandomState(seed))
        return point["x"], ci["x"]

    for algo, scores in (("sac", sac), ("smfp", smfp)):
        point, ci = direct(scores, lambda x: np.array([metrics.aggregate_iqm(x)]))
        assert res["aggregate"][algo]["iqm"] == (point[0], ci[0, 0], ci[1, 0])
        point, ci = direct(scores, lambda x: np.array([metrics.aggregate_mean(x)]))
        assert res["aggregate"][algo]["mean"] == (point[0], ci[0, 0], ci[1, 0])
    slow = res["settings"]["reps_improvement_profiles"]
    assert slow == reps  # min(reps, 2000)
    point, ci = direct([smfp, sac], metrics.probability_of_improvement, n=slow)
    assert res["improvement"]["smfp"]["p"] == (point, ci[0, 0], ci[1, 0]) and 0.0 < point < 1.0
    tau = np.asarray(res["profiles"]["tau"])
    np.random.seed(seed)
    profiles, cis = library.create_performance_profile({"smfp": smfp}, tau, reps=slow)
    mine = res["profiles"]["algos"]["smfp"]
    assert mine["fraction"] == profiles["smfp"].tolist()
    assert (mine["lo"], mine["hi"]) == (cis["smfp"][0].tolist(), cis["smfp"][1].tolist())
    # and the hand-written per-task CI is the one of bootstrap_ci on the same seed
    assert (res["per_task"]["Hopper-v5"]["smfp"]["lo"], res["per_task"]["Hopper-v5"]["smfp"]["hi"]) == \
        bootstrap_ci(smfp[:, 1], reps, 0.95, seed)[1:]


def test_two_runs_give_identical_json_and_leave_numpys_global_generator_alone(two_task_dir, tmp_path):
    root, ref = two_task_dir
    np.random.seed(123)
    expected = np.random.random_sample(3)
    np.random.seed(123)
    a, _ = write_aggregate(root, tmp_path / "a" / "r.md", reference=ref, reps=500, seed=5)
    assert np.array_equal(np.random.random_sample(3), expected)  # the caller's global state is restored
    b, _ = write_aggregate(root, tmp_path / "b" / "r.md", reference=ref, reps=500, seed=5)
    assert a.with_suffix(".json").read_text() == b.with_suffix(".json").read_text()
    assert a.read_text() == b.read_text()
    other = aggregate(root, reference=ref, reps=500, seed=6)  # another seed, other resamples
    first = json.loads(a.with_suffix(".json").read_text())
    assert first["aggregate"]["smfp"]["iqm"][0] == other["aggregate"]["smfp"]["iqm"][0]
    assert first["profiles"] != other["profiles"] or first["improvement"] != other["improvement"]


def test_runs_with_a_label_are_their_own_row(two_task_dir):
    root, ref = two_task_dir
    make_run(root, "smfp", "Pendulum-v1", 0, [-900, -300, -100, -100], label="smfp-lam0")  # -166.7
    res = aggregate(root, reference=ref, reps=200)
    assert res["algos"] == ["sac", "smfp", "smfp-lam0"]
    assert res["per_task"]["Pendulum-v1"]["smfp"]["final"] == [-400.0, -200.0]  # unchanged by the ablation
    assert res["per_task"]["Pendulum-v1"]["smfp-lam0"]["final"] == pytest.approx([-500.0 / 3])
    # 'auto' is reported as the mode it resolves to for the policy class
    assert res["per_task"]["Pendulum-v1"]["sac"]["eval_mode"] == "mean"
    assert res["per_task"]["Pendulum-v1"]["smfp-lam0"]["eval_mode"] == "best-of-n"


def test_algos_reports_only_the_named_runs_with_the_same_numbers(two_task_dir, tmp_path):
    root, ref = two_task_dir
    make_run(root, "smfp", "Pendulum-v1", 0, [-900, -300, -100, -100], label="smfp-lam0")
    full = aggregate(root, reference=ref, reps=200)
    some = aggregate(root, reference=ref, reps=200, algos=["sac", "smfp-lam0"])
    assert some["algos"] == ["sac", "smfp-lam0"] and "smfp" not in some["per_task"]["Pendulum-v1"]
    for algo in some["algos"]:  # each algorithm's numbers do not depend on the others in the report
        assert some["aggregate"][algo]["iqm"] == full["aggregate"][algo]["iqm"]
    out, res = write_aggregate(root, tmp_path / "some.md", reference=ref, reps=200, algos=["smfp-lam0", "sac"])
    assert "smfp-lam0" in out.read_text() and "| smfp |" not in out.read_text()


@pytest.mark.filterwarnings("ignore::UserWarning")  # gymnasium's float32 Box notice
def test_default_normalisation_uses_a_measured_random_policy_and_the_sac_mean(tmp_path):
    root = tmp_path / "sweep"
    make_run(root, "sac", "Pendulum-v1", 0, [-900, -700, -500, -300])  # -500
    make_run(root, "sac", "Pendulum-v1", 1, [-900, -300, -200, -100])  # -200
    make_run(root, "smfp", "Pendulum-v1", 0, [-900, -200, -200, -200])  # -200
    res = aggregate(root, reps=500, random_episodes=3)
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
    path, res = write_aggregate(root, out, reference=ref, reps=500)
    assert path == out and out.read_text().startswith("# Sweep results")
    for png in (out.with_name("results_curves.png"), out.with_name("results_profiles.png")):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["aggregate"]["sac"]["runs"] == 4 and saved["settings"]["rliable"] == "1.2.0"
    assert len(saved["profiles"]["tau"]) == len(saved["profiles"]["algos"]["smfp"]["fraction"]) == 101
    assert "![learning curves](results_curves.png)" in out.read_text()
    assert "![performance profiles](results_profiles.png)" in out.read_text()


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
    # a run dir itself is a folder of one run (e.g. `smfp aggregate RUN_DIR --csv FILE` for one run's row)
    assert [r.name for r in load_runs(root / "sac-Pendulum-v1-s0")] == ["sac-Pendulum-v1-s0"]


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
                         (["aggregate", str(root), "--reference", str(tmp_path / "none.json")], "does not exist"),
                         (["aggregate", str(root), "--algos", "sac,nope"], "--algos: no runs of nope")]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(argv)  # in-process: the same code path without another interpreter start-up
        assert exc.value.code == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and needle in lines[0], lines


def test_without_rliable_aggregate_says_so_in_one_line(two_task_dir, monkeypatch, capsys):
    root, ref = two_task_dir
    monkeypatch.setitem(sys.modules, "rliable", None)  # `from rliable import ...` raises ImportError
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["aggregate", str(root), "--reference", str(ref), "--reps", "10"])
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "rliable cannot be imported" in line and 'pip install -e ".[sweep]"' in line


# ---------------------------------------------------------------- the results CSV (--csv) and run provenance

def add_sample_evals(run_dir: Path, returns: list[float]) -> None:
    """Give a ``make_run`` run's evaluation rows an ``eval/return_mean_sample`` each (as smfp train logs it)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = iter(returns)
    for r in rows:
        if "eval/return_mean" in r:
            r["eval/return_mean_sample"] = next(evals)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_run_commit_comes_from_the_last_attempt_line_then_provenance_then_unknown(tmp_path):
    from smfp.sweep.aggregate import run_commit

    d = make_run(tmp_path, "sac", "Pendulum-v1", 0, [1.0])
    assert run_commit(d) == "unknown"
    (d / "provenance.json").write_text(json.dumps({"commit": "p" * 40}))
    assert run_commit(d) == "p" * 40
    (d / "sweep_attempts.jsonl").write_text(json.dumps({"sweep": "a", "commit": "a" * 40}) + "\n"
                                            + json.dumps({"sweep": "b", "commit": "b" * 40 + "-dirty"}) + "\n")
    assert run_commit(d) == "b" * 40 + "-dirty"
    with open(d / "sweep_attempts.jsonl", "a") as f:  # an attempt of a sweep from before commits were recorded
        f.write(json.dumps({"sweep": "c", "start_step": 0}) + "\n")
    assert run_commit(d) == "p" * 40
    (d / "provenance.json").write_text("{not json")
    assert run_commit(d) == "unknown"


def test_sweep_attempt_lines_record_the_commit(tmp_path):
    """``train_task`` (the body of a sweep's Ray task) writes ``git_commit()`` into its attempt line.
    (Rewritten from monkeypatching ``train`` and ``git_commit``: the trainer is passed in, the commit is the
    checkout's real one; the assertions are unchanged.)"""
    from types import SimpleNamespace

    from smfp.provenance import git_commit
    from smfp.sweep.grid import read_attempts
    from smfp.sweep.runner import train_task

    cfg = TrainConfig(algo="sac", total_steps=10, run_dir=str(tmp_path / "run"))
    train_task(cfg.to_dict(), "sweep-1",
               train_fn=lambda c, callback=None: SimpleNamespace(step=c.total_steps, final_eval=None))
    (attempt,) = read_attempts(tmp_path / "run")
    assert attempt["commit"] == git_commit() and attempt["sweep"] == "sweep-1"


def test_csv_has_one_row_per_complete_run_and_mode_and_keeps_rows_of_other_runs(tmp_path):
    from smfp.sweep.aggregate import write_csv

    root = tmp_path / "sweep"
    a = make_run(root, "sac", "Pendulum-v1", 0, [-900, -700, -500, -300])  # mean mode: -500
    add_sample_evals(a, [-1000, -800, -600, -400])  # sample: -600
    (a / "sweep_attempts.jsonl").write_text(json.dumps({"commit": "a" * 40}) + "\n")
    make_run(root, "smfp", "Pendulum-v1", 1, [-300, -200])  # best-of-n, no sample rows: -250
    make_run(root, "sac", "Pendulum-v1", 2, [-100, -100], total=1000)  # incomplete: no row
    out = tmp_path / "results" / "mujoco.csv"
    out.parent.mkdir()
    out.write_text("algo,commit,env,seed,steps,final_return,eval_mode\n"
                   "sac,old,Pendulum-v1,0,400,-9999.000,mean\n"  # same run: replaced
                   "sac,old,Pendulum-v1,0,400,-9999.000,sample\n"  # same run: replaced
                   "sac,old,Pendulum-v1,0,400,-9999.000,best-of-n\n"  # another mode of it: kept
                   "sb3-sac,abc,Hopper-v5,10,100000,3000.500,mean\n"  # a run elsewhere: kept
                   "sac,xyz,Hopper-v5,2,100000,2500.000,mean\n")
    warnings = []
    assert write_csv(root, out, warn=warnings.append) == (3, 6)
    assert out.read_text().splitlines() == [
        "algo,commit,env,seed,steps,final_return,eval_mode",
        "sac,xyz,Hopper-v5,2,100000,2500.000,mean",
        "sac,old,Pendulum-v1,0,400,-9999.000,best-of-n",  # sorted by algo, env, seed, mode
        f"sac,{'a' * 40},Pendulum-v1,0,400,-500.000,mean",
        f"sac,{'a' * 40},Pendulum-v1,0,400,-600.000,sample",
        "sb3-sac,abc,Hopper-v5,10,100000,3000.500,mean",
        "smfp,unknown,Pendulum-v1,1,200,-250.000,best-of-n",
    ]
    assert warnings == ["smfp aggregate: sac-Pendulum-v1-s2 is not in the CSV: step 200 of 1000"]
    before = out.read_text()
    assert write_csv(root, out) == (3, 6) and out.read_text() == before  # idempotent


def test_csv_from_the_cli_also_when_the_report_cannot_normalise(tmp_path, two_task_dir, capsys):
    root, ref = two_task_dir
    out = tmp_path / "all.csv"
    capsys.readouterr()
    assert main(["aggregate", str(root), "--reference", str(ref), "--reps", "200", "--csv", str(out)]) == 0
    rows = out.read_text().splitlines()
    assert len(rows) == 1 + 7 and rows[1].startswith("sac,unknown,MountainCarContinuous-v0,0,400,50.000,mean")
    assert f"{out} (7 rows from {root}, 7 in all)" in capsys.readouterr().err
    only_smfp = tmp_path / "only_smfp"
    make_run(only_smfp, "smfp", "Hopper-v5", 0, [1.0, 2.0])
    with pytest.raises(SystemExit):
        main(["aggregate", str(only_smfp), "--csv", str(out)])
    (line,) = capsys.readouterr().err.splitlines()
    assert "no sac runs on Hopper-v5" in line and "written before" in line
    rows_after = out.read_text().splitlines()
    assert "smfp,unknown,Hopper-v5,0,200,1.500,best-of-n" in rows_after and set(rows) < set(rows_after)
    bad = tmp_path / "other.csv"
    bad.write_text("a,b\n1,2\n")
    for target, needle in [(bad, "is not a results table"), (tmp_path / "x.txt", "should be a .csv file")]:
        with pytest.raises(SystemExit):
            main(["aggregate", str(root), "--reference", str(ref), "--csv", str(target)])
        (line,) = capsys.readouterr().err.splitlines()
        assert needle in line
    assert bad.read_text() == "a,b\n1,2\n"


def test_curves_csv_keeps_every_evaluation_and_recomputes_the_same_report(tmp_path, two_task_dir, capsys):
    from smfp.sweep.aggregate import write_curves_csv

    root, ref = two_task_dir
    add_sample_evals(root / "sac-Pendulum-v1-s0", [-1600, -800, -600, -400])
    curves = tmp_path / "results" / "curves.csv"
    curves.parent.mkdir()
    curves.write_text("algo,commit,env,seed,steps,max_episode_steps,eval_mode,eval_step,return,return_sample\n"
                      "sac,old,Pendulum-v1,0,400,,mean,400,-9999.000,\n"  # the same run: replaced
                      "sb3-sac,abc,Hopper-v5,0,200,,mean,100,1.000,\n"  # another run: kept
                      "sb3-sac,abc,Hopper-v5,0,200,,mean,200,2.000,\n")
    assert write_curves_csv(root, curves) == (7, 8)  # the incomplete smfp MountainCar seed 1 has no rows
    lines = curves.read_text().splitlines()
    assert "sac,unknown,Pendulum-v1,0,400,,mean,400,-300.000,-400.000" in lines and "-9999.000" not in curves.read_text()
    assert "sac,unknown,Pendulum-v1,1,400,,mean,100,-1200.000," in lines and len(lines) == 1 + 4 * 6 + 5 + 2
    before = curves.read_text()
    assert write_curves_csv(root, curves) == (7, 8) and curves.read_text() == before  # idempotent

    # the report from the table equals the report from the run dirs (the complete runs, Hopper dropped)
    only_mine = tmp_path / "mine.csv"
    write_curves_csv(root, only_mine)
    kw = dict(reference=ref, reps=300)
    from_dirs, from_csv = aggregate(root, **kw), aggregate(only_mine, **kw)
    mc = from_dirs["per_task"]["MountainCarContinuous-v0"]["smfp"]
    assert mc["final"] == [30.0, 160.0]  # the run dirs include the incomplete seed, the table does not
    assert from_csv["per_task"]["MountainCarContinuous-v0"]["smfp"]["final"] == [30.0]
    assert from_csv["per_task"]["Pendulum-v1"] == from_dirs["per_task"]["Pendulum-v1"]
    runs = load_runs(only_mine)
    s0 = next(r for r in runs if (r.algo, r.task, r.seed) == ("sac", "Pendulum-v1", 0))
    assert s0.final_return_sample() == pytest.approx(-600.0) and s0.complete
    assert next(r for r in runs if (r.algo, r.seed) == ("sac", 1)).sample_returns is None

    # from the command line: the report (Markdown, curves, profiles) without the run dirs
    out = tmp_path / "report" / "agg.md"
    assert main(["aggregate", str(only_mine), "--reference", str(ref), "--reps", "200", "--out", str(out)]) == 0
    assert out.exists() and out.with_name("agg_curves.png").stat().st_size > 0
    capsys.readouterr()
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    for source, needle in [(bad, "is not a curves table"), (tmp_path / "none.txt", "is not a folder")]:
        with pytest.raises(SystemExit):
            main(["aggregate", str(source), "--reference", str(ref)])
        (line,) = capsys.readouterr().err.splitlines()
        assert needle in line
    with pytest.raises(SystemExit):
        main(["aggregate", str(root), "--reference", str(ref), "--curves-csv", str(bad)])
    (line,) = capsys.readouterr().err.splitlines()
    assert "is not a curves table" in line and bad.read_text() == "a,b\n1,2\n"

    # only the tables, for a folder with nothing to normalise against (SMFP runs alone)
    smfp_only = tmp_path / "smfp_only"
    make_run(smfp_only, "smfp", "Hopper-v5", 0, [1.0, 2.0, 3.0])
    assert main(["aggregate", str(smfp_only), "--curves-csv", str(curves), "--no-report"]) == 0
    assert "smfp,unknown,Hopper-v5,0,300,,best-of-n,300,3.000," in curves.read_text().splitlines()
    assert not (smfp_only / "aggregate.md").exists()
    assert "written: " in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["aggregate", str(smfp_only), "--no-report"])
    (line,) = capsys.readouterr().err.splitlines()
    assert "--no-report needs --csv or --curves-csv" in line


def test_a_results_table_gives_the_same_numbers_as_its_run_dirs_without_curves(tmp_path, two_task_dir, capsys):
    from smfp.sweep.aggregate import write_csv

    root, ref = two_task_dir
    table = tmp_path / "finals.csv"
    write_csv(root, table)
    kw = dict(reference=ref, reps=300)
    from_dirs, from_table = aggregate(root, **kw), aggregate(table, **kw)
    assert from_table["per_task"]["Pendulum-v1"] == from_dirs["per_task"]["Pendulum-v1"]
    assert from_table["aggregate"]["sac"]["iqm"] == from_dirs["aggregate"]["sac"]["iqm"]
    assert from_table["per_task"]["MountainCarContinuous-v0"]["smfp"]["final"] == [30.0]  # complete runs only
    out = tmp_path / "rep" / "agg.md"
    assert main(["aggregate", str(table), "--reference", str(ref), "--reps", "200", "--out", str(out)]) == 0
    assert not out.with_name("agg_curves.png").exists() and "## Learning curves" not in out.read_text()
    err = capsys.readouterr().err
    assert "agg_profiles.png" in err and "agg_curves.png" not in err

    # --curves-from: the finals from the table, the curves from a curves table (here of the sac runs only)
    from smfp.sweep.aggregate import write_curves_csv

    curves = tmp_path / "curves.csv"
    write_curves_csv(root, curves)
    sac_curves = tmp_path / "sac_curves.csv"
    sac_curves.write_text("".join(line for line in curves.read_text().splitlines(keepends=True)
                                  if not line.startswith("smfp,")))
    both = tmp_path / "rep2" / "agg.md"
    assert main(["aggregate", str(table), "--reference", str(ref), "--reps", "200", "--out", str(both),
                 "--curves-from", str(sac_curves)]) == 0
    text = both.read_text()
    assert both.with_name("agg_curves.png").stat().st_size > 5000 and f"curves from `{sac_curves}`" in text
    assert json.loads(both.with_suffix(".json").read_text())["per_task"] == json.loads(
        out.with_suffix(".json").read_text())["per_task"]  # the numbers are the table's
    capsys.readouterr()
    for source, needle in [(tmp_path / "missing.csv", "no such file"), (table, "is not a curves table")]:
        with pytest.raises(SystemExit):
            main(["aggregate", str(table), "--reference", str(ref), "--reps", "200", "--out", str(both),
                  "--curves-from", str(source)])
        (line,) = capsys.readouterr().err.splitlines()
        assert needle in line
    with pytest.raises(SystemExit):  # a curves table of other algorithms only
        main(["aggregate", str(table), "--reference", str(ref), "--reps", "200", "--out", str(both), "--algos",
              "smfp", "--curves-from", str(sac_curves)])
    (line,) = capsys.readouterr().err.splitlines()
    assert "holds no curves of smfp" in line


def test_the_learning_curves_say_which_evaluation_mode_each_algorithm_shows(two_task_dir, tmp_path):
    from smfp.sweep.aggregate import curve_modes, load_runs

    root, ref = two_task_dir
    runs = load_runs(root)
    modes = {r.algo: r.eval_mode for r in runs}
    text = curve_modes(runs, ["sac", "smfp"])
    if modes["sac"] == modes["smfp"]:
        assert text == f"{modes['sac']} mode: sac, smfp"
    else:
        assert f"{modes['sac']} mode: sac" in text and f"{modes['smfp']} mode: smfp" in text
    for run in runs:  # another mode for one algorithm's runs is listed apart
        if run.algo == "smfp":
            run.eval_mode = "best-of-4"
    assert curve_modes(runs, ["sac", "smfp"]) == f"best-of-4 mode: smfp; {modes['sac']} mode: sac"
    out = tmp_path / "r" / "results.md"
    write_aggregate(root, out, reference=ref, reps=200)
    assert "averaged over its seeds (n in the legend" in out.read_text()


def test_the_report_lists_every_run_in_both_modes(tmp_path):
    """The per-run table: each run's final in its algorithm's mode and in `sample` mode, a blank where an algorithm
    has no run of that seed, `-` where a run has no sample evaluation, and each task's means in both modes."""
    table = tmp_path / "finals.csv"
    table.write_text("algo,commit,env,seed,steps,final_return,eval_mode\n"
                     "sac,c1,Pendulum-v1,0,400,-500.000,mean\n"
                     "sac,c1,Pendulum-v1,0,400,-600.000,sample\n"
                     "sac,c2,Pendulum-v1,1,400,-300.000,mean\n"
                     "sac,c2,Pendulum-v1,1,400,-200.000,sample\n"
                     "smfp,c3,Pendulum-v1,1,400,-250.000,best-of-n\n")
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps({"Pendulum-v1": {"random": -1000.0, "reference": -200.0}}))
    res = aggregate(table, reference=ref, reps=200)
    assert res["per_task"]["Pendulum-v1"]["sac"]["final_sample"] == [-600.0, -200.0]
    assert res["per_task"]["Pendulum-v1"]["sac"]["commits"] == ["c1", "c2"]
    assert res["per_task"]["Pendulum-v1"]["smfp"]["final_sample"] == [None]
    text = to_markdown(res, None)
    start = text.index("| task | seed | sac | smfp |")
    assert text[start:].splitlines()[:5] == [
        "| task | seed | sac | smfp |", "|---|---|---|---|",
        "| Pendulum-v1 | 0 | -500.0 / -600.0 |  |",
        "| Pendulum-v1 | 1 | -300.0 / -200.0 | -250.0 / - |",
        "| Pendulum-v1 | mean | -400.0 / -400.0 | -250.0 / - |"]
