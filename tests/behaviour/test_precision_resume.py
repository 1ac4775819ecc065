"""A resumed run keeps the matmul precision it ran with when --precision is left at its default (auto): a run
started in fp32 (before auto became the default, or on a CPU without native bfloat16) does not switch to bf16
mid-run when it resumes on a CPU with it; an explicit --precision still decides."""

from __future__ import annotations

import dataclasses
import json

import torch

from conftest import tiny_config
from smfp.config import TrainConfig
from smfp.precision import NATIVE_BF16_ENV
from smfp.storage.rundir import resolve_for_run_dir
from smfp.sweep.grid import build_grid, run_state
from smfp.training.loop import run_training
from smfp.training.run import open_run


def _saved_precision(run_dir) -> str:
    return json.loads((run_dir / "config.json").read_text())["update"]["precision"]


def test_a_run_started_in_fp32_resumes_in_fp32_on_a_bf16_cpu_unless_asked(tmp_path, monkeypatch):
    run = tmp_path / "run"
    cfg = tiny_config(run, total_steps=400, learning_starts=200, checkpoint_every=200, eval_every=400)
    cfg.policy.hidden = cfg.critic.critic_hidden = (128, 128)  # wide enough for bf16 layers
    monkeypatch.setenv(NATIVE_BF16_ENV, "0")  # a CPU without native bfloat16: auto is fp32
    assert cfg.update.precision == "auto"
    with open_run(cfg) as opened:
        assert opened.learner.matmul_dtype is None
        run_training(opened)
    assert _saved_precision(run) == "fp32"

    monkeypatch.setenv(NATIVE_BF16_ENV, "1")  # the same run on a CPU with it
    longer = dataclasses.replace(cfg, resume=True, total_steps=600)
    with open_run(longer) as resumed:
        assert resumed.start_step == 400 and resumed.cfg.update.precision == "fp32"
        assert resumed.learner.matmul_dtype is None
        run_training(resumed)
    assert _saved_precision(run) == "fp32"

    explicit = dataclasses.replace(longer, total_steps=800, update=dataclasses.replace(cfg.update, precision="bf16"))
    with open_run(explicit) as resumed:
        assert resumed.start_step == 600 and resumed.learner.matmul_dtype == torch.bfloat16
    # a new run in another dir takes what the CPU runs
    assert resolve_for_run_dir(dataclasses.replace(cfg, run_dir=str(tmp_path / "new"))).update.precision == "bf16"


def test_resolve_for_run_dir_reads_the_saved_precision(tmp_path, monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, "1")
    run = tmp_path / "run"
    run.mkdir()
    cfg = TrainConfig(algo="sac", run_dir=str(run), resume=True)
    for saved, expected in (("fp32", "fp32"), ("bf16", "bf16"), (None, "fp32")):  # None: saved before the field
        data = dataclasses.replace(cfg, update=dataclasses.replace(cfg.update, precision="fp32")).resolved().to_dict()
        if saved is None:
            del data["update"]["precision"]
        else:
            data["update"]["precision"] = saved
        (run / "config.json").write_text(json.dumps(data))
        assert resolve_for_run_dir(cfg).update.precision == expected
    assert resolve_for_run_dir(dataclasses.replace(cfg, resume=False)).update.precision == "bf16"
    (run / "config.json").write_text("{not json")  # left to the run dir's own check, which names the file
    assert resolve_for_run_dir(cfg).update.precision == "bf16"


def test_a_sweep_continues_its_fp32_runs_in_fp32(tmp_path, monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, "0")
    base = tiny_config(tmp_path / "unused")
    (spec,) = build_grid(["sac"], ["Pendulum-v1"], [0], tmp_path / "sweep", base, 1)
    assert spec.config.update.precision == "fp32"
    spec.run_dir.mkdir(parents=True)
    (spec.run_dir / "config.json").write_text(json.dumps(spec.config.to_dict()))

    monkeypatch.setenv(NATIVE_BF16_ENV, "1")
    (again,) = build_grid(["sac"], ["Pendulum-v1"], [0], tmp_path / "sweep", base, 1)
    assert again.config.update.precision == "fp32"
    assert run_state(again).step == 0  # the same run: nothing differs
    (other,) = build_grid(["sac"], ["Pendulum-v1"], [1], tmp_path / "sweep", base, 1)
    assert other.config.update.precision == "bf16"  # a run not started yet takes what the CPU runs
