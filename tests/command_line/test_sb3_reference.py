"""``smfp bench sb3-sac``: a tiny Stable-Baselines3 SAC run written as a run dir that ``smfp aggregate`` reads
like ours, evaluated with our evaluation seeds; a finished run dir reruns as a no-op; mistakes are one line.
Also ``smfp.provenance.git_commit``."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, one_line_error_in_process
from smfp.cli.main import main
from smfp.config import TrainConfig
from smfp.provenance import git_commit
from smfp.sweep.aggregate import load_runs, write_csv

pytest.importorskip("stable_baselines3")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # gymnasium's float32 Box notice

ENV = "Pendulum-v1"
FLAGS = ["--env", ENV, "--seed", "0", "--total-steps", "600", "--learning-starts", "200", "--eval-every", "300",
         "--eval-episodes", "1", "--hidden", "32", "32", "--critic-hidden", "32", "32", "--batch-size", "32"]


def sb3(out: Path, *extra: str) -> list[str]:
    return ["bench", "sb3-sac", *FLAGS, *extra, "--out", str(out)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished 600-step run (about 5 s), in a sweep-like folder: (root, run dir, stdout summary)."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("yardstick")
    run_dir = root / f"sb3-sac-{ENV}-s0"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(sb3(run_dir)) == 0
    progress = err.getvalue().splitlines()
    assert [ln.split(":")[1].strip() for ln in progress if ln.startswith("smfp bench sb3-sac")] == \
        [f"{ENV} seed 0 step 300/600", f"{ENV} seed 0 step 600/600"]  # one line per evaluation
    return root, run_dir, json.loads(out.getvalue())


def test_run_dir_holds_a_sac_config_labelled_sb3_and_evaluations_in_both_modes(finished):
    _, run_dir, summary = finished
    cfg = json.loads((run_dir / "config.json").read_text())
    TrainConfig.from_dict(cfg)  # a TrainConfig as smfp train writes it
    assert (cfg["algo"], cfg["label"], cfg["seed"], cfg["total_steps"]) == ("sac", "sb3-sac", 0, 600)
    assert cfg["eval"]["eval_mode"] == "mean" and cfg["policy"]["hidden"] == [32, 32]
    assert cfg["update"]["learning_starts"] == 200 and cfg["run_dir"] == str(run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [300, 600]
    assert [r["train/updates"] for r in rows] == [100, 400]  # updates at every step after learning starts
    for r in rows:
        assert {"eval/return_mean", "eval/return_std", "eval/return_mean_sample", "eval/return_std_sample"} <= set(r)
    assert summary == {"run_dir": str(run_dir), "step": 600, "return_mean": rows[-1]["eval/return_mean"],
                       "return_mean_sample": rows[-1]["eval/return_mean_sample"], "already_finished": False}
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert prov["sb3_kwargs"]["learning_starts"] == 200 and prov["sb3_kwargs"]["ent_coef"] == "auto_1.0"
    assert prov["sb3_kwargs"]["policy_kwargs"]["net_arch"] == [32, 32] and prov["commit"]


def test_saved_model_reproduces_the_final_evaluation_with_our_evaluation_seeds(finished):
    """The logged deterministic return is SB3's deterministic policy on episodes reset with seed 10000 + i."""
    from stable_baselines3 import SAC

    from smfp.agent import run_episodes
    from smfp.envs import make_env

    _, run_dir, summary = finished
    model = SAC.load(run_dir / "sb3_model.zip", device="cpu")
    env = make_env(ENV)
    try:
        eps = run_episodes(lambda obs: model.predict(obs, deterministic=True)[0], env, 1, 10_000)
    finally:
        env.close()
    assert eps[0]["return"] == pytest.approx(summary["return_mean"], rel=1e-9)


def test_aggregate_reads_it_as_algo_sb3_sac_and_the_csv_row_has_the_right_fields(finished, tmp_path):
    root, run_dir, summary = finished
    (run, ) = load_runs(root)
    assert (run.algo, run.task, run.seed, run.last_step, run.eval_mode) == ("sb3-sac", ENV, 0, 600, "mean")
    assert run.complete and run.commit == json.loads((run_dir / "provenance.json").read_text())["commit"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    csv_file = tmp_path / "mujoco.csv"
    assert write_csv(root, csv_file) == (2, 2)
    mean = np.mean([r["eval/return_mean"] for r in rows])
    sample = np.mean([r["eval/return_mean_sample"] for r in rows])
    assert csv_file.read_text().splitlines() == [
        "algo,commit,env,seed,steps,final_return,eval_mode",
        f"sb3-sac,{run.commit},{ENV},0,600,{mean:.3f},mean",
        f"sb3-sac,{run.commit},{ENV},0,600,{sample:.3f},sample"]


def test_a_finished_run_dir_reruns_as_a_no_op(finished, capsys):
    _, run_dir, summary = finished
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir()}
    capsys.readouterr()
    assert main(sb3(run_dir, "--threads", "2")) == 0  # threads may differ: same run
    out, err = capsys.readouterr()
    assert json.loads(out) == {**summary, "already_finished": True}
    assert err.splitlines() == [f"smfp bench sb3-sac: {run_dir} is finished (step 600); nothing to do"]
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir()} == before


