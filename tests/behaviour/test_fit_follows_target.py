"""The opt-in ``--actor-update hybrid`` on the fixed-Q suite (docs/method.md, "The fit update").

The suite's fast sharp unimodal case (one bump at 0.3, width 0.3, alpha 0.2), which the default
reparameterised update with mirror descent leaves too wide at 5000 updates (TV 0.190, share 0.82 vs
0.98; docs/experiments.md): the hybrid update, otherwise with the library defaults, gets within the
suite's pass rule with a margin, in fewer updates.
"""

from __future__ import annotations

import dataclasses

import torch

from smfp.bench.acceptance.suite import CASES, SHARE_TOL, TV_MAX, run_case

torch.set_num_threads(1)

STEPS = 2500
# Measured at this budget: TV 0.067 / 0.071 / 0.087 at seeds 0 / 1 / 2 (0.067 with ATEN_CPU_CAPABILITY=avx2 at
# seed 0), peak share 0.97-0.98 against the target's 0.98 (docs/experiments.md, 2026-12-04). The bound leaves
# ~0.04 TV for other CPUs' kernels and rounding.
TV_BOUND = 0.11


def _hybrid(cfg):
    cfg.update = dataclasses.replace(cfg.update, actor_update="hybrid")


def test_hybrid_update_fits_the_sharp_unimodal_target():
    case = next(c for c in CASES if c.target == "unimodal" and c.alpha == 0.2 and c.fast)
    row = run_case(case, "smfp", seed=0, steps=STEPS, overrides=_hybrid)
    assert row["tv"] <= TV_BOUND < TV_MAX, row
    assert all(abs(s - w) <= SHARE_TOL / 2 for s, w in zip(row["shares"], row["target_shares"])), row
