"""Checkpoints, exact restore, resume through the CLI, and same-seed reproducibility."""

from __future__ import annotations

import copy
import dataclasses
import json

import torch

from conftest import TINY_FLAGS, assert_same_state, load_weights_only, read_jsonl, run_cli, tiny_config
from smfp.storage.checkpoint import checkpoint_path, list_checkpoints, save_checkpoint
from smfp.training.loop import run_training, train
from smfp.training.run import open_run
from smfp.update import Learner


def test_restored_learner_state_equals_saved_state(tmp_path):
    """Train 1200 steps (checkpoints at 600 and 1200), then resume the run: the restored learner
    (weights, targets, optimizer moments, temperature, counters), replay buffer and RNG states are
    exactly the live state that was checkpointed."""
    # (rewritten against the loop's seams: the run's checkpoint writer and the objects open_run builds, instead
    # of monkeypatching loop.py's imports; the assertions are unchanged)
    saved: dict[int, dict] = {}

    def recording_save(run_dir, step, config, meta, learner_state, rng, buffer_state, keep, extra=None):
        saved[step] = copy.deepcopy({"learner": learner_state, "rng": rng, "buffer": buffer_state})
        return save_checkpoint(run_dir, step, config, meta, learner_state, rng, buffer_state, keep, extra)

    run = tmp_path / "run"
    cfg = tiny_config(run, total_steps=1200, seed=4, checkpoint_every=600)
    with open_run(cfg) as opened:
        opened.save_checkpoint = recording_save
        result = run_training(opened)
    assert result.step == 1200 and sorted(saved) == [600, 1200]
    assert [s for s, _ in list_checkpoints(run)] == [600, 1200]
    live = saved[1200]

    # what is on disk (read with weights_only=True) is what was saved
    ckpt = load_weights_only(checkpoint_path(run, 1200))
    assert ckpt["step"] == 1200
    assert_same_state(ckpt["learner"], live["learner"], "file.learner")
    assert_same_state(ckpt["rng"], live["rng"], "file.rng")
    assert_same_state(load_weights_only(run / "checkpoints" / ckpt["buffer_file"]), live["buffer"], "file.buffer")

    # the saved state is a trained one, so the comparisons below are not between two blank states
    assert live["learner"]["updates"] == 1000
    fresh = Learner(cfg.resolved(), 3, 1)
    assert not torch.equal(fresh.policy.state_dict()["net.0.weight"], live["learner"]["policy"]["net.0.weight"])
    moments = [s["exp_avg_sq"] for s in live["learner"]["critic_opt"]["state"].values()]
    assert moments and all(m.abs().sum() > 0 for m in moments)
    assert live["buffer"]["size"] == 1200 and live["learner"]["log_alpha"].item() != 0.0

    # resume (no further steps): the objects the run restored into
    torch.manual_seed(12345)  # scramble the global RNG: the resume must put the saved one back
    with open_run(dataclasses.replace(cfg, resume=True)) as resumed:
        assert resumed.start_step == 1200
        assert_same_state(resumed.learner.state_dict(), live["learner"], "restored.learner")
        assert_same_state(resumed.buffer.state_dict(), live["buffer"], "restored.buffer")
        assert torch.equal(torch.get_rng_state(), live["rng"]["torch"])
        assert resumed.rng.bit_generator.state == live["rng"]["numpy"]
        assert run_training(resumed).step == 1200


def test_resume_with_larger_total_steps_carries_on(tmp_path):
    run = tmp_path / "run"
    common = ["train", "--algo", "sac", "--env", "Pendulum-v1", "--seed", "3", "--run-dir", str(run),
              "--learning-starts", "200", "--log-every", "200", "--eval-every", "300", "--eval-episodes", "1",
              "--checkpoint-every", "300", *TINY_FLAGS]
    first = run_cli(*common, "--total-steps", "600")
    assert first.returncode == 0, first.stderr
    metrics = run / "metrics.jsonl"
    before = read_jsonl(metrics)
    # an interrupted process may have logged past its last checkpoint and torn its last line
    with open(metrics, "a") as f:
        f.write(json.dumps({"step": 800, "losses/critic": 123.0}) + "\n" + '{"step": 16')
    # each start records the code and the machine; pretend the first ran on another CPU generation
    (start,) = read_jsonl(run / "starts.jsonl")
    assert start["step"] == 0 and start["isa"] == torch.backends.cpu.get_cpu_capability() and start["commit"]
    assert start["torch"] == torch.__version__ and start["threads"] == 1 and start["precision"] in ("fp32", "bf16")
    assert "another CPU" not in first.stderr
    (run / "starts.jsonl").write_text(json.dumps({**start, "isa": "ISA-ELSEWHERE"}) + "\n")

    second = run_cli(*common, "--total-steps", "1000", "--resume")
    assert second.returncode == 0, second.stderr
    assert "Traceback" not in second.stderr
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary["step"] == 1000

    rows = read_jsonl(metrics)
    assert rows[: len(before)] == before  # the first process's lines are kept as they were
    train_rows = [r for r in rows if "train/sps" in r]
    eval_rows = [r for r in rows if "eval/return_mean" in r]
    assert [r["step"] for r in train_rows] == list(range(200, 1001, 200))  # no gap, no duplicate
    assert [r["step"] for r in eval_rows] == [300, 600, 900, 1000]
    assert all(r.get("losses/critic") != 123.0 for r in rows)
    # the update counter carried on from the checkpoint (one update per step after learning starts)
    assert [r["train/updates"] for r in train_rows] == [s - 200 for s in range(200, 1001, 200)]

    ckpt = load_weights_only(checkpoint_path(run, 1000))
    assert ckpt["step"] == 1000 and ckpt["learner"]["updates"] == 800
    assert json.loads(ckpt["config"])["total_steps"] == 1000
    assert json.loads((run / "config.json").read_text())["total_steps"] == 1000
    assert "resumed at step 600" in second.stderr
    assert [r["step"] for r in read_jsonl(run / "starts.jsonl")] == [0, 600]
    assert (f"resumed on another CPU, library version, thread count or precision (isa ISA-ELSEWHERE -> "
            f"{start['isa']})") in second.stderr and "bit-for-bit" in second.stderr


