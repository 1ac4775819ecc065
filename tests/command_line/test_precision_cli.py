"""The default precision (auto) on a CPU with native bfloat16, through the commands a user runs: the rest of the
suite resolves auto to fp32 (conftest), so this file sets SMFP_NATIVE_BF16=1 for its subprocesses."""

from __future__ import annotations

import json

import pytest

from conftest import TINY_FLAGS, run_cli
from smfp.precision import NATIVE_BF16_ENV

WIDE = ["--hidden", "128", "128", "--critic-hidden", "128", "128"]  # wide enough for bf16 layers


def _tiny(*flags: str) -> list[str]:
    out = list(TINY_FLAGS)
    for i, flag in enumerate(out):  # the tiny flags' 32-wide networks would stay fp32 whatever the precision
        if flag in ("--hidden", "--critic-hidden"):
            out[i + 1] = out[i + 2] = "128"
    return out + list(flags)


def test_auto_trains_resumes_and_exports_in_bf16_where_the_cpu_has_it(tmp_path, monkeypatch):
    monkeypatch.setenv(NATIVE_BF16_ENV, "1")
    run = tmp_path / "run"
    common = ["--env", "Pendulum-v1", "--learning-starts", "100", "--eval-every", "300", "--eval-episodes", "1",
              "--run-dir", run]
    first = run_cli("train", "--algo", "smfp", "--total-steps", "300", *common, *_tiny())
    assert first.returncode == 0, first.stderr
    assert json.loads((run / "config.json").read_text())["update"]["precision"] == "bf16"
    monkeypatch.setenv(NATIVE_BF16_ENV, "0")  # resumed on a CPU without it: the run keeps what it ran with
    again = run_cli("train", "--algo", "smfp", "--total-steps", "400", "--resume", *common, *_tiny())
    assert again.returncode == 0, again.stderr
    assert json.loads((run / "config.json").read_text())["update"]["precision"] == "bf16"
    exported = run_cli("export", run, "--format", "onnx", "--out", tmp_path / "a.onnx")
    assert exported.returncode == 0, exported.stderr


def test_the_sb3_reference_runs_in_fp32_where_auto_would_be_bf16(tmp_path, monkeypatch):
    pytest.importorskip("stable_baselines3")
    monkeypatch.setenv(NATIVE_BF16_ENV, "1")
    out = tmp_path / "sb3"
    proc = run_cli("bench", "sb3-sac", "--env", "Pendulum-v1", "--seed", "0", "--total-steps", "200",
                   "--learning-starts", "100", "--eval-every", "200", "--eval-episodes", "1", "--out", out, *WIDE)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "config.json").read_text())["update"]["precision"] == "fp32"
