"""The mode-count rule on known mixtures, and `smfp inspect` on real policies."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, run_cli, tiny_config
from smfp.cli.inspect import inspect_run
from smfp.monitor.modes import assess_state, count_modes, probe_states, verdict


def mixture(rng, centers, std, n=1000, weights=None):
    centers = np.asarray(centers, dtype=float)
    k = rng.choice(len(centers), size=n, p=weights)
    return np.clip(centers[k] + std * rng.standard_normal((n, centers.shape[1])), -1.0, 1.0), k


FOUR = [[0.6, 0.0], [-0.6, 0.0], [0.0, 0.6], [0.0, -0.6]]


@pytest.mark.parametrize("seed", range(3))
def test_well_separated_mixtures_give_their_number_of_modes(seed):
    rng = np.random.default_rng(seed)
    for centers, std in (([[0.3, -0.2]], 0.05), ([[-0.6, 0.1], [0.6, -0.1]], 0.08), (FOUR, 0.08), (FOUR, 0.15)):
        a, comp = mixture(rng, centers, std)
        res = count_modes(a)
        assert res.count == len(centers), (centers, std, res.masses)
        # each found mode sits on a true centre and holds about its share of the samples
        for c, m in zip(res.centers, res.masses):
            assert np.min(np.linalg.norm(np.asarray(centers) - c, axis=1)) < 0.1
            assert abs(m - 1.0 / len(centers)) < 0.08
        # labels agree with the generating component (up to renaming)
        for k in range(len(centers)):
            labels = res.labels[comp == k]
            assert np.mean(labels == np.bincount(labels[labels >= 0]).argmax()) > 0.95


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("std", [0.3, 0.45])
def test_one_broad_gaussian_is_one_mode(seed, std):
    a, _ = mixture(np.random.default_rng(seed), [[0.0, 0.0]], std)
    res = count_modes(a)
    assert res.count == 1 and res.masses[0] > 0.95


def test_mode_count_in_one_and_many_dimensions():
    rng = np.random.default_rng(7)
    a1, _ = mixture(rng, [[-0.5], [0.5]], 0.1)
    assert count_modes(a1[:, 0]).count == 2  # a 1-D vector is accepted
    broad17, _ = mixture(rng, [[0.0] * 17], 0.3)
    assert count_modes(broad17).count == 1  # no fragmentation in high dimension
    four17, _ = mixture(rng, list(np.eye(17)[:4] * 0.7), 0.1)
    assert count_modes(four17).count == 4


def test_minor_clusters_below_min_mass_are_not_counted():
    rng = np.random.default_rng(3)
    a, _ = mixture(rng, [[-0.6, 0.0], [0.6, 0.0], [0.0, 0.8]], 0.05, weights=[0.49, 0.49, 0.02])
    res = count_modes(a)
    assert res.count == 2 and res.minor == 1 and 0.005 < res.minor_mass < 0.05
    assert (res.labels == -1).sum() == round(res.minor_mass * len(a))
    assert count_modes(a, min_mass=0.005).count == 3


@pytest.mark.parametrize("seed", range(4))
def test_a_faint_cluster_between_two_modes_does_not_chain_them_together(seed):
    """Regression: two edge modes joined by a sparse band with a faint cluster in the middle (as a
    trained SMFP policy at the MultiGoal start state shows) are 2 modes, not 1."""
    rng = np.random.default_rng(seed)
    a, _ = mixture(rng, [[-0.94, 0.0], [0.94, 0.0]], 0.04, n=470)
    band = np.stack([rng.uniform(-0.8, 0.8, 25), 0.05 * rng.standard_normal(25)], 1)
    faint = np.array([0.0, 0.0]) + 0.02 * rng.standard_normal((5, 2))
    res = count_modes(np.concatenate([a, band, faint]))
    assert res.count == 2 and min(res.masses) > 0.4


def test_deterministic_samples_are_one_mode_and_bad_input_is_refused():
    assert count_modes(np.tile([[0.5, -0.5]], (200, 1))).count == 1
    with pytest.raises(ValueError):
        count_modes(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError):
        count_modes(np.zeros((0, 2)))


def test_verdict_wording():
    class R:
        def __init__(self, modes):
            self.modes = modes

    assert verdict([R(1), R(1)], "smfp").startswith("unimodal at all 2 probed states: a Gaussian policy would do")
    v = verdict([R(4), R(1), R(2), R(1)], "smfp")  # no critic: the policy's modes alone do not say the task needs them
    assert v.startswith("2-4 modes at 50% of states (2/4)") and "whether the task rewards them, the critic's" in v
    v = verdict([R(2), R(1)], "gaussian")  # a Gaussian's extra modes come from the tanh, not from the task
    assert v.startswith("2 modes at 50% of states (1/2), made by the squash")


def test_the_policy_verdict_defers_to_the_critics_target():
    """An SMFP policy's modes are evidence about the task only where its critic's target has them too: a fresh
    generator's spread is its own, a collapsed one follows one of the target's modes."""
    from smfp.monitor.target import TargetReport, policy_against_target

    class R:
        def __init__(self, modes):
            self.modes = modes

    def t(policy_modes, modes, tv=0.3):
        return TargetReport(state=[0.0], alpha=1.0, method="grid", modes=modes, masses=[1.0 / modes] * modes,
                            centers=[], tv_to_target=tv, tv_kind="grid", policy_modes=policy_modes)

    targets = [t(2, 1), t(3, 2, 0.2), t(1, 4), t(1, 1), t(2, 2, 0.4)]
    v = verdict([R(r.policy_modes) for r in targets], "smfp", policy_against_target(targets))
    assert v == ("2-3 modes at 60% of states (3/5); at 1 of them the critic's target has one mode: there the extra "
                 "modes are the policy's own, not the task's; at 2 the target has several too (the policy's TV to it "
                 "0.30); at 1 state(s) the target has several modes and the policy one: it follows one of them")
    agree = [t(1, 1), t(1, 1)]
    assert verdict([R(1), R(1)], "smfp", policy_against_target(agree)) == (
        "unimodal at all 2 probed states; so is the critic's target there")
    collapsed = [t(1, 4), t(1, 1)]  # SAC, or a collapsed SMFP, on a task whose target has several modes
    assert verdict([R(1), R(1)], "gaussian", policy_against_target(collapsed)).endswith(
        "at 1 state(s) the target has several modes and the policy one: it follows one of them")


# --- policies ---------------------------------------------------------------------------------------------

class SignMap(torch.nn.Module):
    """An average velocity ``u = z - 1.5 tanh(200 z)``: the one-step map is ``mu(s, z) = 1.5 tanh(200 z)``,
    which sends the four sign quadrants of ``z`` to the four corners ``(+-0.9, +-0.9)`` of the box."""

    def __init__(self, obs_dim: int, act_dim: int):
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim

    def forward(self, inp):
        z = inp[..., self.obs_dim:self.obs_dim + self.act_dim]
        return z - 1.5 * torch.tanh(200.0 * z)


def four_corner_policy():
    from smfp.policies import SMFPPolicy

    pol = SMFPPolicy(obs_dim=2, act_dim=2, hidden=(8,), sigma_hidden=(4,))
    pol.u_net = SignMap(2, 2)
    with torch.no_grad():
        for p in pol.sigma_net.parameters():
            p.zero_()
        pol.sigma_net[-1].bias.fill_(-0.233)  # log-std -5 + 3.5 (tanh(b) + 1) = -2.3: sigma 0.1
    return pol.eval()


def test_assess_state_finds_four_modes_and_credits_their_spread_in_the_entropy():
    torch.manual_seed(0)
    rep = assess_state(four_corner_policy(), np.zeros(2, np.float32), n=1000)
    assert rep.modes == 4
    assert sorted(np.sign(np.round(rep.centers, 1)).tolist()) == [[-1, -1], [-1, 1], [1, -1], [1, 1]]
    assert all(0.2 < m < 0.3 for m in rep.masses)
    # the mixture estimate credits the spread over 4 equal modes: about log 4 nats over the conditional one
    assert rep.entropy - rep.entropy_m1 == pytest.approx(np.log(4.0), abs=0.15)


def test_assess_state_on_a_gaussian_policy_is_one_mode_with_exact_entropy():
    from smfp.policies import GaussianPolicy

    torch.manual_seed(0)
    rep = assess_state(GaussianPolicy(2, 2, hidden=(8,)), np.zeros(2, np.float32), n=800)
    assert rep.modes == 1 and rep.entropy == pytest.approx(rep.entropy_m1)


def test_a_wide_squashed_gaussian_has_two_modes_at_the_bounds_and_the_verdict_says_why():
    from smfp.policies import GaussianPolicy

    torch.manual_seed(0)
    pol = GaussianPolicy(1, 1, hidden=(8,))
    with torch.no_grad():
        for p in pol.parameters():
            p.zero_()
        pol.net[-1].bias[1] = 10.0  # raw log-std far up: log-std near its bound 2, sigma ~7 before the tanh
    rep = assess_state(pol, np.zeros(1, np.float32), n=1000)
    assert rep.modes == 2 and sorted(np.sign([c[0] for c in rep.centers]).tolist()) == [-1.0, 1.0]
    assert all(abs(c[0]) > 0.8 for c in rep.centers)
    assert "made by the squash" in verdict([rep], pol.kind)


@pytest.mark.filterwarnings("ignore::UserWarning")  # gymnasium's float32 Box notice
def test_probe_states_depend_on_the_seed_alone_and_leave_the_callers_generator_alone():
    # stochastic actions along the episodes: they once came from whatever state torch's generator was in, so
    # `smfp inspect` probed other states (and could give another verdict) each time it ran on a MuJoCo run
    from smfp.agent import Agent
    from smfp.policies import GaussianPolicy

    torch.manual_seed(0)
    agent = Agent(GaussianPolicy(3, 1, hidden=(8,)), None, "Pendulum-v1", np.array([-2.0]), np.array([2.0]))
    first = probe_states(agent, 6, 2, seed=3)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    again = probe_states(agent, 6, 2, seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    np.testing.assert_array_equal(first, again)
    assert first.shape == (6, 3) and not np.array_equal(first, probe_states(agent, 6, 2, seed=4))


# --- smfp inspect on trained runs -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bandit_run(tmp_path_factory, env_module_dir):
    from smfp.training.loop import train

    run_dir = tmp_path_factory.mktemp("runs") / "smfp-bandit"
    cfg = tiny_config(run_dir, env="smfp_test_envs:SmfpTestBandit-v0", total_steps=1500, learning_starts=200,
                      eval_every=0, checkpoint_every=0)
    cfg.algo = "smfp"
    cfg.update.gamma = 0.0
    cfg.update.anchor_period = 100
    cfg.update.alpha, cfg.update.autotune_alpha = 0.05, False
    cfg.update.actor_lr = cfg.update.critic_lr = 1e-3
    cfg.log.tensorboard = False
    cfg.monitor.alarms = False
    train(cfg)
    return run_dir


def test_inspect_finds_one_mode_for_a_policy_trained_on_a_unimodal_bandit(bandit_run):
    report = inspect_run(bandit_run, states=[[0.0]], samples=600)
    (state,) = report["states"]
    assert state["modes"] == 1
    # the policy learned: its one mode sits near the best action
    assert np.linalg.norm(np.asarray(state["mode_centers"][0]) - [0.5, -0.5]) < 0.25
    assert report["verdict"].startswith("unimodal at all 1 probed states")
    assert report["train_entropy"] is not None and "gap" in report["train_entropy"]
    # the task too: the critic's target on a one-bump bandit is one mode near the best action
    assert state["target_modes"] == 1 and state["method"] == "grid" and 0.0 <= state["tv_to_target"] <= 1.0
    assert np.linalg.norm(np.asarray(state["target_centers"][0]) - [0.5, -0.5]) < 0.25
    assert report["target_verdict"].startswith("the critic's target is unimodal at all 1 probed states")
    assert (bandit_run / "inspect.png").stat().st_size > 1000


def test_inspect_cli_json_and_default_probe_states(bandit_run, env_module_dir, tmp_path):
    png = tmp_path / "probe.png"
    proc = run_cli("inspect", bandit_run, "--samples", "300", "--states", "3", "--json", "--out", png,
                   pythonpath=env_module_dir)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) >= {"states", "verdict", "png", "train_entropy"}
    assert 1 <= len(out["states"]) <= 3
    for s in out["states"]:
        assert set(s) >= {"state", "modes", "entropy", "entropy_m1"} and len(s["state"]) == 1
        assert s["modes"] == 1
    assert png.stat().st_size > 1000
    for s in out["states"]:
        assert set(s) >= {"target_modes", "target_masses", "tv_to_target"} and s["target_modes"] == 1
    text = run_cli("inspect", bandit_run, "--state", "0", "--samples", "200", "--out", png, "--plot", tmp_path / "t",
                   pythonpath=env_module_dir)
    assert text.returncode == 0 and "verdict: unimodal" in text.stdout and "figure:" in text.stdout
    assert "task: the critic's target is unimodal" in text.stdout
    assert (tmp_path / "t" / "target_state0.png").stat().st_size > 1000


@pytest.mark.parametrize("args,needle", [
    (["--state", "0", "0"], "--state has 2 values"),
    (["--state", "x"], "--state expects numbers"),
    (["--samples", "0"], "--samples must be at least 2"),
    (["--min-mass", "1.5"], "--min-mass"),
    (["--alpha", "0"], "--alpha must be a positive number"),
    (["--target-noise-factor", "-1"], "--target-noise-factor must be a number >= 0"),
    (["--target-noise-factor", "nan"], "--target-noise-factor must be a number >= 0"),
])
def test_inspect_user_mistakes_are_one_line(bandit_run, env_module_dir, args, needle):
    proc = run_cli("inspect", bandit_run, *args, pythonpath=env_module_dir)
    assert_one_line_error(proc, needle)


def test_inspect_missing_run_is_one_line(tmp_path):
    assert_one_line_error(run_cli("inspect", tmp_path / "nothing"), "neither a run dir nor a checkpoint")
