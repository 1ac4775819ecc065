"""The heads of an SMFP policy (a discrete latent) and the em update's maths (docs/method.md, "Heads")."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from smfp.config import ConfigError, TrainConfig
from smfp.policies.base import head_one_hot
from smfp.policies.smfp import SMFPPolicy
from smfp.update.fit import Candidates, em_fit_loss, head_responsibilities
from smfp.update.losses import em_actor_loss

torch.set_num_threads(1)


def _policy(heads: int, obs_dim: int = 3, act_dim: int = 2, seed: int = 0, per_head_sigma: bool = False) -> SMFPPolicy:
    torch.manual_seed(seed)
    return SMFPPolicy(obs_dim, act_dim, hidden=(32, 32), sigma_hidden=(16,), heads=heads, per_head_sigma=per_head_sigma)


def test_one_head_is_the_plain_policy_same_parameters_and_draws():
    plain = SMFPPolicy(3, 2, hidden=(32, 32), sigma_hidden=(16,))
    one = SMFPPolicy(3, 2, hidden=(32, 32), sigma_hidden=(16,), heads=1)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in one.state_dict().items()}
    one.load_state_dict(plain.state_dict())
    obs = torch.randn(5, 3)
    torch.manual_seed(1)
    a = plain.sample(obs, 4)
    torch.manual_seed(1)
    b = one.sample(obs, 4)
    assert torch.equal(a.action, b.action) and torch.equal(a.log_prob, b.log_prob)
    assert one.noise_dim == 2 and torch.equal(one.head_log_probs(obs), torch.zeros(5, 1))


def test_heads_draw_their_one_hot_from_the_state_dependent_probabilities():
    pol = _policy(heads=3)
    with torch.no_grad():  # logits of state 0 favour head 2, of state 1 head 0
        last = pol.sigma_net[-1]
        last.weight.zero_()
        last.bias.zero_()
        last.weight[2 + 2, 0] = 3.0
        last.weight[2 + 0, 1] = 3.0
    obs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    p = pol.head_log_probs(obs).exp()
    assert torch.allclose(p.sum(1), torch.ones(2))
    noise = pol.draw_noise(2, 20_000, obs, generator=torch.Generator().manual_seed(0))
    assert noise.shape == (2, 20_000, 2 + 3)
    one_hot = noise[..., 2:]
    assert torch.equal(one_hot.sum(-1), torch.ones(2, 20_000))
    freq = one_hot.mean(1)
    assert torch.allclose(freq, p, atol=0.015), (freq, p)


def test_the_head_changes_the_action_and_the_layout_holds_every_head_in_blocks():
    pol = _policy(heads=4)
    obs = torch.randn(2, 3)
    layout = pol.head_layout(2, 3, obs)
    assert layout.shape == (2, 12, 2 + 4)
    assert torch.equal(layout[0, :, 2:].argmax(-1), torch.arange(4).repeat_interleave(3))
    same_z = layout.clone()
    same_z[:, :, :2] = layout[:, :1, :2]  # one z for all 12 draws: only the head differs
    means = pol.component_means(obs, same_z)
    per_head = means[:, ::3]  # one draw of each head
    assert (per_head[:, 1:] - per_head[:, :1]).abs().amax() > 1e-3


def test_responsibilities_give_each_candidate_to_the_head_that_sits_on_it():
    # head 0's draws at -1, head 1's at +1 (1-D, two draws each); candidates at -1, -0.9, +1
    mean = torch.tensor([[[-1.0], [-1.0], [1.0], [1.0]]])
    x = torch.tensor([[[-1.0], [-0.9], [1.0]]])
    w = torch.tensor([[0.3, 0.3, 0.4]])
    cand = Candidates(x, w, torch.tensor(1.0), w.log())
    log_p = torch.log(torch.tensor([[0.5, 0.5]]))
    r = head_responsibilities(cand, mean, log_p, per_head=2, bandwidth=0.1)
    assert torch.allclose(r, torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]]), atol=1e-6)
    logits = torch.zeros(1, 2, requires_grad=True)
    fit, probs, masses = em_fit_loss(mean.clone().requires_grad_(), torch.zeros(1, 4, 1), torch.log_softmax(logits, 1),
                                     cand, per_head=2, bandwidth=0.1)
    assert torch.allclose(masses, torch.tensor([[0.6, 0.4]]), atol=1e-6)
    probs.backward()
    # the cross-entropy's gradient in the logits is p - m: zero exactly at p = the target's masses
    assert torch.allclose(logits.grad, torch.tensor([[0.5 - 0.6, 0.5 - 0.4]]), atol=1e-6)


def test_each_head_regresses_only_onto_its_own_targets():
    # two heads, one draw each, at -0.5 and +0.5; candidates at -1 and +1 with equal weight
    mean = torch.tensor([[[-0.5], [0.5]]], requires_grad=True)
    x = torch.tensor([[[-1.0], [1.0]]])
    w = torch.tensor([[0.5, 0.5]])
    cand = Candidates(x, w, torch.tensor(1.0), w.log())
    fit, _, _ = em_fit_loss(mean, torch.zeros(1, 2, 1), torch.log(torch.tensor([[0.5, 0.5]])), cand, 1, 0.1)
    fit.backward()
    # the l1 regression pulls head 0 toward -1 and head 1 toward +1 (descent = minus the gradient)
    assert mean.grad[0, 0, 0] > 0 and mean.grad[0, 1, 0] < 0
    assert math.isclose(float(fit.detach()), 0.5, rel_tol=1e-5)


def test_mass_weighted_fit_leaves_a_head_without_target_mass_unfitted():
    # head 0 sits on the only candidate with weight; head 1's cell holds a candidate of (almost) no weight
    mean = torch.tensor([[[-0.5], [0.5]]], requires_grad=True)
    x = torch.tensor([[[-1.0], [1.0]]])
    w = torch.tensor([[1.0 - 1e-9, 1e-9]])
    cand = Candidates(x, w, torch.tensor(0.5), w.log())
    log_p = torch.log(torch.tensor([[0.5, 0.5]]))
    equal, _, masses = em_fit_loss(mean, torch.zeros(1, 2, 1), log_p, cand, 1, 0.1)
    (g_equal,) = torch.autograd.grad(equal, mean)
    mass, _, _ = em_fit_loss(mean, torch.zeros(1, 2, 1), log_p, cand, 1, 0.1, head_weight="mass")
    (g_mass,) = torch.autograd.grad(mass, mean)
    assert torch.allclose(masses, torch.tensor([[1.0, 0.0]]), atol=1e-6)
    # equal: both heads pulled with the same force; mass: head 0 twice as hard (K x m = 2), head 1 not at all
    assert math.isclose(float(g_equal[0, 0, 0]), -float(g_equal[0, 1, 0]), rel_tol=1e-5)
    assert math.isclose(float(g_mass[0, 0, 0]), 2 * float(g_equal[0, 0, 0]), rel_tol=1e-5)
    assert abs(float(g_mass[0, 1, 0])) < 1e-6
    with pytest.raises(ValueError, match="choose equal or mass"):
        em_fit_loss(mean, torch.zeros(1, 2, 1), log_p, cand, 1, 0.1, head_weight="masses")


def test_em_loss_moves_the_map_by_the_fit_and_sigma_by_the_reverse_kl():
    pol = _policy(heads=2, obs_dim=1, act_dim=1)
    cfg = dataclasses.replace(TrainConfig().update, actor_update="em", fit_anchor=0, fit_local=4, fit_uniform=8)
    obs = torch.zeros(4, 1)
    q_fn = lambda o, a: -(a[:, 0] - 0.5).pow(2)  # noqa: E731
    torch.manual_seed(0)
    loss, smp, kl, anchor_components, info = em_actor_loss(pol, q_fn, None, obs, 0.2, 0.0, 4, cfg)
    assert anchor_components is None and float(kl) == 0.0
    assert info["head_masses"].shape == (2,) and math.isclose(float(info["head_masses"].sum()), 1.0, rel_tol=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in pol.parameters())
    # without the fit, only the state-only network (sigma and the heads' logits) gets a gradient
    pol.zero_grad(set_to_none=True)
    loss, *_ = em_actor_loss(pol, q_fn, None, obs, 0.2, 0.0, 4, dataclasses.replace(cfg, fit_coef=0.0))
    loss.backward()
    assert all(p.grad is None or not p.grad.abs().sum() for p in pol.u_net.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in pol.sigma_net.parameters())


@pytest.mark.parametrize("mass_coef", [0.0, 1.0])
def test_the_mass_coefficient_alone_carries_the_probabilities_fit(mass_coef):
    # with the reverse KL on the M draws (no gradient to p(c|s)), the logits learn from the masses' cross-entropy only
    pol = _policy(heads=2, obs_dim=1, act_dim=1)
    cfg = dataclasses.replace(TrainConfig().update, actor_update="em", fit_anchor=0, fit_local=4, fit_uniform=8,
                              em_reverse="draws", em_mass_coef=mass_coef)
    torch.manual_seed(0)
    loss, *_ = em_actor_loss(pol, lambda o, a: -(a[:, 0] - 0.5).pow(2), None, torch.zeros(4, 1), 0.2, 0.0, 4, cfg)
    loss.backward()
    last = [m for m in pol.sigma_net.modules() if isinstance(m, torch.nn.Linear)][-1]
    logits_grad = float(last.weight.grad[-2:].abs().sum() + last.bias.grad[-2:].abs().sum())
    assert (logits_grad > 1e-6) == (mass_coef > 0)
    assert float(last.bias.grad[:-2].abs().sum()) > 0  # sigma still learns either way


@pytest.mark.parametrize("changes, needle", [
    ({"algo": "smfp", "policy.heads": 4}, "--heads 4 needs --actor-update em"),
    ({"algo": "sac", "policy.heads": 2, "update.actor_update": "em"}, "--heads applies to --algo smfp"),
    ({"algo": "smfp", "policy.heads": 0}, "--heads must be >= 1"),
    ({"algo": "smfp", "policy.per_head_sigma": True}, "--per-head-sigma needs --heads K"),
    ({"algo": "smfp", "update.actor_update": "em", "update.em_per_head": 0}, "--em-per-head must be >= 1"),
    ({"algo": "smfp", "update.actor_update": "em", "update.em_bandwidth": 0.0}, "--em-bandwidth and --em-sharpness"),
    ({"algo": "smfp", "update.actor_update": "em", "update.em_sharpness": float("nan")}, "--em-sharpness positive"),
    ({"algo": "smfp", "update.actor_update": "em", "update.em_mass_coef": -1.0}, "--em-mass-coef must be >= 0"),
    ({"algo": "smfp", "update.actor_update": "em", "update.em_masses": "heads"}, "--em-masses heads reads"),
])
def test_head_settings_that_cannot_work_are_refused(changes, needle):
    cfg = TrainConfig(algo=changes.pop("algo"), run_dir="unused")
    for key, value in changes.items():
        part, name = key.split(".")
        setattr(cfg, part, dataclasses.replace(getattr(cfg, part), **{name: value}))
    with pytest.raises(ConfigError, match=needle.replace("-", r"\-")):
        cfg.resolved().validate()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("mode, per_head_sigma", [("sample", False), ("best-of-n", False), ("sample", True),
                                                  ("best-of-n", True)])
def test_a_heads_policy_exports_and_acts_like_the_library(tmp_path, fmt, mode, per_head_sigma):
    from smfp.critic import QEnsemble
    from smfp.export import export_policy, load_runner

    pol = _policy(heads=3, per_head_sigma=per_head_sigma).eval()
    with torch.no_grad():  # logits far from uniform, so that the head's draw matters
        pol.sigma_net[-1].bias[-3:] = torch.tensor([1.5, -1.0, 0.0])
        if per_head_sigma:  # widths far apart, so that picking the wrong head's sigma would show
            pol.sigma_net[-1].bias[:6] = torch.tensor([-3.0, -3.0, 0.0, 0.0, 2.0, 2.0])
    critic = QEnsemble(3, 2, (16, 16), 2).eval()
    low, high = np.array([-2.0, 0.0], np.float32), np.array([2.0, 10.0], np.float32)
    summary = export_policy(pol, low, high, fmt, tmp_path / f"a.{fmt}", mode, critic=critic, num_candidates=5)
    assert summary["max_abs_error"] <= 1e-4  # the file against reference_actions, same inputs
    run = load_runner(tmp_path / f"a.{fmt}", fmt)
    obs = torch.randn(16, 3)
    torch.manual_seed(7)
    with torch.no_grad():
        if mode == "sample":
            expected = pol.act(obs, "sample")
        else:
            expected = pol.act(obs, "best-of-n", num_candidates=5, q_fn=lambda o, a: critic(o, a).min(0).values)
    torch.manual_seed(7)  # the library's draws, in the exported layout
    if mode == "sample":
        zh, xi = torch.randn(16, 1, 3), torch.randn(16, 1, 2)
        noise = torch.cat([zh[:, 0, :2], xi[:, 0], zh[:, 0, 2:]], dim=1)
    else:
        noise = torch.randn(16, 5, 3)
    got = run(obs.numpy(), noise.numpy())
    want = low + (expected.numpy() + 1.0) * 0.5 * (high - low)
    np.testing.assert_allclose(got, want, rtol=0, atol=3e-5)
    heads_used = head_one_hot(pol.head_log_probs(obs).exp(), noise[:, 4:] if mode == "sample" else noise[..., 2])
    assert heads_used.sum((0, 1)).count_nonzero() >= 2  # more than one head acted


@pytest.mark.parametrize("n", [2, 3, 5])
def test_small_assignments_are_the_exact_optimum(n):
    scipy_opt = pytest.importorskip("scipy.optimize")
    from smfp.update.fit import ot_assignment
    gen = torch.Generator().manual_seed(n)
    x, y = torch.randn(50, n, 6, generator=gen), torch.randn(50, n, 6, generator=gen)
    perm = ot_assignment(x, y)
    cost = (x.unsqueeze(2) - y.unsqueeze(1)).pow(2).sum(-1)
    assert torch.equal(perm.sort(1).values, torch.arange(n).expand(50, n))  # a permutation per state
    for i in range(50):
        rows, cols = scipy_opt.linear_sum_assignment(cost[i].numpy())
        assert float(cost[i, torch.arange(n), perm[i]].sum()) == pytest.approx(float(cost[i].numpy()[rows, cols].sum()),
                                                                               abs=1e-5)


def test_infinite_sharpness_gives_each_candidate_to_its_most_likely_head():
    mean = torch.tensor([[[-1.0], [0.2], [1.0], [0.3]]])  # head 0 straddles -1 and +0.2, head 1 sits at +1 and +0.3
    x = torch.tensor([[[-1.0], [0.25], [0.9]]])
    w = torch.full((1, 3), 1 / 3)
    cand = Candidates(x, w, torch.tensor(1.0), w.log())
    log_p = torch.log(torch.tensor([[0.5, 0.5]]))
    soft = head_responsibilities(cand, mean, log_p, per_head=2, bandwidth=0.1)
    hard = head_responsibilities(cand, mean, log_p, per_head=2, bandwidth=0.1, sharpness=float("inf"))
    assert torch.equal(hard, torch.nn.functional.one_hot(soft.argmax(2), 2).float())
    assert 0.0 < float(soft[0, 1, 0]) < 1.0 and torch.equal(hard.sum(2), torch.ones(1, 3))


def test_a_sigma_per_head_gives_each_component_its_own_heads_width():
    pol = _policy(heads=3, per_head_sigma=True)
    obs = torch.randn(4, 3)
    stds = pol.head_log_stds(obs)  # (B, K, d)
    assert stds.shape == (4, 3, 2) and not torch.allclose(stds[:, 0], stds[:, 1])
    noise = pol.head_layout(4, 2, obs)  # heads 0, 0, 1, 1, 2, 2
    mean, log_std = pol.components(obs, noise)
    assert log_std.shape == (4, 6, 2)
    for j in range(6):
        assert torch.equal(log_std[:, j], stds[:, j // 2])
    assert pol.head_log_probs(obs).shape == (4, 3)  # the logits come after the K x d log-stds
    raw = pol.sigma_net(obs)
    assert torch.allclose(pol.head_log_probs(obs), torch.log_softmax(raw[:, 6:], -1))
    with pytest.raises(ValueError, match="sigma per head"):
        pol.log_std(obs)
    # the em update trains every head's sigma (the reverse KL over every head's draws)
    cfg = dataclasses.replace(TrainConfig().update, actor_update="em", fit_anchor=0, fit_local=4, fit_uniform=8,
                              em_reverse="heads")
    torch.manual_seed(0)
    loss, *_ = em_actor_loss(pol, lambda o, a: -(a - 0.5).pow(2).sum(-1), None, obs, 0.2, 0.0, 4, cfg)
    loss.backward()
    grad = pol.sigma_net[-1].weight.grad
    assert bool((grad[:6].abs().sum(1) > 0).all())  # every head's log-std rows moved
    with pytest.raises(ValueError, match="needs heads > 1"):
        SMFPPolicy(3, 2, heads=1, per_head_sigma=True)


@pytest.mark.parametrize("proposal, expect_mass", [("draws", False), ("heads", True)])
def test_proposals_around_every_head_let_an_improbable_head_find_its_mode(proposal, expect_mass):
    torch.manual_seed(0)
    pol = SMFPPolicy(1, 1, hidden=(32, 32), sigma_hidden=(16,), heads=2, per_head_sigma=True, noise_scale=0.0)
    with torch.no_grad():  # each head a narrow bump (no noise input), head 1 far from head 0 and improbable
        pol.sigma_net[-1].bias[-2:] = torch.tensor([6.0, -6.0])  # p(head 1) ~ 6e-6: the M draws never pick it
        pol.sigma_net[-1].bias[:2] = -3.0
        pol.u_net[0].weight[:, -1] += 6.0 * torch.randn(pol.u_net[0].weight.shape[0])
        pol.u_net[-1].weight *= 8.0
    obs = torch.zeros(8, 1)
    with torch.no_grad():
        centres = torch.tanh(pol.component_means(obs[:1], pol.head_layout(1, 64, obs[:1]))).reshape(2, 64).mean(1)
    assert abs(float(centres[0] - centres[1])) > 0.3  # the two heads sit apart
    peak = float(centres[1])
    q_fn = lambda o, a: -50.0 * (a[:, 0] - peak).pow(2)  # noqa: E731  (the good actions are head 1's)
    cfg = dataclasses.replace(TrainConfig().update, actor_update="em", fit_anchor=0, fit_local=16, fit_uniform=0,
                              fit_local_scale=2.0, em_per_head=4, em_reverse="heads", em_proposal=proposal)
    torch.manual_seed(0)
    _, _, _, _, info = em_actor_loss(pol, q_fn, None, obs, 0.2, 0.0, 4, cfg)
    assert (float(info["head_masses"][1]) > 0.5) == expect_mass


def test_candidates_take_an_anchor_with_its_own_number_of_components():
    from smfp.update.fit import fit_candidates
    torch.manual_seed(0)
    anchor = (torch.randn(3, 8, 2), torch.full((3, 1, 2), -1.0))  # M = 8 anchor components
    policy = (torch.randn(3, 6, 2), torch.full((3, 6, 2), -1.0))  # 6 proposal centres (e.g. 3 heads x 2)
    cand = fit_candidates(lambda o, a: -a.pow(2).sum(-1), torch.zeros(3, 1), 0.2, 0.2, anchor, policy, 4, 4, 4, 2.0)
    assert cand.x.shape == (3, 12, 2) and torch.allclose(cand.w.sum(1), torch.ones(3))


def _two_heads_apart(p1_logit: float) -> tuple[SMFPPolicy, torch.Tensor]:
    torch.manual_seed(0)
    pol = SMFPPolicy(1, 1, hidden=(32, 32), sigma_hidden=(16,), heads=2, per_head_sigma=True, noise_scale=0.0)
    with torch.no_grad():  # each head a narrow bump (no noise input), the two apart
        pol.sigma_net[-1].bias[-2:] = torch.tensor([p1_logit, -p1_logit])
        pol.sigma_net[-1].bias[:2] = -3.0
        pol.u_net[0].weight[:, -1] += 6.0 * torch.randn(pol.u_net[0].weight.shape[0])
        pol.u_net[-1].weight *= 8.0
    obs = torch.zeros(1, 1)
    centres = torch.tanh(pol.component_means(obs, pol.head_layout(1, 64, obs))).reshape(2, 64).mean(1).detach()
    assert abs(float(centres[0] - centres[1])) > 0.3
    return pol, centres


@pytest.mark.parametrize("masses", ["candidates", "heads"])
def test_head_masses_from_each_heads_own_draws_do_not_follow_the_current_probabilities(masses):
    # two equally good modes, one head on each, p(head 1) about 0.13 or 0.09: the target's masses are 1:1. With few
    # candidates (none uniform, local ones around the M draws) their shares follow p; each head's own draws do not.
    estimates = []
    for logit in (0.69, 0.9):
        pol, centres = _two_heads_apart(logit)
        c0, c1 = float(centres[0]), float(centres[1])
        q_fn = lambda o, a: torch.maximum(-50.0 * (a[:, 0] - c0).pow(2), -50.0 * (a[:, 0] - c1).pow(2))  # noqa: E731
        cfg = dataclasses.replace(TrainConfig().update, actor_update="em", fit_anchor=0, fit_local=4, fit_uniform=0,
                                  fit_local_scale=2.0, em_per_head=4, em_reverse="heads", em_masses=masses)
        obs = torch.zeros(64, 1)
        assert float(pol.head_log_probs(obs[:1]).detach().exp()[0, 1]) < 0.15
        torch.manual_seed(0)
        _, _, _, _, info = em_actor_loss(pol, q_fn, None, obs, 0.2, 0.0, 4, cfg)
        estimates.append(float(info["head_masses"][1]))
    if masses == "heads":
        assert min(estimates) > 0.3 and abs(estimates[0] - estimates[1]) < 0.02
    else:
        assert max(estimates) < 0.2 and estimates[0] > estimates[1] + 0.02


@pytest.mark.parametrize("mass_coef, reverse_logits", [(0.0, False), (1.0, False), (0.0, True)])
def test_without_the_reverse_kls_gradient_the_probabilities_learn_from_the_masses_alone(mass_coef, reverse_logits):
    pol, centres = _two_heads_apart(0.69)
    cfg = dataclasses.replace(TrainConfig().update, actor_update="em", fit_anchor=0, fit_local=4, fit_uniform=4,
                              em_per_head=4, em_reverse="heads", em_masses="heads", em_mass_coef=mass_coef,
                              em_reverse_logits=reverse_logits)
    torch.manual_seed(0)
    loss, *_ = em_actor_loss(pol, lambda o, a: -(a[:, 0] - float(centres[1])).pow(2), None, torch.zeros(8, 1), 0.2,
                             0.0, 4, cfg)
    loss.backward()
    last = pol.sigma_net[-1]
    logits_grad = float(last.weight.grad[-2:].abs().sum() + last.bias.grad[-2:].abs().sum())
    assert (logits_grad > 1e-6) == (mass_coef > 0 or reverse_logits)
    if mass_coef > 0:
        assert float(last.bias.grad[-1]) < 0  # descent raises the logit of head 1, the one on Q's peak


def test_heads_masses_with_mirror_descent_are_the_em_step_toward_the_anchored_target():
    # the anchor's term enters p* ~ pi_k^(lambda/(alpha+lambda)) exp(Q/(alpha+lambda)): with the anchor equal to the
    # policy, a flat Q and alpha << lambda, p* is pi itself and every head keeps its probability (without the anchor's
    # term the step would flatten them toward 1:1)
    import copy
    pol, _ = _two_heads_apart(0.69)
    anchor = copy.deepcopy(pol).requires_grad_(False)
    cfg = dataclasses.replace(TrainConfig().update, actor_update="em", fit_anchor=4, fit_local=4, fit_uniform=4,
                              em_per_head=4, em_reverse="heads", em_masses="heads")
    obs = torch.zeros(16, 1)
    torch.manual_seed(0)
    _, _, _, _, info = em_actor_loss(pol, lambda o, a: torch.zeros(a.shape[0]), anchor, obs, 1e-3, 1.0, 4, cfg)
    p = pol.head_log_probs(obs[:1]).detach().exp()[0]
    assert float(p[1]) < 0.15 and torch.allclose(info["head_masses"], p, atol=0.01)


def test_heads_masses_without_every_heads_reverse_kl_draws_is_refused_by_the_loss_too():
    # the config refuses it first; a direct call must not reshape the M draws' rows as if they were every head's
    pol, _ = _two_heads_apart(0.69)
    cfg = dataclasses.replace(TrainConfig().update, actor_update="em", fit_anchor=0, fit_local=4, fit_uniform=4,
                              em_reverse="draws", em_masses="heads")
    with pytest.raises(ValueError, match="em_masses='heads' needs"):
        em_actor_loss(pol, lambda o, a: -a[:, 0].pow(2), None, torch.zeros(4, 1), 0.2, 0.0, 4, cfg)
