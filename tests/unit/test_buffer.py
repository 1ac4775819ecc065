"""Replay buffer: wrap-around, aligned sampling, state round trip, and what the loop stores."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from conftest import ENV_MODULE, load_weights_only, tiny_config
from smfp.buffer import ReplayBuffer
from smfp.envs import make_env
from smfp.training.loop import train


def _transition(i: int, obs_dim: int = 3, act_dim: int = 2):
    """Transition number ``i``: every field encodes ``i`` so rows can be identified after sampling."""
    obs = np.full(obs_dim, i, np.float32)
    return obs, np.full(act_dim, i / 100.0, np.float32), float(10 * i), obs + 0.5, i % 3 == 0


def _filled(capacity: int, n: int, seed: int = 0) -> ReplayBuffer:
    buf = ReplayBuffer(3, 2, capacity, seed=seed)
    for i in range(n):
        buf.add(*_transition(i))
    return buf


def test_wrap_around_overwrites_oldest():
    buf = _filled(capacity=5, n=8)
    assert len(buf) == 5 and buf.pos == 3
    # slots 0..2 hold transitions 5..7, slots 3..4 still hold 3..4
    assert buf.obs[:, 0].tolist() == [5.0, 6.0, 7.0, 3.0, 4.0]
    assert buf.reward.tolist() == [50.0, 60.0, 70.0, 30.0, 40.0]
    assert buf.terminated.tolist() == [0.0, 1.0, 0.0, 1.0, 0.0]
    batch = buf.sample(500)
    assert set(batch.obs[:, 0].tolist()) == {3.0, 4.0, 5.0, 6.0, 7.0}  # nothing older survives


def test_sample_before_full_only_sees_written_rows_and_rows_stay_aligned():
    buf = _filled(capacity=100, n=7)
    batch = buf.sample(400)
    ids = batch.obs[:, 0]
    assert set(ids.tolist()) == set(float(i) for i in range(7))
    assert torch.equal(batch.action[:, 0], (ids / 100.0).float())
    assert torch.equal(batch.reward, 10 * ids)
    assert torch.equal(batch.next_obs, batch.obs + 0.5)
    assert torch.equal(batch.terminated, (ids.long() % 3 == 0).float())


def test_sample_empty_raises():
    with pytest.raises(RuntimeError):
        ReplayBuffer(3, 2, 10).sample(4)


def test_sampling_is_seeded():
    a, b, c = _filled(50, 30, seed=1), _filled(50, 30, seed=1), _filled(50, 30, seed=2)
    assert torch.equal(a.sample(64).obs, b.sample(64).obs)
    assert not torch.equal(a.sample(64).obs, c.sample(64).obs)


def test_state_dict_round_trip_through_weights_only_file():
    src = _filled(capacity=6, n=9, seed=3)
    src.sample(10)  # advance the sampling generator
    f = io.BytesIO()
    torch.save(src.state_dict(), f)
    f.seek(0)
    state = torch.load(f, weights_only=True)

    dst = ReplayBuffer(3, 2, 6, seed=99)
    dst.load_state_dict(state)
    assert (dst.pos, dst.size) == (src.pos, src.size) == (3, 6)
    for name in ReplayBuffer.FIELDS:
        assert torch.equal(getattr(dst, name), getattr(src, name)), name
    # same future: identical samples, and the next add overwrites the same (oldest) slot
    for _ in range(3):
        assert torch.equal(dst.sample(16).obs, src.sample(16).obs)
    src.add(*_transition(100))
    dst.add(*_transition(100))
    assert torch.equal(dst.obs, src.obs) and dst.pos == src.pos == 4


def test_state_dict_stores_only_the_filled_part():
    state = _filled(capacity=1000, n=4).state_dict()
    assert state["obs"].shape == (4, 3) and state["size"] == 4


def test_load_into_larger_buffer_appends_after_saved_rows():
    """Resuming with a larger --total-steps gives a larger buffer; the saved rows must survive."""
    src = _filled(capacity=5, n=7)  # wrapped: pos 2
    dst = ReplayBuffer(3, 2, 8)
    dst.load_state_dict(src.state_dict())
    assert len(dst) == 5 and torch.equal(dst.obs[:5], src.obs)
    dst.add(*_transition(50))
    assert dst.obs[5, 0].item() == 50.0 and torch.equal(dst.obs[:5], src.obs)


def test_load_into_too_small_buffer_raises():
    with pytest.raises(ValueError):
        ReplayBuffer(3, 2, 4).load_state_dict(_filled(capacity=10, n=6).state_dict())


# --- what the training loop stores ---------------------------------------------------------------

def _final_buffer(run_dir):
    ckpts = sorted((run_dir / "checkpoints").glob("buffer_*.pt"))
    assert ckpts, "the run saved no replay buffer"
    return load_weights_only(ckpts[-1])


def test_loop_stores_true_final_obs_and_no_termination_on_truncation(tmp_path, env_module_dir):
    """Echo task: time limit 10 (truncation). The transition that hits the limit keeps the task's real
    last observation (t = 10) as next_obs and terminated = 0; the next row starts from the reset obs."""
    cfg = tiny_config(tmp_path / "run", env=f"{ENV_MODULE}:SmfpTestEcho-v0", total_steps=35, learning_starts=1000,
                      log_every=10, eval_every=0, checkpoint_every=0)
    train(cfg)
    buf = _final_buffer(tmp_path / "run")
    assert buf["size"] == 35
    t_obs, t_next = buf["obs"][:, 0], buf["next_obs"][:, 0]
    assert torch.equal(t_next, t_obs + 1)  # next_obs is always the step's own result, never the reset obs
    assert t_next.max().item() == 10.0
    last = torch.nonzero(t_next == 10).flatten().tolist()
    assert last == [9, 19, 29]
    assert torch.count_nonzero(buf["terminated"]) == 0  # truncation is not termination
    assert all(buf["obs"][i + 1, 0].item() == 0.0 for i in last)  # a new episode starts after each
    # the echoed raw action is the stored [-1, 1] action rescaled to [-2, 2] x [0, 10]
    a = buf["action"]
    assert torch.allclose(buf["next_obs"][:, 1], 2.0 * a[:, 0], atol=1e-5)
    assert torch.allclose(buf["next_obs"][:, 2], 5.0 * (a[:, 1] + 1.0), atol=1e-5)


def test_loop_stores_termination(tmp_path, env_module_dir):
    cfg = tiny_config(tmp_path / "run", env=f"{ENV_MODULE}:SmfpTestTerminal-v0", total_steps=12,
                      learning_starts=1000, log_every=4, eval_every=0, checkpoint_every=0)
    train(cfg)
    buf = _final_buffer(tmp_path / "run")
    t_next = buf["next_obs"][:, 0]
    assert torch.equal(buf["terminated"], (t_next == 4).float())
    assert buf["terminated"].sum().item() == 3


def test_loop_pendulum_truncation_keeps_real_final_observation(tmp_path):
    """Replaying the stored actions in a fresh, equally seeded Pendulum reproduces every stored
    observation, including the one returned by the truncating 200th step."""
    seed = 5
    cfg = tiny_config(tmp_path / "run", total_steps=230, seed=seed, learning_starts=1000, log_every=10,
                      eval_every=0, checkpoint_every=0)
    train(cfg)
    buf = _final_buffer(tmp_path / "run")
    env = make_env("Pendulum-v1", seed=seed)
    obs, _ = env.reset(seed=seed)
    for i in range(200):
        assert np.array_equal(buf["obs"][i].numpy(), obs), i
        obs, _, terminated, truncated, _ = env.step(buf["action"][i].numpy())
        assert np.array_equal(buf["next_obs"][i].numpy(), obs), i
        assert buf["terminated"][i].item() == 0.0
    assert truncated and not terminated
    assert not np.array_equal(buf["obs"][200].numpy(), buf["next_obs"][199].numpy())  # reset in between
    assert torch.count_nonzero(buf["terminated"]) == 0
    env.close()