def _loss_lines(run_dir) -> list[dict]:
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "losses/critic" in r]
    return [{k: v for k, v in r.items() if "sps" not in k} for r in rows]  # steps/s is wall-clock


def test_same_seed_same_config_gives_identical_training_metrics(tmp_path):
    def config(name, seed, total):
        return tiny_config(tmp_path / name, total_steps=total, seed=seed, learning_starts=300, log_every=300,
                           eval_every=0, checkpoint_every=0)

    seen = []
    train(config("a", 11, 1500), callback=lambda step, row: seen.append(row))
    train(config("b", 11, 1500))
    a, b = _loss_lines(tmp_path / "a"), _loss_lines(tmp_path / "b")
    assert [r["step"] for r in a] == list(range(600, 1501, 300))
    assert a == b
    assert seen == read_jsonl(tmp_path / "a" / "metrics.jsonl")  # the callback sees every row, as written

    # ...and the comparison can fail: another seed gives other losses from the first update line on
    train(config("c", 12, 600))
    c = _loss_lines(tmp_path / "c")
    assert c[0]["step"] == 600 and c[0]["losses/critic"] != a[0]["losses/critic"]


def test_a_run_saved_before_lambda_per_alpha_existed_resumes_only_with_its_fixed_lambda(tmp_path):
    """Runs saved before ``update.lambda_per_alpha`` existed used a fixed lambda: a resume with the new
    default (lambda per alpha) would change the method, so it is refused, naming the field."""
    import pytest

    from smfp.config import ConfigError

    cfg = tiny_config(tmp_path / "r", total_steps=400, learning_starts=200, checkpoint_every=200, eval_every=0)
    cfg.algo = "mdpo"
    cfg.update.lambda_per_alpha = False
    cfg.log.tensorboard = False
    train(cfg)
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    del saved["update"]["lambda_per_alpha"]  # what an older version wrote
    (tmp_path / "r" / "config.json").write_text(json.dumps(saved))
    again = dataclasses.replace(cfg, total_steps=600, resume=True, update=dataclasses.replace(cfg.update))
    again.update.lambda_per_alpha = None  # the new default: on for mdpo
    with pytest.raises(ConfigError, match="update.lambda_per_alpha"):
        train(again)
    again.update.lambda_per_alpha = False
    assert train(again).step == 600


def test_a_damaged_starts_record_is_a_warning_and_the_resume_goes_on(tmp_path, capsys):
    """starts.jsonl documents a run; the run does not need it: junk lines are skipped, an unwritable one is a warning."""
    run = tmp_path / "run"
    cfg = tiny_config(run, total_steps=400, learning_starts=200, log_every=200, eval_every=0, checkpoint_every=200)
    train(cfg)
    with open(run / "starts.jsonl", "a") as f:
        f.write('{"step": 4')  # torn by a crash
    assert train(dataclasses.replace(cfg, total_steps=600, resume=True)).step == 600
    assert [r["step"] for r in read_jsonl(run / "starts.jsonl")] == [0, 400]
    (run / "starts.jsonl").unlink()
    (run / "starts.jsonl").mkdir()  # cannot be read or replaced
    capsys.readouterr()
    assert train(dataclasses.replace(cfg, total_steps=800, resume=True)).step == 800
    err = capsys.readouterr().err
    assert f"smfp: warning: cannot record this start in {run / 'starts.jsonl'}" in err and "resumed at step 600" in err