def test_an_unfinished_run_dir_starts_again_from_scratch(tmp_path, capsys):
    run_dir = tmp_path / "r"
    flags = ["--total-steps", "250", "--eval-every", "0"]  # later flags win
    capsys.readouterr()
    assert main(sb3(run_dir, *flags)) == 0
    first = (run_dir / "metrics.jsonl").read_text()
    # as if killed mid-run: the final row (the finished mark) and the model are missing, a stale row is there
    (run_dir / "sb3_model.zip").unlink()
    (run_dir / "metrics.jsonl").write_text('{"step": 100, "eval/return_mean": 1.0}\n')
    capsys.readouterr()
    assert main(sb3(run_dir, *flags)) == 0
    err = capsys.readouterr().err
    assert "holds an unfinished run; starting it again from scratch" in err
    assert (run_dir / "metrics.jsonl").read_text() == first  # seeded: the same run again, nothing appended
    assert (run_dir / "sb3_model.zip").exists()


def test_user_mistakes_are_one_line(finished, tmp_path, capsys, monkeypatch):
    _, run_dir, _ = finished
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "config.json").write_text(json.dumps(TrainConfig(run_dir=str(ours)).to_dict()))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("x")
    fresh = tmp_path / "fresh"
    for argv, needles in [
        (sb3(ours), ("holds another run", "'sac'")),
        (sb3(junk), ("is not empty and holds no sb3-sac run",)),
        (sb3(run_dir, "--seed", "1"), ("other settings", "seed 0 -> 1")),
        (sb3(fresh, "--critic-lr", "0.001"), ("one learning rate",)),
        (sb3(fresh, "--grad-clip", "1"), ("unrecognized arguments",)),  # not an option of this command
        (sb3(fresh, "--total-steps", "0"), ("--total-steps must be positive",)),
        (sb3(fresh, "--env", "NoSuchEnv-v0"), ("NoSuchEnv-v0",)),
    ]:
        one_line_error_in_process(argv, capsys, *needles)
    monkeypatch.setattr("smfp.bench.sb3_reference.sb3_available", lambda: False)
    one_line_error_in_process(sb3(fresh), capsys, "needs Stable-Baselines3", "pip install")
    assert not fresh.exists() and (junk / "notes.txt").read_text() == "x"


def test_speed_bench_and_reference_share_one_hyperparameter_mapping():
    from smfp.bench.sb3_reference import reference_config, sb3_sac_kwargs

    cfg = reference_config("unused")
    kw = sb3_sac_kwargs(cfg)
    assert (kw["learning_rate"], kw["batch_size"], kw["learning_starts"], kw["buffer_size"]) == (3e-4, 256, 5000, 100_000)
    assert (kw["gamma"], kw["tau"], kw["train_freq"], kw["gradient_steps"]) == (0.99, 0.005, 1, 1)
    assert (kw["ent_coef"], kw["target_entropy"]) == ("auto_1.0", "auto")  # auto: -act_dim, as ours
    assert kw["policy_kwargs"]["net_arch"] == [256, 256] and kw["policy_kwargs"]["n_critics"] == 2
    src = (REPO / "src/smfp/bench/speed/train.py").read_text()
    assert "sb3_sac_kwargs(" in src and "ent_coef" not in src


def test_the_reference_runs_in_fp32_on_a_bf16_cpu_and_refuses_an_explicit_bf16(monkeypatch):
    from smfp.bench.sb3_reference import reference_config
    from smfp.config import ConfigError
    from smfp.precision import NATIVE_BF16_ENV

    monkeypatch.setenv(NATIVE_BF16_ENV, "1")  # auto would be bf16 for our own runs here
    assert reference_config("unused").update.precision == "fp32"
    base = TrainConfig()
    base.update.precision = "bf16"
    with pytest.raises(ConfigError, match="--precision bf16"):
        reference_config("unused", base)


def test_git_commit_of_a_folder_outside_any_checkout_is_unknown(tmp_path):
    assert git_commit(tmp_path) == "unknown"
    assert git_commit(tmp_path / "missing") == "unknown"


def _git_or_skip(*args, cwd):
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("git is not available")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_git_commit_is_dirty_for_changed_code_but_not_for_changed_docs(tmp_path):
    repo = tmp_path / "repo"
    (repo / "src" / "pkg").mkdir(parents=True)
    (repo / "docs" / "results").mkdir(parents=True)
    (repo / "src" / "pkg" / "code.py").write_text("x = 1\n")
    (repo / "docs" / "results" / "table.csv").write_text("a,b\n")
    (repo / "README.md").write_text("readme\n")
    _git_or_skip("init", "-q", cwd=repo)
    _git_or_skip("add", ".", cwd=repo)
    _git_or_skip("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first", cwd=repo)
    head = _git_or_skip("rev-parse", "HEAD", cwd=repo).strip()
    package = repo / "src" / "pkg"
    (repo / "docs" / "results" / "table.csv").write_text("a,b\n1,2\n")  # a results row: still clean
    (repo / "untracked.txt").write_text("not tracked\n")
    assert git_commit(package) == head
    (repo / "README.md").write_text("changed\n")  # outside docs/: dirty, seen from any folder of the checkout
    assert git_commit(package) == head + "-dirty"
    (repo / "README.md").write_text("readme\n")
    (repo / "src" / "pkg" / "code.py").write_text("x = 2\n")
    assert git_commit(package) == head + "-dirty"
    assert git_commit(repo / "docs") == head + "-dirty"


def test_git_commit_of_this_checkout_is_head():
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("git is not available")
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", git_commit())
    assert git_commit().split("-")[0] == head.stdout.strip()
