"""Shared helpers: tiny training configs, the real CLI in a subprocess, a user env module."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

from smfp.config import TrainConfig

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

ENV_MODULE = "smfp_test_envs"
ENV_MODULE_SOURCE = '''
"""Tiny Box-action tasks for the tests (registered on import)."""
import gymnasium as gym
import numpy as np
from gymnasium import spaces


class EchoEnv(gym.Env):
    """Observation ``[t, raw action[0], raw action[1]]``: it echoes the action the task received.

    The action box is asymmetric ([-2, 2] x [0, 10]) so that a rescaling bug shows. Reward 1 per
    step. ``terminate_at``: terminate at that step; ``nan_at``: observation NaN from that step on.
    """

    def __init__(self, terminate_at=None, nan_at=None):
        self.action_space = spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 10.0], np.float32))
        self.observation_space = spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.terminate_at, self.nan_at = terminate_at, nan_at
        self.t = 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.t += 1
        a = np.asarray(action, dtype=np.float64)
        obs = np.array([self.t, a[0], a[1]], dtype=np.float32)
        if self.nan_at is not None and self.t >= self.nan_at:
            obs[0] = np.nan
        terminated = self.terminate_at is not None and self.t >= self.terminate_at
        return obs, 1.0, terminated, False, {}


gym.register("SmfpTestEcho-v0", entry_point=__name__ + ":EchoEnv", max_episode_steps=10)
gym.register("SmfpTestTerminal-v0", entry_point=__name__ + ":EchoEnv", max_episode_steps=10,
             kwargs={"terminate_at": 4})
gym.register("SmfpTestNaN-v0", entry_point=__name__ + ":EchoEnv", max_episode_steps=10, kwargs={"nan_at": 3})
'''


def smfp_command() -> list[str]:
    script = Path(sys.executable).parent / "smfp"
    return [str(script)] if script.exists() else [sys.executable, "-m", "smfp.cli.main"]


@pytest.fixture(scope="session")
def env_module_dir(tmp_path_factory) -> Path:
    """A folder holding ``smfp_test_envs.py``, importable in this process and in subprocesses."""
    folder = tmp_path_factory.mktemp("user_envs")
    (folder / f"{ENV_MODULE}.py").write_text(textwrap.dedent(ENV_MODULE_SOURCE))
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


def run_cli(*args: str, cwd: Path | None = None, pythonpath: Path | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(pythonpath), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([*smfp_command(), *map(str, args)], cwd=cwd or REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Non-zero exit, stderr exactly one non-empty line (naming the problem), no traceback."""
    assert proc.returncode != 0, f"expected failure, got rc=0\nstdout={proc.stdout}\nstderr={proc.stderr}"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"stderr is not one line:\n{proc.stderr}"
    for needle in needles:
        assert needle.lower() in lines[0].lower(), f"{needle!r} not in {lines[0]!r}"
    return lines[0]


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
    """``smfp.cli.main.main`` in this process (no interpreter start-up): one stderr line, non-zero exit."""
    from smfp.cli.main import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code not in (0, None)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]
    return lines[0]
