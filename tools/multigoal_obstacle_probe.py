"""Exploratory (issue "Assess multimodality"): the blocked-goal test of trained MultiGoal runs at several obstacle
radii, evaluation only. For each run: the goal its bench row reached most often is walled off by a disc of radius R
around it (R = 2 is `smfp bench multigoal`'s test); 100 sampled episodes with the bench's seeds; the episodes that
reach a goal, those that met the obstacle, and those of them that still reached another goal.

    python tools/multigoal_obstacle_probe.py ROOT SEED [SEED ...] > probe.json

ROOT holds the research queue's folders `sac-sS/multimodal/sac-sS` and `heads-sS/heads/smfp-sS`, each beside its
`multigoal.json` (`tools/research_queue.sh`, lines `cmd-mg3-*`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from smfp.agent import load_agent
from smfp.envs.multimodal import GOAL_NAMES
from smfp.monitor.multigoal import episode_outcomes, most_reached_goal

RADII = (1.5, 2.0, 3.0, 4.0)
EVAL_SEED, EPISODES = 10_000, 100  # `smfp bench multigoal`'s defaults: its blocked test uses these seeds


def probe(run_dir: Path, bench_rows: Path, seed: int) -> dict:
    row = next(r for r in json.loads(bench_rows.read_text()) if r["seed"] == seed)
    agent = load_agent(run_dir)
    blocked = most_reached_goal(row["goal_counts"])
    out = {"algo": row["algo"], "setting": row["setting"], "seed": seed, "blocked_goal": GOAL_NAMES[blocked],
           "bench_blocked_success": row["blocked_success"], "radii": {}}
    for radius in RADII:
        torch.manual_seed(EVAL_SEED + 1)
        ends = episode_outcomes(lambda obs: agent.act_normalized(obs, "sample"), EPISODES, EVAL_SEED + EPISODES,
                                blocked_goal=blocked, block_radius=radius)
        out["radii"][str(radius)] = {"success": sum(g >= 0 for g, _ in ends), "met": sum(m for _, m in ends),
                                     "escaped": sum(m and g >= 0 for g, m in ends)}
    return out


def main(root: Path, seeds: list[int]) -> list[dict]:
    rows = []
    for s in seeds:
        rows.append(probe(root / f"sac-s{s}/multimodal/sac-s{s}", root / f"sac-s{s}/multigoal.json", s))
        rows.append(probe(root / f"heads-s{s}/heads/smfp-s{s}", root / f"heads-s{s}/multigoal.json", s))
        for r in rows[-2:]:
            print(r["algo"], s, r["radii"], file=sys.stderr, flush=True)
    return rows


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), [int(s) for s in sys.argv[2:]]), indent=1))
