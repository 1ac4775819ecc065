"""Shared helpers: tiny training configs, the real CLI in a subprocess, a user env module."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

from smfp.config import TrainConfig
from smfp.precision import NATIVE_BF16_ENV

# The default precision (auto) follows the CPU: bf16 where it has AMX or avx512_bf16. Every test, and every command
# a test runs in a subprocess, resolves auto to fp32, so that no test's numbers depend on the machine; the bf16 path
# has its own tests, which ask for it by name.
os.environ[NATIVE_BF16_ENV] = "0"

REPO = Path(__file__).resolve().parents[1]

# Every test gives the same answer on every run: hypothesis draws its examples from a fixed seed (derandomize)
# and keeps no example database between runs; every test starts from the same global RNG states.
settings.register_profile("smfp", derandomize=True, database=None, deadline=None)
settings.load_profile("smfp")


@pytest.fixture(autouse=True)
def _seeded_global_rngs():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)

# Small networks and batches keep every training run in the tests to a few seconds on one core.
TINY_FLAGS = ["--hidden", "32", "32", "--critic-hidden", "32", "32", "--batch-size", "32", "--no-progress",
              "--threads", "1"]

ENV_MODULE = "smfp_test_envs"  # tests/envs/smfp_test_envs.py: every test task, registered on import
ENV_MODULE_DIR = REPO / "tests" / "envs"
sys.path.insert(0, str(ENV_MODULE_DIR))  # in-process runs import it as a user's module would be


def smfp_command() -> list[str]:
    script = Path(sys.executable).parent / "smfp"
    return [str(script)] if script.exists() else [sys.executable, "-m", "smfp.cli.main"]


@pytest.fixture(scope="session")
def env_module_dir() -> Path:
    """The folder of ``smfp_test_envs.py`` (on ``sys.path`` in this process); pass it as ``pythonpath`` to the CLI."""
    return ENV_MODULE_DIR


def run_cli(*args: str, cwd: Path | None = None, pythonpath: Path | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(pythonpath), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([*smfp_command(), *map(str, args)], cwd=cwd or REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


# What a user sees when a command fails: "smfp[ SUBCOMMAND]: error: WHAT; FIX" (smfp.cli.main.fail).
ERROR_LINE = re.compile(r"^smfp( [\w-]+)*: error: \S")


def error_line(code, stderr: str, *needles: str, stdout: str = "", after_messages: bool = False) -> str:
    """The one error of a failed command, checked: a non-zero exit, no traceback, one error line (the
    only stderr line, or with ``after_messages`` the last one after the run's own ``smfp`` messages)
    that names the problem (every needle in it, case-insensitive). Returns the line."""
    where = f"exit {code!r}\nstdout={stdout}\nstderr={stderr}"
    assert isinstance(code, int) and code != 0, f"expected a failure, got {where}"
    assert "Traceback" not in stderr and "Traceback" not in stdout, where
    lines = stderr.splitlines()
    assert lines and ERROR_LINE.match(lines[-1]), f"the last stderr line is not an error line: {where}"
    if after_messages:
        assert sum(bool(ERROR_LINE.match(line)) for line in lines) == 1, f"more than one error line: {where}"
        assert all(line.startswith("smfp") for line in lines), f"stray output: {where}"
    else:
        assert len(lines) == 1, f"stderr is not one line: {where}"
    for needle in needles:
        assert needle.lower() in lines[-1].lower(), f"{needle!r} not in {lines[-1]!r}"
    return lines[-1]


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """``error_line`` of a CLI subprocess."""
    return error_line(proc.returncode, proc.stderr, *needles, stdout=proc.stdout)


def tiny_config(run_dir: Path, env: str = "Pendulum-v1", total_steps: int = 1200, seed: int = 0,
                learning_starts: int = 200, log_every: int = 200, eval_every: int = 600,
                checkpoint_every: int = 600, eval_episodes: int = 1) -> TrainConfig:
    """A SAC config small enough to train ~1000 steps in about two seconds."""
    cfg = TrainConfig(algo="sac", total_steps=total_steps, seed=seed, run_dir=str(run_dir), threads=1)
    cfg.env.env = env
    cfg.policy.hidden = (32, 32)
    cfg.critic.critic_hidden = (32, 32)
    cfg.update.batch_size = 32
    cfg.update.learning_starts = learning_starts
    cfg.log.log_every = log_every
    cfg.log.progress = False
    cfg.eval.eval_every = eval_every
    cfg.eval.eval_episodes = eval_episodes
    cfg.checkpoint.checkpoint_every = checkpoint_every
    return cfg


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def load_weights_only(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a, b, where: str = "state") -> None:
    """Recursive exact equality of nested dicts/lists of tensors, arrays and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), f"{where}: tensor vs {type(b).__name__}"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}"
        assert torch.equal(a, b), f"{where}: tensors differ"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def one_line_error_in_process(argv: list[str], capsys, *needles: str) -> str:
    """``error_line`` of ``smfp.cli.main.main`` run in this process (no interpreter start-up)."""
    from smfp.cli.main import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return error_line(exc.value.code, err, *needles, stdout=out)


# The files that take minutes (measured with --durations=0), first: `make test` spreads whole files over its xdist
# workers in collection order, and a long file collected last would leave one worker running it alone.
LONG_FILES = ("test_monitoring.py", "test_fuzz_files.py", "test_algos_pendulum.py", "test_sweep.py",
              "test_bandit_suite.py", "test_reliability_resume.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: LONG_FILES.index(item.path.name) if item.path.name in LONG_FILES else len(LONG_FILES))
