"""Fixed-Q with many states: how fast does a policy learn a state-dependent centre and width?

    python tools/multistate_fixedq.py CANDIDATE [UPDATES]     # e.g. sac, smfp:meanflow_coef=0.1:md_lambda=0:state_base=true

A known Q over 11-D states and 3-D actions, Q(s, a) = -sum_j c_j(s) (a_j - m_j(s))^2, with a centre m(s) in
[-0.5, 0.5] and a curvature c(s) that spans ~e^{+-3} across states. At a fixed alpha (0.1) the best policy is the
Gaussian N(m(s), alpha / (2 c(s))) in action space. The training ``Learner``'s own ``actor_step`` runs UPDATES
times on fresh batches of 256 states (CANDIDATE: ``smfp bench train``'s ALGO[:field=value...] syntax); then, at
100 held-out states, 2048 sampled actions each give E[a|s] and sd(a|s): the script prints their errors against
m(s) and the optimal sd, per seed (0, 1, 2). The bandit suite (``smfp bench bandit``) has one state; this asks what
it cannot: whether the actor generalises a state-dependent answer across states as fast as SAC's does.
"""

from __future__ import annotations

import math
import sys

import torch

from smfp.bench.speed.train import candidate_config
from smfp.update import Learner

OBS, ACT, ALPHA = 11, 3, 0.1
_g = torch.Generator().manual_seed(123)
W = torch.randn(OBS, ACT, generator=_g) / math.sqrt(OBS)
U = torch.randn(OBS, ACT, generator=_g) / math.sqrt(OBS)


def curvature(s: torch.Tensor) -> torch.Tensor:
    return 20.0 * torch.exp(1.5 * (s @ W))


def centre(s: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.tanh(s @ U)


def q_fn(s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return -(curvature(s) * (a - centre(s)) ** 2).sum(-1)


def run(spec: str, updates: int, seed: int, states: int = 100, samples: int = 2048) -> dict:
    cfg = candidate_config(f"{spec}:alpha={ALPHA}:autotune_alpha=false", "Hopper-v5", seed, 10, 10)
    torch.manual_seed(seed)
    learner = Learner(cfg, OBS, ACT)
    batches = torch.Generator().manual_seed(seed + 7)
    for _ in range(updates):
        learner.actor_step(torch.randn(256, OBS, generator=batches), q_fn)
    test = torch.randn(states, OBS, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        acts = learner.policy.sample(test.repeat_interleave(samples, 0), 1).action[:, 0].reshape(states, samples, ACT)
    optimal_log_sd = 0.5 * torch.log(ALPHA / (2 * curvature(test)))
    log_sd = acts.std(1).log()
    return {"mean_error": (acts.mean(1) - centre(test)).abs().mean().item(),
            "log_sd_error": (log_sd - optimal_log_sd).abs().mean().item(),
            "log_sd_corr": torch.corrcoef(torch.stack([log_sd.flatten(), optimal_log_sd.flatten()]))[0, 1].item()}


def main() -> None:
    torch.set_num_threads(1)
    spec = sys.argv[1]
    updates = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    for seed in (0, 1, 2):
        r = run(spec, updates, seed)
        print(f"{spec} updates {updates} seed {seed}: |E[a|s] - m(s)| {r['mean_error']:.3f}  "
              f"|log sd(a|s) - optimal| {r['log_sd_error']:.3f}  corr(log sd, optimal) {r['log_sd_corr']:.3f}", flush=True)


if __name__ == "__main__":
    main()
