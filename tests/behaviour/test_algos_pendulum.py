"""Training smoke test of every algorithm on Pendulum-v1 through ``smfp.train``.

4000 environment steps (500 uniform-random, then one update per step), MLPs 64-64, Adam 1e-3, batch 128,
anchor copied every 100 updates for the mirror-descent algorithms. Checks that every logged loss is finite
and that the final evaluation (5 episodes, the algorithm's default eval mode) beats a uniform-random policy
measured on the same 5 episode starts in the test itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from smfp.agent import run_episodes
from smfp.config import (BufferConfig, CheckpointConfig, CriticConfig, EnvConfig, EvalConfig, LogConfig,
                         PolicyConfig, TrainConfig, UpdateConfig)
from smfp.envs import make_env
from smfp.training.loop import train

EPISODES = 5
SEED = 0
EVAL_SEED = SEED + 10_000  # the training loop evaluates episode i from reset(seed=EVAL_SEED + i)
MARGIN = 300.0  # Pendulum returns: random about -1100, solved about -150


@pytest.fixture(scope="module")
def random_return():
    env = make_env("Pendulum-v1")
    rng = np.random.default_rng(SEED)
    try:
        eps = run_episodes(lambda o: rng.uniform(-1.0, 1.0, env.action_space.shape).astype(np.float32), env,
                           EPISODES, EVAL_SEED)
    finally:
        env.close()
    return float(np.mean([e["return"] for e in eps]))


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["sac", "mdpo", "smfp"])
def test_pendulum_smoke(algo, tmp_path, random_return):
    cfg = TrainConfig(
        algo=algo, total_steps=4000, seed=SEED, run_dir=str(tmp_path / algo), threads=1,
        env=EnvConfig(env="Pendulum-v1"),
        policy=PolicyConfig(hidden=(64, 64), sigma_hidden=(32,)),
        critic=CriticConfig(critic_hidden=(64, 64)),
        update=UpdateConfig(learning_starts=500, actor_lr=1e-3, critic_lr=1e-3, batch_size=128, anchor_period=100),
        buffer=BufferConfig(buffer_size=4000, save_buffer=False),
        eval=EvalConfig(eval_every=0, eval_episodes=EPISODES),
        log=LogConfig(log_every=500, progress=False, tensorboard=False),
        checkpoint=CheckpointConfig(checkpoint_every=0),
    )
    rows = []
    threads = torch.get_num_threads()
    try:
        result = train(cfg, callback=lambda step, row: rows.append(row))
    finally:
        torch.set_num_threads(threads)

    loss_keys = {"losses/critic", "losses/actor"} | ({"losses/meanflow"} if algo == "smfp" else set())
    update_rows = [r for r in rows if "losses/critic" in r]
    assert len(update_rows) == 7  # steps 1000, 1500, ..., 4000
    seen = set()
    for row in update_rows:
        for key, value in row.items():
            if key.startswith("losses/") or key in ("train/entropy", "train/kl_anchor", "train/grad_norm_actor"):
                assert isinstance(value, float) and math.isfinite(value), (key, value, row["step"])
                seen.add(key)
    assert loss_keys <= seen

    final = result.final_eval["return_mean"]
    print(f"{algo}: final eval return {final:.1f} ({result.final_eval['mode']}), random policy {random_return:.1f}")
    assert result.step == 4000 and not result.stopped_early
    assert final > random_return + MARGIN
