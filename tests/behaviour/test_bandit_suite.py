"""``smfp bench bandit``: the fixed-Q acceptance suite runs the library's own learner and reports honestly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from smfp.bench.acceptance.suite import CASES, bandit_learner, run_case, target_shares, unequal_pair
from smfp.config import TrainConfig
from smfp.update import Learner


def test_unequal_pair_has_two_to_one_target_shares_at_each_temperature():
    for alpha in (0.2, 0.6):
        shares = target_shares(unequal_pair(alpha), alpha)
        assert shares[0] / shares[1] == pytest.approx(2.0, rel=1e-3)


def test_equal_targets_have_equal_shares_summing_to_most_of_the_mass_when_sharp():
    for case in CASES:
        if case.target in ("two equal bumps", "five peaks (2-D)"):
            shares = target_shares(case.make(case.alpha), case.alpha)
            assert max(shares) - min(shares) < 1e-6
            if case.alpha == 0.2:
                assert sum(shares) > 0.9


def test_suite_learner_is_the_training_learner_with_a_fixed_temperature():
    learner = bandit_learner("smfp", 2, 0.3, seed=0)
    cfg = TrainConfig(algo="smfp", run_dir="unused").resolved()
    reference = Learner(cfg, obs_dim=1, act_dim=2)
    assert type(learner.policy) is type(reference.policy)
    assert learner.policy.init_kwargs() == reference.policy.init_kwargs()
    assert (learner.components, learner.actor_states) == (reference.components, reference.actor_states)
    assert learner.cfg.update.anchor_period == cfg.update.anchor_period
    assert learner.alpha_opt is None and float(learner.alpha) == pytest.approx(0.3)
    assert float(learner.md_lambda) == pytest.approx(cfg.update.md_lambda * 0.3)


@pytest.mark.slow
def test_the_suite_separates_smfp_from_the_gaussian_on_two_bumps():
    """The Gaussian fails the bimodal target and passes the unimodal one; SMFP (library defaults) is far
    closer to the bimodal target than the Gaussian. (Whether SMFP *passes* every case is the bench's
    verdict, recorded in docs/method.md; it does not yet.)"""
    two = next(c for c in CASES if c.target == "two equal bumps" and c.alpha == 0.2)
    one = next(c for c in CASES if c.target == "unimodal" and c.alpha == 0.2)
    # Budgets: measured every 250 updates on seeds 0-2 (fp32, AVX2; 2026-12-07), the Gaussian's TV on the two bumps
    # is 0.64-0.67 from 250 updates on, on the one bump 0.03-0.12 from 250 on; SMFP's on the two bumps falls from 0.66
    # to 0.21-0.22 by 3000 updates (shares 0.45 each) and 0.13-0.15 by 5000. At these budgets in bf16 (emulated on
    # AVX2), seed 0: 0.66 / 0.03 / 0.22 (shares 0.48, 0.45).
    g_two = run_case(two, "sac", seed=0, steps=500)
    assert g_two["tv"] > 0.4 and not g_two["pass"]  # between the bumps or on one of them
    g_one = run_case(one, "sac", seed=0, steps=1000)
    assert g_one["tv"] <= 0.15 and g_one["pass"], g_one
    s_two = run_case(two, "smfp", seed=0, steps=3000)
    assert s_two["tv"] < g_two["tv"] - 0.3 and min(s_two["shares"]) > 0.3, s_two


def test_cli_json_schema_and_bad_input(tmp_path):
    cmd = [sys.executable, "-m", "smfp.cli.main", "bench", "bandit", "--fast", "--seeds", "0", "--steps", "20",
           "--algos", "smfp,sac", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    report = json.loads(proc.stdout)
    assert proc.returncode in (0, 1)  # 1: SMFP does not pass (20 updates are far too few)
    assert proc.returncode == (0 if report["smfp_pass"] else 1)
    rows = report["results"]
    assert {r["policy"] for r in rows} == {"smfp", "gaussian"}
    for r in rows:
        assert set(r) >= {"target", "policy", "alpha", "seed", "tv", "shares", "target_shares"}
        assert isinstance(r["tv"], float) and len(r["shares"]) == len(r["target_shares"])
    bad = subprocess.run(cmd[:-1] + ["--steps", "6000"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and "--steps" in bad.stderr


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp32", None)])
def test_the_suite_runs_each_actor_step_in_the_precision_training_would(monkeypatch, precision, dtype):
    from smfp.precision import matmul_dtype

    seen = []
    actor_step = Learner.actor_step

    def recording(self, obs, q_fn):
        seen.append(matmul_dtype())
        return actor_step(self, obs, q_fn)

    monkeypatch.setattr(Learner, "actor_step", recording)
    case = next(c for c in CASES if c.target == "unimodal")

    def options(cfg):
        cfg.update.precision = precision
        cfg.policy.hidden = cfg.critic.critic_hidden = (128, 128)

    run_case(case, "sac", 0, steps=3, overrides=options)
    assert seen == [dtype] * 3
    assert matmul_dtype() is None  # and nothing leaks out of the suite
