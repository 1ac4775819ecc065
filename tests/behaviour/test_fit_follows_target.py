"""The opt-in ``--actor-update hybrid`` on the fixed-Q suite (docs/method.md, "The fit update").

The suite's fast sharp unimodal case (one bump at 0.3, width 0.3, alpha 0.2), which the default
reparameterised update with mirror descent leaves too wide (TV 0.190 at 5000 updates, share 0.82 vs
0.98; docs/experiments.md): the hybrid update, otherwise with the library defaults, gets within the
suite's pass rule in half the updates, where the default update at the same budget is far outside it.
"""

from __future__ import annotations

import dataclasses

import torch

from smfp.bench.acceptance.suite import CASES, SHARE_TOL, TV_MAX, run_case

torch.set_num_threads(1)

STEPS = 2500
# Measured at this budget in fp32, seeds 0 / 1 / 2: hybrid TV 0.067 / 0.071 / 0.087 (2026-12-04, docs/experiments.md),
# 0.128 / 0.096 / 0.098 on an AVX2-only AMD EPYC (2026-12-07; peak share 0.957-0.973 against the target's 0.978); the
# default update 0.260 at seed 0 (share 0.76). A bound tighter than the suite's rule (0.11) did not survive the
# second CPU's kernels: the TV of one run wanders by ~0.04 between checkpoints. So the test asserts the suite's rule
# and a gap to the default update at the same budget (0.13 measured; half of it asserted).
GAP = 0.06


def _with(actor_update: str):
    def override(cfg):  # fp32: the test is about the update's maths, not the CPU's native precision
        cfg.update = dataclasses.replace(cfg.update, actor_update=actor_update, precision="fp32")
    return override


def test_hybrid_update_fits_the_sharp_unimodal_target():
    case = next(c for c in CASES if c.target == "unimodal" and c.alpha == 0.2 and c.fast)
    row = run_case(case, "smfp", seed=0, steps=STEPS, overrides=_with("hybrid"))
    default = run_case(case, "smfp", seed=0, steps=STEPS, overrides=_with("reparam"))
    assert row["tv"] <= TV_MAX, row
    assert all(abs(s - w) <= SHARE_TOL / 2 for s, w in zip(row["shares"], row["target_shares"])), row
    assert row["tv"] <= default["tv"] - GAP, (row, default)
