"""The batched critic ensemble equals separate ``nn.Linear`` critics built from the same weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from smfp.critic import QEnsemble

OBS, ACT, HIDDEN = 5, 3, (16, 12)


def separate_critics(ens: QEnsemble) -> list[nn.Sequential]:
    """One ordinary ``Linear/ReLU`` stack per member, holding copies of that member's weights."""
    critics = []
    for e in range(ens.num_q):
        layers: list[nn.Module] = []
        for i, (w, b) in enumerate(zip(ens.weights, ens.biases)):
            lin = nn.Linear(w.shape[1], w.shape[2])
            with torch.no_grad():
                lin.weight.copy_(w[e].T)  # nn.Linear stores (out, in)
                lin.bias.copy_(b[e, 0])
            layers.append(lin)
            if i < len(ens.weights) - 1:
                layers.append(nn.ReLU())
        critics.append(nn.Sequential(*layers))
    return critics


def _inputs(batch: int = 9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, OBS, generator=g), torch.rand(batch, ACT, generator=g) * 2 - 1


@pytest.mark.parametrize("num_q", [2, 3])
def test_values_and_parameter_grads_match_separate_critics(num_q):
    torch.manual_seed(1)
    ens = QEnsemble(OBS, ACT, HIDDEN, num_q)
    critics = separate_critics(ens)
    obs, act = _inputs()
    coef = torch.randn(num_q, obs.shape[0])  # a loss that weights every output differently

    q = ens(obs, act)
    assert q.shape == (num_q, obs.shape[0])
    q_sep = torch.stack([c(torch.cat([obs, act], -1)).squeeze(-1) for c in critics])
    torch.testing.assert_close(q, q_sep, rtol=1e-6, atol=1e-6)

    (coef * q).sum().backward()
    (coef * q_sep).sum().backward()
    for e, critic in enumerate(critics):
        linears = [m for m in critic if isinstance(m, nn.Linear)]
        for w, b, lin in zip(ens.weights, ens.biases, linears):
            torch.testing.assert_close(w.grad[e], lin.weight.grad.T, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(b.grad[e, 0], lin.bias.grad, rtol=1e-5, atol=1e-6)


def test_input_grads_and_frozen_forward():
    torch.manual_seed(2)
    ens = QEnsemble(OBS, ACT, HIDDEN, 2)
    critics = separate_critics(ens)
    obs, act = _inputs(seed=3)

    act_a = act.clone().requires_grad_(True)
    q_frozen = ens.forward_frozen(obs, act_a)
    q_frozen.min(dim=0).values.sum().backward()
    assert all(p.grad is None for p in ens.parameters()), "forward_frozen must not reach the weights"

    act_b = act.clone().requires_grad_(True)
    q_sep = torch.stack([c(torch.cat([obs, act_b], -1)).squeeze(-1) for c in critics])
    q_sep.min(dim=0).values.sum().backward()
    torch.testing.assert_close(q_frozen, q_sep.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(act_a.grad, act_b.grad, rtol=1e-5, atol=1e-6)
    assert act_a.grad.abs().sum() > 0


def test_min_q_is_elementwise_min_over_members():
    torch.manual_seed(3)
    ens = QEnsemble(OBS, ACT, HIDDEN, 3)
    obs, act = _inputs(seed=4)
    q = ens(obs, act)
    torch.testing.assert_close(ens.min_q(obs, act), q.min(dim=0).values)
    assert (q[0] != q[1]).any()  # members are different functions, so the min is not trivial


def test_members_are_initialised_independently_like_nn_linear():
    torch.manual_seed(4)
    ens = QEnsemble(OBS, ACT, HIDDEN, 2)
    dims = [OBS + ACT, *HIDDEN, 1]
    for (w, b), d_in in zip(zip(ens.weights, ens.biases), dims[:-1]):
        bound = 1.0 / math.sqrt(d_in)
        assert w.abs().max() <= bound and b.abs().max() <= bound
        assert w.abs().max() > 0.5 * bound  # really spread over the nn.Linear range, not tiny
        assert not torch.equal(w[0], w[1]), "ensemble members must not share initial weights"


def test_state_dict_round_trip_rebuilds_the_same_function():
    torch.manual_seed(5)
    ens = QEnsemble(OBS, ACT, HIDDEN, 2)
    other = QEnsemble(**ens.init_kwargs())
    obs, act = _inputs(seed=6)
    assert not torch.equal(other(obs, act), ens(obs, act))
    other.load_state_dict(ens.state_dict())
    assert torch.equal(other(obs, act), ens(obs, act))
