"""Print a run's critic along the action axis at given states (1-D actions): Q_min - max(Q_min) on a grid, the range
of Q_min, and the ensemble's mean disagreement |Q1 - Q2|. Used to tell a real dip between two target modes from critic
noise (docs/experiments.md, 2026-12-07).

    python tools/critic_along_actions.py RUN_DIR_OR_CHECKPOINT --state 1.0,0.01,-0.2 [--state ...] [--points 41]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from smfp.agent import load_agent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--state", action="append", required=True, help="comma-separated observation")
    parser.add_argument("--points", type=int, default=41)
    args = parser.parse_args()
    agent = load_agent(args.run)
    if agent.policy.act_dim != 1:
        raise SystemExit("critic_along_actions: error: the run's action has more than one dimension")
    actions = torch.linspace(-1.0, 1.0, args.points)[:, None]
    print(f"alpha {float(agent.alpha):.4g}; actions {args.points} points from -1 to 1")
    for text in args.state:
        obs = torch.tensor([[float(v) for v in text.split(",")]]).expand(args.points, -1)
        with torch.no_grad():
            qs = agent.critic(obs, actions).squeeze(-1).numpy()  # (num_q, points)
        q_min = qs.min(0)
        print(f"state {text}: Q_min range {np.ptp(q_min):.3f}, ensemble |Q1 - Q2| mean {np.abs(qs[0] - qs[1]).mean():.3f}")
        print("  Q_min - max:", " ".join(f"{v:.2f}" for v in q_min - q_min.max()))


if __name__ == "__main__":
    main()
