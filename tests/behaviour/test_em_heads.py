"""The opt-in heads policy with the em update on the fixed-Q suite (docs/method.md, "Heads").

The suite's unequal 3:1 pair (1-D, alpha 0.2): the reparameterised update does not set the masses of two
modes (docs/experiments.md: the default's 2:1 pair came out 0.55 / 0.40; the hybrid fit's 3:1 pair 0.64 /
0.32 at 5000 updates), because a mode's mass is the share of a connected noise space that lands on it. With K = 4 heads the masses are
probabilities that the em update sets from the candidates' responsibilities.
"""

from __future__ import annotations

import dataclasses

import torch

from smfp.bench.acceptance.suite import CASES, SHARE_TOL, TV_MAX, run_case

torch.set_num_threads(1)

STEPS = 1500
# Measured at this budget with hard responsibilities (--em-sharpness inf), K = 4, 64 uniform + 32 local
# candidates, heads drawn by the inverse CDF: TV 0.110 / 0.086 / 0.067 at seeds 0 / 1 / 2 and 0.084 / 0.111 /
# 0.054 with ATEN_CPU_CAPABILITY=avx2 (2500 updates: 0.048-0.117, no lower); the minor mode's share 0.252-0.253
# against 0.250 in all six (docs/experiments.md, 2026-12-05). The masses are what this update fixes, and they
# hold with a wide margin; the TV (stray samples of heads without mass) only within the suite's own bound.
# With the posterior responsibilities (sharpness 1) one avx2 run lost the minor mode (0.88 / 0.02).
TV_BOUND = TV_MAX
SHARE_BOUND = SHARE_TOL / 2


def _em_heads(cfg):
    cfg.policy = dataclasses.replace(cfg.policy, heads=4)
    cfg.update = dataclasses.replace(cfg.update, actor_update="em", md_lambda=0.0, fit_uniform=64, fit_local=32,
                                     fit_anchor=0, fit_local_scale=3.0, em_sharpness=float("inf"))


def test_em_heads_fit_the_masses_of_an_unequal_pair():
    case = next(c for c in CASES if c.target == "unequal 3:1" and c.alpha == 0.2)
    row = run_case(case, "smfp", seed=0, steps=STEPS, overrides=_em_heads)
    assert row["tv"] <= TV_BOUND, row
    assert all(abs(s - w) <= SHARE_BOUND for s, w in zip(row["shares"], row["target_shares"])), row
