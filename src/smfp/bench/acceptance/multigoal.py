"""MultiGoal evidence: does a policy reach several goals, follow its critic's target, and survive a blocked goal?

For every (setting, algo, seed) one run on ``smfp/MultiGoal-v0`` (the standard task: start N(0, 0.1^2),
four goals, raw rewards), then, from the latest checkpoint:

- **goals**: 100 episodes with sampled actions from the standard start; the count per goal and the
  entropy of the reached goals' distribution (log 4 = 1.386 when all four are equally used);
- **target TV**: the total variation of the policy's actions to its own critic's soft-greedy target
  ``exp(Q/alpha)`` at the origin and at (2.5, 2.5) (``smfp.monitor.target.assess_target``, grid estimate),
  with the target's number of modes;
- **blocked goal**: the goal the policy reached most often is walled off (a disc of radius 2 around it that
  no move may enter) and 100 more episodes run; success is reaching any other goal within the horizon.

Settings: ``default`` (each algorithm's defaults) and ``multimodal`` (``--multimodal`` with ``--alpha``,
default 10: Soft Q-Learning's temperature 1 at reward scale 0.1, the peers' choice on this task). A run
already finished in ``out`` is evaluated again, not retrained (``smfp train --resume`` semantics).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from smfp.config import ALGOS, ConfigError, TrainConfig, check_choices

ENV = "smfp/MultiGoal-v0"
SETTINGS = ("default", "multimodal")
PROBES = {"origin": (0.0, 0.0), "(2.5, 2.5)": (2.5, 2.5)}
BLOCK_RADIUS = 2.0


@dataclass
class MultiGoalOptions:
    out: str
    seeds: Sequence[int] = (0, 1, 2, 3, 4)
    algos: Sequence[str] = ("sac", "smfp")
    settings: Sequence[str] = SETTINGS
    steps: int = 30_000
    alpha: float = 10.0
    episodes: int = 100
    eval_seed: int = 10_000


def run_config(setting: str, algo: str, seed: int, steps: int, alpha: float, run_dir: Path) -> TrainConfig:
    cfg = TrainConfig(algo=algo, total_steps=steps, seed=seed, run_dir=str(run_dir), threads=1)
    cfg.env.env = ENV
    cfg.eval.eval_every = 0
    cfg.log.progress = False
    cfg.monitor.alarms = False
    if setting == "multimodal":
        cfg.multimodal = True
        cfg.update.alpha = alpha
    return cfg


def goal_entropy(counts: Sequence[int]) -> float:
    total = sum(counts)
    if total == 0:
        return 0.0
    p = np.asarray([c / total for c in counts if c > 0])
    return float(-(p * np.log(p)).sum())


def evaluate(run_dir: Path, episodes: int, eval_seed: int) -> dict:
    """Goals, target TVs and the blocked-goal test of the run's latest checkpoint."""
    import torch

    from smfp.agent import load_agent, run_episodes
    from smfp.envs import make_env
    from smfp.envs.multimodal import GOAL_NAMES
    from smfp.monitor.modes import sample_actions
    from smfp.monitor.target import POLICY_SAMPLES, assess_target

    agent = load_agent(run_dir)

    def reached(seed: int, **env_kwargs) -> list[int]:
        """The goal index each of ``episodes`` sampled episodes ended in (-1: none)."""
        env = make_env(ENV, env_kwargs=env_kwargs)
        try:
            eps = run_episodes(lambda o: agent.act_normalized(o, "sample"), env, episodes, seed)
        finally:
            env.close()
        return [int(e["info"].get("goal", -1)) for e in eps]

    torch.manual_seed(eval_seed)
    goals = reached(eval_seed)
    counts = [goals.count(g) for g in range(len(GOAL_NAMES))]
    row = {"goal_counts": dict(zip(GOAL_NAMES, counts)), "reached": sum(counts),
           "goals_10pct": sum(c >= 0.1 * episodes for c in counts), "goal_entropy": round(goal_entropy(counts), 4),
           "alpha": agent.alpha, "step": agent.step}
    rng = np.random.default_rng(eval_seed)
    for name, state in PROBES.items():
        obs = np.asarray(state, dtype=np.float32)
        rep = assess_target(agent.policy, agent.critic, obs, agent.alpha, rng,
                            sample_actions(agent.policy, obs, POLICY_SAMPLES)[0], policy_modes=0)
        row[f"tv_{name}"], row[f"target_modes_{name}"] = rep.tv_to_target, rep.modes
    blocked = int(np.argmax(counts))
    torch.manual_seed(eval_seed + 1)
    after = reached(eval_seed + episodes, blocked_goal=blocked, block_radius=BLOCK_RADIUS)
    row["blocked_goal"] = GOAL_NAMES[blocked]
    row["blocked_success"] = sum(g >= 0 for g in after)
    return row


def run_multigoal(opts: MultiGoalOptions, say: Callable[[str], None] = print) -> list[dict]:
    from smfp.storage.rundir import RunDir
    from smfp.training.loop import train_or_stop

    check_choices(opts.algos, ALGOS, "algo")
    check_choices(opts.settings, SETTINGS, "setting")
    if opts.steps <= 0 or opts.episodes <= 0 or not opts.alpha > 0:
        raise ConfigError("--steps, --episodes and --alpha must be positive")
    out = Path(opts.out)
    rows = []
    for seed in opts.seeds:
        for setting in opts.settings:
            for algo in opts.algos:
                run_dir = out / setting / f"{algo}-s{seed}"
                cfg = run_config(setting, algo, seed, opts.steps, opts.alpha, run_dir)
                cfg.resume = RunDir(run_dir).config.exists()
                t0 = time.perf_counter()
                train_or_stop(cfg)
                row = {"setting": setting, "algo": algo, "seed": seed, "train_seconds": round(time.perf_counter() - t0),
                       **evaluate(run_dir, opts.episodes, opts.eval_seed)}
                rows.append(row)
                say(format_row(row))
                write(out, rows)
    return rows


def format_row(r: dict) -> str:
    counts = "/".join(str(c) for c in r["goal_counts"].values())
    return (f"{r['setting']:<10} {r['algo']:<5} seed {r['seed']}: goals {counts} (entropy {r['goal_entropy']:.2f}), "
            f"TV origin {r['tv_origin']:.2f} ({r['target_modes_origin']} target modes), "
            f"TV (2.5, 2.5) {r['tv_(2.5, 2.5)']:.2f}, blocked {r['blocked_goal']}: {r['blocked_success']} reached "
            f"[{r['train_seconds']}s]")


def write(out: Path, rows: list[dict]) -> None:
    from smfp.storage.atomic import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "multigoal.json", json.dumps(rows, indent=1))
    lines = ["| setting | algo | seed | goals R/L/U/D | goal entropy (max %.2f) | TV origin | target modes origin | "
             "TV (2.5, 2.5) | blocked goal | blocked success |" % math.log(4), "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['algo']} | {r['seed']} | {'/'.join(map(str, r['goal_counts'].values()))} | "
                     f"{r['goal_entropy']:.2f} | {r['tv_origin']:.2f} | {r['target_modes_origin']} | "
                     f"{r['tv_(2.5, 2.5)']:.2f} | {r['blocked_goal']} | {r['blocked_success']} |")
    atomic_write_text(out / "multigoal.md", "\n".join(lines) + "\n")


__all__ = ["MultiGoalOptions", "SETTINGS", "evaluate", "goal_entropy", "run_config", "run_multigoal"]
