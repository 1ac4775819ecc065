"""An ensemble of Q networks evaluated as one batched network.

Member ``e``'s layer ``l`` weights live in slice ``e`` of one (E, in, out) tensor, so a forward
pass over all members is one ``baddbmm`` per layer instead of E separate matmul chains. Each
member is initialised like an independent ``nn.Linear`` stack, so the ensemble equals E
separate critics with the same weights (tested).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from smfp.precision import MIN_REDUCED_WIDTH, matmul_dtype


class QEnsemble(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (256, 256), num_q: int = 2):
        super().__init__()
        self.obs_dim, self.act_dim, self.hidden, self.num_q = obs_dim, act_dim, tuple(hidden), num_q
        dims = [obs_dim + act_dim, *self.hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            bound = 1.0 / math.sqrt(d_in)  # nn.Linear's default init, per member
            self.weights.append(nn.Parameter(torch.empty(num_q, d_in, d_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_q, 1, d_out).uniform_(-bound, bound)))

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Q-values (E, B) for obs (B, o) and actions (B, d)."""
        return self.forward_with(list(self.weights), list(self.biases), obs, act)

    def forward_with(self, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                     obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Forward with explicit parameters (pass detached ones to get input-only gradients)."""
        h = torch.cat([obs, act], dim=-1).unsqueeze(0).expand(self.num_q, -1, -1)
        last = len(weights) - 1
        dtype = matmul_dtype()  # hidden-to-hidden layers in reduced precision (smfp.precision)
        for i, (w, b) in enumerate(zip(weights, biases)):
            if dtype is not None and 0 < i < last and min(w.shape[-2:]) >= MIN_REDUCED_WIDTH:
                h = torch.baddbmm(b.to(dtype), h.to(dtype), w.to(dtype))
            else:
                h = torch.baddbmm(b, h.float(), w)  # .float() is a no-op on float32 input
            if i < last:
                h = torch.relu(h)
        return h.squeeze(-1)

    def forward_frozen(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Q-values whose gradient flows to the inputs only (the actor's loss)."""
        return self.forward_with([w.detach() for w in self.weights], [b.detach() for b in self.biases], obs, act)

    def min_q(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self(obs, act).min(dim=0).values

    def init_kwargs(self) -> dict:
        return dict(obs_dim=self.obs_dim, act_dim=self.act_dim, hidden=self.hidden, num_q=self.num_q)
