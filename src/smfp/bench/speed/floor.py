"""The matmul floor of one gradient update: how close an update is to the arithmetic it must do.

``update_floor(cfg, obs_dim, act_dim)`` builds the candidate's ``Learner`` on a replay buffer of random
transitions, runs a few updates to warm up, then records every matrix product one ``Learner.update``
dispatches (forward and backward: ``mm``, ``addmm``, ``bmm``, ``baddbmm``, with their shapes and dtypes) under
a ``TorchDispatchMode``. It times the update itself (median of ``updates`` calls) and the same GEMMs run
alone, back to back on fresh tensors of the recorded shapes (median of ``reps`` rounds): the floor (both timed in
the thread's CPU time with one torch thread, so that waiting for a core on a shared machine does not count). The
update's time as a multiple of the floor is what the rest of an update (autograd, optimiser, elementwise
ops, casts, Python) costs on top of the products it cannot avoid.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from smfp.buffer import ReplayBuffer
from smfp.config import TrainConfig
from smfp.update import Learner

_GEMMS = {torch.ops.aten.mm.default: "mm", torch.ops.aten.addmm.default: "addmm",
          torch.ops.aten.bmm.default: "bmm", torch.ops.aten.baddbmm.default: "baddbmm"}


class _RecordGemms(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = _GEMMS.get(func)
        if name is not None:
            self.calls[(name, tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor)),
                        next(a.dtype for a in args if isinstance(a, torch.Tensor)))] += 1
        return func(*args, **(kwargs or {}))


def _random_buffer(obs_dim: int, act_dim: int, size: int, seed: int) -> ReplayBuffer:
    rng = np.random.default_rng(seed)
    buffer = ReplayBuffer(obs_dim, act_dim, size, seed=seed)
    for _ in range(size):
        buffer.add(rng.standard_normal(obs_dim).astype(np.float32), rng.uniform(-1, 1, act_dim).astype(np.float32),
                   float(rng.standard_normal()), rng.standard_normal(obs_dim).astype(np.float32), False)
    return buffer


def _gemm_fn(name: str, shapes: tuple, dtype: torch.dtype):
    tensors = [torch.randn(s, dtype=dtype) for s in shapes]
    op = {"mm": torch.mm, "addmm": torch.addmm, "bmm": torch.bmm, "baddbmm": torch.baddbmm}[name]
    return lambda: op(*tensors)


def clock_for(threads: int):
    """The clock an update and its floor are timed with: the calling thread's CPU time with one torch thread (the
    products and everything else run in it, and time spent waiting for a core on a shared machine does not count),
    wall-clock time with several (their work is spread over threads)."""
    return (time.thread_time, "thread CPU time") if threads == 1 else (time.perf_counter, "wall-clock time")


def time_gemms(calls: Counter, reps: int = 20, clock=time.perf_counter) -> float:
    """Seconds to run every recorded product (with its multiplicity) once, alone: median over ``reps`` rounds."""
    fns = [(_gemm_fn(name, shapes, dtype), count) for (name, shapes, dtype), count in calls.items()]
    for fn, _ in fns:  # warm-up (allocations, kernel selection)
        fn()
    rounds = []
    for _ in range(reps):
        t0 = clock()
        for fn, count in fns:
            for _ in range(count):
                fn()
        rounds.append(clock() - t0)
    return statistics.median(rounds)


def update_floor(cfg: TrainConfig, obs_dim: int, act_dim: int, updates: int = 30, reps: int = 20,
                 seed: int = 0) -> dict:
    """The update time, its matmul floor and their ratio for the resolved config ``cfg``."""
    torch.set_num_threads(cfg.threads)
    clock, clock_name = clock_for(cfg.threads)
    torch.manual_seed(seed)
    learner = Learner(cfg, obs_dim, act_dim)
    buffer = _random_buffer(obs_dim, act_dim, max(cfg.update.batch_size * 4, 1024), seed)
    batches = [buffer.sample(cfg.update.batch_size) for _ in range(updates + 5)]
    for b in batches[:5]:
        learner.update(b)
    times = []
    for b in batches[5:]:
        t0 = clock()
        learner.update(b)
        times.append(clock() - t0)
    recorder = _RecordGemms()
    with recorder:
        learner.update(batches[0])
    floor = time_gemms(recorder.calls, reps, clock)  # at the recorded dtypes (bf16 products under --precision bf16)
    update = statistics.median(times)
    return {"update_ms": 1e3 * update, "matmul_floor_ms": 1e3 * floor, "update_over_floor": update / floor,
            "gemms_per_update": int(sum(recorder.calls.values())), "gemm_shapes": len(recorder.calls),
            "clock": clock_name}


__all__ = ["clock_for", "time_gemms", "update_floor"]
