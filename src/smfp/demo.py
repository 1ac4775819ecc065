"""``smfp demo``: the main job. SAC vs SMFP on the built-in multimodal tasks, with pictures.

Trains each algorithm through the public API (``smfp.train(TrainConfig)``), then measures 100
stochastic episodes from the start state of each task, prints a comparison table and writes
PNG figures (trajectories; sampled actions over the critic's Q landscape at chosen states).
The settings used are in ``DEMO_SETTINGS`` and recorded in every run's ``config.json``; the
evidence behind them is in ``docs/demo.md``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from smfp.config import ALGOS, ConfigError, TrainConfig, check_choices
from smfp.storage.rundir import RunDir

TASKS = {"multigoal": "smfp/MultiGoal-v0", "hallway": "smfp/Hallway-v0"}
DEFAULT_TASKS = ("multigoal",)  # Hallway showed no difference between the two (docs/demo.md); --tasks hallway runs it
DEMO_ALGOS = ("sac", "smfp")

# Settings shared by both algorithms (small networks: these tasks are 2-D and the demo has a
# budget of a few minutes on 2 CPU cores), then per-algorithm / per-task differences.
COMMON = {"policy.hidden": (64, 64), "critic.critic_hidden": (64, 64), "update.batch_size": 128,
          "update.learning_starts": 1000, "eval.eval_every": 0, "eval.eval_episodes": 5,
          "log.log_every": 500, "log.tensorboard": False, "checkpoint.checkpoint_every": 0,
          "checkpoint.keep_checkpoints": 1, "buffer.save_buffer": False}
# MultiGoal: both algorithms with `--multimodal` (temperature fixed, soft-optimal backup, 10k random steps; for
# SMFP also four heads and the em update, smfp.config.MULTIMODAL_HEADS) at alpha 0.1 on rewards x 0.1 (= alpha 1
# on the task's own scale), where SAC's Gaussian can no longer cover the critic's four bumps.
STEPS_MG = 26_000  # 10k random steps (--multimodal) + 16k updates
_MG = {"multimodal": True, "update.alpha": 0.1, "update.gamma": 0.9, "update.critic_lr": 1e-3}
_HW = {"update.critic_lr": 1e-3, "update.alpha": 0.1, "update.alpha_lr": 1e-3}
DEMO_SETTINGS: dict[str, dict] = {
    # MultiGoal trains on its exploring-starts variant (rewards x 0.1, half of the episodes from
    # N(0, 2^2)); evaluation is on smfp/MultiGoal-v0 from the start state. See docs/demo.md.
    "multigoal": {"train_env": "smfp/MultiGoalExplore-v0", "steps": {"sac": STEPS_MG, "smfp": STEPS_MG},
                  "sac": dict(_MG), "smfp": dict(_MG)},
    "hallway": {"steps": {"sac": 6000, "smfp": 6000},
                "sac": dict(_HW), "smfp": {**_HW, "policy.actor_states": 32, "update.anchor_period": 200,
                                           "update.md_lambda": 0.1, "update.autotune_lambda": True,
                                           "update.lambda_per_alpha": False}},
}

# States at which the action distribution is drawn over the critic's target (one panel each).
PROBE_STATES = {
    "multigoal": [("start", [0.0, 0.0]), ("between two goals", [2.5, 2.5])],
    "hallway": [("start", [1.0, 0.0, 0.0, 0.0]), ("before obstacle", [3.0, 0.0, 0.45, 0.0])],
}


def set_path(cfg: TrainConfig, dotted: str, value) -> None:
    obj = cfg
    *parents, leaf = dotted.split(".")
    for p in parents:
        obj = getattr(obj, p)
    if not hasattr(obj, leaf):
        raise ConfigError(f"unknown demo setting {dotted!r}")
    setattr(obj, leaf, value)


def demo_config(task: str, algo: str, seed: int, steps: Optional[int], run_dir: Path,
                overrides: Optional[dict] = None, progress: bool = False) -> TrainConfig:
    cfg = TrainConfig(algo=algo, seed=seed, run_dir=str(run_dir))
    settings = DEMO_SETTINGS[task]
    cfg.env.env = settings.get("train_env", TASKS[task])
    cfg.total_steps = int(steps if steps is not None else settings["steps"].get(algo, max(settings["steps"].values())))
    for key, value in {**COMMON, **settings.get(algo, {}), **(overrides or {})}.items():
        set_path(cfg, key, value)
    cfg.update.learning_starts = min(cfg.update.learning_starts, max(cfg.total_steps // 3, 1))
    cfg.log.log_every = min(cfg.log.log_every, max(cfg.total_steps // 4, 1))
    cfg.log.progress = progress
    return cfg


# --- evaluation --------------------------------------------------------------------------------------

def rollouts(agent, env_id: str, episodes: int, seed: int, mode: str = "sample",
             env_kwargs: Optional[dict] = None) -> list[dict]:
    """Episodes from the start state with stochastic actions; keeps the path and the final info."""
    from smfp.envs import make_env

    env = make_env(env_id, env_kwargs=env_kwargs)
    out = []
    try:
        for i in range(episodes):
            obs, info = env.reset(seed=seed + i)
            path, total, done, met = [obs[:2].copy()], 0.0, False, False
            while not done:
                obs, reward, terminated, truncated, info = env.step(agent.act_normalized(obs, mode))
                path.append(obs[:2].copy())
                total += reward
                met = met or bool(info.get("blocked", False))  # the blocked-goal test's obstacle refused a move
                done = terminated or truncated
            out.append({"return": total, "length": len(path) - 1, "info": info, "path": np.asarray(path),
                        "met_obstacle": met})
    finally:
        env.close()
    return out


def summarize(task: str, eps: list[dict]) -> dict:
    n = len(eps)
    s = {"episodes": n, "return_mean": float(np.mean([e["return"] for e in eps]))}
    if task == "multigoal":
        from smfp.envs.multimodal import GOAL_NAMES

        goals = [int(e["info"].get("goal", -1)) for e in eps]
        counts = {name: goals.count(g) for g, name in enumerate(GOAL_NAMES)}
        from smfp.monitor.multigoal import goal_entropy

        s.update(goal_counts=counts, reached=sum(counts.values()), distinct=sum(c > 0 for c in counts.values()),
                 distinct_10pct=sum(c >= 0.1 * n for c in counts.values()),
                 goal_entropy=goal_entropy(list(counts.values())))
    else:
        succ = sum(bool(e["info"].get("success")) for e in eps)
        coll = sum(bool(e["info"].get("collision")) for e in eps)
        routes = {r: sum(e["info"].get("route") == r for e in eps) for r in ("up", "down")}
        s.update(success=succ, collision=coll, routes=routes)
    return s


def task_verdict(agent, samples: int, seed: int = 0) -> str | None:
    """What ``smfp inspect RUN_DIR`` says of the task from this run's critic (its default probe states: the start
    and states along two fresh episodes); None without a critic or a temperature."""
    import torch

    from smfp.monitor.modes import assess_state, probe_states
    from smfp.monitor.target import VERDICT_NOISE_FACTOR, assess_targets, target_verdict

    if agent.critic is None or not agent.alpha:
        return None
    probe = probe_states(agent, 8, 2, seed)
    torch.manual_seed(seed)
    modes = [assess_state(agent.policy, s, samples).modes for s in probe]
    return target_verdict(assess_targets(agent.policy, agent.critic, probe, agent.alpha, modes, seed,
                                         noise_factor=VERDICT_NOISE_FACTOR))


def blocked_rollouts(agent, summ: dict, episodes: int, seed: int) -> tuple[dict, list[dict]]:
    """The blocked-goal test (``smfp.monitor.multigoal``): the goal this run reached most often is walled off
    (no move enters a disc of ``BLOCK_RADIUS`` around it); the episodes that still reach a goal, and their paths."""
    from smfp.envs.multimodal import GOAL_NAMES
    from smfp.monitor.multigoal import BLOCK_RADIUS, most_reached_goal

    blocked = most_reached_goal(summ["goal_counts"])
    eps = rollouts(agent, TASKS["multigoal"], episodes, seed + episodes,
                   env_kwargs={"blocked_goal": blocked, "block_radius": BLOCK_RADIUS})
    reached = [int(e["info"].get("goal", -1)) >= 0 for e in eps]
    for e in eps:
        e["blocked_goal"] = GOAL_NAMES[blocked]
    return {"blocked_goal": GOAL_NAMES[blocked], "blocked_success": sum(reached),
            "blocked_met": sum(e["met_obstacle"] for e in eps),
            "blocked_escaped": sum(e["met_obstacle"] and r for e, r in zip(eps, reached))}, eps


def multigoal_checks(agent, seed: int) -> dict:
    """The critic's own target (``smfp.monitor.multigoal.target_at``) at the start and at the second probe
    state (between two goals): its modes and the policy's TV to it."""
    from smfp.monitor.multigoal import target_at

    out: dict = {}
    if agent.critic is not None and agent.alpha:
        for key, (_, state) in zip(("start", "between"), PROBE_STATES["multigoal"]):
            t = target_at(agent.policy, agent.critic, agent.alpha, np.asarray(state, dtype=np.float32), seed)
            out.update({f"target_modes_{key}": t["target_modes"], f"tv_to_target_{key}": t["tv_to_target"]})
    return out


# --- figures ------------------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw_task(ax, task: str) -> None:
    import matplotlib.patches as mpatches

    if task == "multigoal":
        from smfp.envs.multimodal import GOALS

        for g in GOALS:
            ax.add_patch(mpatches.Circle(g, 1.0, color="tab:green", alpha=0.25))
        ax.set_xlim(-7, 7)
        ax.set_ylim(-7, 7)
    else:
        ax.add_patch(mpatches.Circle((5.0, 0.0), 1.0, color="0.5"))
        ax.axhline(3.0, color="k", lw=2)
        ax.axhline(-3.0, color="k", lw=2)
        ax.axvspan(9.5, 10.0, color="tab:green", alpha=0.25)
        ax.set_xlim(0, 10)
        ax.set_ylim(-3.2, 3.2)
    ax.set_aspect("equal")


def plot_trajectories(task: str, per_algo: dict[str, list[dict]], path: Path, title: str,
                      blocked: Optional[dict[str, list[dict]]] = None) -> Path:
    """One panel per algorithm; with ``blocked`` (MultiGoal), a second row: the same policies with their most
    reached goal walled off (grey disc)."""
    plt = _plt()
    algos = list(per_algo)
    rows = [("", per_algo)] + ([("blocked: ", blocked)] if blocked else [])
    width = 4.2 if task == "multigoal" else 5.5
    height = 4.4 if task == "multigoal" else 3.0
    fig, axes = plt.subplots(len(rows), len(algos), figsize=(width * len(algos), height * len(rows)), squeeze=False)
    for r, (prefix, eps_by_algo) in enumerate(rows):
        for ax, algo in zip(axes[r], algos):
            _draw_task(ax, task)
            eps = eps_by_algo[algo]
            if prefix:
                _draw_block(ax, eps)
            for e in eps:
                p = e["path"]
                bad = bool(e["info"].get("collision"))
                ax.plot(p[:, 0], p[:, 1], color="tab:red" if bad else "tab:blue", lw=0.7, alpha=0.35)
            summ = summarize(task, eps)
            if task == "multigoal":
                sub = " ".join(f"{k}:{v}" for k, v in summ["goal_counts"].items())
                if prefix:
                    sub += f" (reached {summ['reached']}/{summ['episodes']})"
            else:
                sub = f"up {summ['routes']['up']} down {summ['routes']['down']} collide {summ['collision']}"
            ax.set_title(f"{prefix}{algo}: {sub}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _draw_block(ax, eps: list[dict]) -> None:
    """The wall of the blocked-goal test, from the goal the test blocked (the same for every episode)."""
    import matplotlib.patches as mpatches

    from smfp.envs.multimodal import GOAL_NAMES, GOALS
    from smfp.monitor.multigoal import BLOCK_RADIUS

    name = eps[0]["blocked_goal"] if eps and "blocked_goal" in eps[0] else None
    if name is not None:
        ax.add_patch(mpatches.Circle(GOALS[GOAL_NAMES.index(name)], BLOCK_RADIUS, color="0.45", alpha=0.6))


def plot_action_landscape(task: str, agents: dict, path: Path, samples: int = 500, grid: int = 61) -> Path:
    """Sampled actions over each agent's own critic's soft-greedy target ``exp(Q(s, a)/alpha)`` (Q: the
    ensemble's min; normalised on the grid), at ``PROBE_STATES``; over min-Q where a run has no temperature."""
    import torch

    plt = _plt()
    states = PROBE_STATES[task]
    algos = list(agents)
    fig, axes = plt.subplots(len(states), len(algos), figsize=(3.6 * len(algos), 3.4 * len(states)),
                             squeeze=False)
    lin = np.linspace(-1, 1, grid)
    ga, gb = np.meshgrid(lin, lin)
    acts = torch.as_tensor(np.stack([ga.ravel(), gb.ravel()], 1), dtype=torch.float32)
    for col, algo in enumerate(algos):
        agent = agents[algo]
        alpha = float(agent.alpha) if agent.alpha else None
        for row, (name, state) in enumerate(states):
            ax = axes[row][col]
            obs = torch.as_tensor(state, dtype=torch.float32)
            with torch.no_grad():
                q = agent.critic(obs.expand(len(acts), -1), acts).min(dim=0).values.numpy().reshape(grid, grid)
                a = agent.policy.act(obs.expand(samples, -1), "sample").numpy()
            if alpha is not None:
                z = (q - q.max()) / alpha
                z = np.exp(z) / np.exp(z).sum()
            else:
                z = q
            cs = ax.contourf(ga, gb, z, levels=20, cmap="viridis")
            fig.colorbar(cs, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
            ax.scatter(a[:, 0], a[:, 1], s=3, c="white", edgecolors="none", alpha=0.6)
            ax.set_xlim(-1, 1)
            ax.set_ylim(-1, 1)
            ax.set_aspect("equal")
            what = f"target (alpha {alpha:.3g})" if alpha is not None else "min-Q"
            ax.set_title(f"{algo}, {name} {tuple(round(v, 1) for v in state[:2])}: {what}", fontsize=7)
            ax.tick_params(labelsize=7)
    fig.suptitle(f"{TASKS[task]}: sampled actions (white) over the critic's target exp(Q/alpha) (colour)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- the job --------------------------------------------------------------------------------------------

@dataclass
class DemoOptions:
    out: Path = Path("runs/demo")
    tasks: tuple[str, ...] = DEFAULT_TASKS
    algos: tuple[str, ...] = DEMO_ALGOS
    seeds: tuple[int, ...] = (0,)
    steps: Optional[int] = None  # per training run (None: DEMO_SETTINGS)
    episodes: int = 100
    eval_seed: int = 20_000
    samples: int = 500  # sampled actions per probe state (figures, mode counts)
    figures: bool = True
    overrides: dict = field(default_factory=dict)  # "task.algo" or "algo" -> {dotted key: value}
    progress: bool = True


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _progress_callback(label: str, total: int) -> Callable[[int, dict], None]:
    start = time.perf_counter()

    def cb(step: int, row: dict) -> None:
        if "train/sps" not in row:
            return
        ret = row.get("train/episode_return")
        ret_s = f" episode return {ret:8.1f}" if isinstance(ret, float) else ""
        h = row.get("train/entropy")
        h_s = f" entropy {h:5.2f}" if isinstance(h, float) else ""
        _say(f"  {label} step {step:6d}/{total}{ret_s}{h_s}  ({row['train/sps']:.0f} steps/s, "
             f"{time.perf_counter() - start:.0f}s)")

    return cb


def run_demo(opts: DemoOptions) -> dict:
    from smfp.agent import load_agent
    from smfp.monitor.modes import assess_state
    from smfp.training.loop import train_or_stop

    check_choices(opts.tasks, TASKS, "demo task")
    check_choices(opts.algos, ALGOS, "algo")
    if opts.episodes <= 0:
        raise ConfigError(f"--episodes must be positive, got {opts.episodes}")
    if opts.steps is not None and opts.steps <= 0:
        raise ConfigError(f"--steps must be positive, got {opts.steps}")
    out = Path(opts.out)
    for task in opts.tasks:
        for seed in opts.seeds:
            for algo in opts.algos:
                if RunDir(out / task / f"{algo}-s{seed}").config.exists():
                    raise ConfigError(f"{out / task / f'{algo}-s{seed}'} already holds a run; "
                                      "remove it or pass another --out")
    _say(f"smfp demo -> {out} (tasks {', '.join(opts.tasks)}; algos {', '.join(opts.algos)}; "
         f"seeds {', '.join(map(str, opts.seeds))}; progress on stderr)")
    t_start = time.perf_counter()
    results: dict = {"tasks": {}, "figures": [], "settings": {}}
    for task in opts.tasks:
        results["tasks"][task] = {}
        for seed in opts.seeds:
            agents, eps_by_algo, blocked_eps = {}, {}, {}
            for algo in opts.algos:
                run_dir = out / task / f"{algo}-s{seed}"
                overrides = {**opts.overrides.get(algo, {}), **opts.overrides.get(f"{task}.{algo}", {})}
                cfg = demo_config(task, algo, seed, opts.steps, run_dir, overrides, progress=opts.progress)
                label = f"[{task} {algo} seed {seed}]"
                _say(f"{label} training {cfg.total_steps} steps -> {run_dir}")
                t0 = time.perf_counter()
                train_or_stop(cfg, callback=_progress_callback(label, cfg.total_steps))
                train_s = time.perf_counter() - t0
                agent = load_agent(run_dir)
                eps = rollouts(agent, TASKS[task], opts.episodes, opts.eval_seed)
                summ = summarize(task, eps)
                start_obs = np.asarray(PROBE_STATES[task][0][1], dtype=np.float32)
                rep = assess_state(agent.policy, start_obs, opts.samples)
                if task == "multigoal":
                    blocked, blocked_eps[algo] = blocked_rollouts(agent, summ, opts.episodes, opts.eval_seed)
                    summ.update(blocked, **multigoal_checks(agent, opts.eval_seed))
                summ.update(entropy_start=rep.entropy, modes_start=rep.modes, train_seconds=train_s,
                            steps=cfg.total_steps, task_verdict=task_verdict(agent, opts.samples))
                results["tasks"][task].setdefault(algo, {})[seed] = summ
                results["settings"][f"{task}.{algo}"] = {"steps": cfg.total_steps, **{
                    k: list(v) if isinstance(v, tuple) else v
                    for k, v in {**COMMON, **DEMO_SETTINGS[task].get(algo, {}), **overrides}.items()}}
                _say(f"{label} done in {train_s:.0f}s: {format_summary(task, summ)}")
                agents[algo], eps_by_algo[algo] = agent, eps
            if opts.figures:
                fig_dir = out / "figures"
                fig_dir.mkdir(parents=True, exist_ok=True)
                p1 = plot_trajectories(task, {a: e for a, e in eps_by_algo.items()},
                                       fig_dir / f"{task}_trajectories_s{seed}.png",
                                       f"{TASKS[task]}: {opts.episodes} stochastic episodes from the start, "
                                       f"seed {seed}", blocked=blocked_eps or None)
                p2 = plot_action_landscape(task, agents, fig_dir / f"{task}_actions_s{seed}.png", opts.samples)
                results["figures"] += [str(p1), str(p2)]
    results["seconds"] = time.perf_counter() - t_start
    results["table"] = format_table(results, opts.episodes)
    (out / "summary.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def format_summary(task: str, s: dict) -> str:
    if task == "multigoal":
        counts = " ".join(f"{k} {v}" for k, v in s["goal_counts"].items())
        text = f"goals reached {s['reached']}/{s['episodes']}, distinct {s['distinct']} ({counts})"
        if "blocked_goal" in s:
            text += f"; {s['blocked_goal']} blocked: {s['blocked_success']}/{s['episodes']} reach another goal"
            if "blocked_met" in s:
                text += f" ({s['blocked_met']} met the wall, {s['blocked_escaped']} of them still reached one)"
        if "target_modes_start" in s:
            text += (f"; the critic's target at the start has {s['target_modes_start']} mode(s), "
                     f"policy TV to it {s['tv_to_target_start']:.2f}")
        if "target_modes_between" in s:
            text += (f"; at {tuple(PROBE_STATES['multigoal'][1][1])} {s['target_modes_between']} mode(s), "
                     f"TV {s['tv_to_target_between']:.2f}")
    else:
        text = (f"success {s['success']}/{s['episodes']}, collisions {s['collision']}, "
                f"routes up {s['routes']['up']} / down {s['routes']['down']}")
    if "entropy_start" in s:
        text += f", entropy at start {s['entropy_start']:.2f}, modes at start {s['modes_start']}"
    return text


def format_table(results: dict, episodes: int) -> str:
    lines = []
    for task, by_algo in results["tasks"].items():
        lines.append(f"{TASKS[task]} ({episodes} stochastic episodes from the start state per run)")
        if task == "multigoal":
            from smfp.envs.multimodal import GOAL_NAMES

            head = (f"  {'algo':<6}{'seed':>5}" + "".join(f"{g:>7}" for g in GOAL_NAMES) + f"{'goal H':>8}"
                    + f"{'blocked':>9}{'tgt modes':>10}{'TV':>6}{'tgt (2.5,2.5)':>14}{'TV':>6}"
                    + f"{'entropy':>9}{'modes':>7}")
        else:
            head = (f"  {'algo':<6}{'seed':>5}{'success':>9}{'collide':>9}{'up':>6}{'down':>6}"
                    f"{'entropy':>9}{'modes':>7}")
        lines.append(head)
        for algo, by_seed in by_algo.items():
            for seed, s in by_seed.items():
                if task == "multigoal":
                    tv = lambda k: f"{s[k]:>6.2f}" if k in s else f"{'-':>6}"  # noqa: E731
                    row = (f"  {algo:<6}{seed:>5}" + "".join(f"{s['goal_counts'][g]:>7}" for g in GOAL_NAMES)
                           + f"{s['goal_entropy']:>8.2f}"
                           + f"{s.get('blocked_success', '-'):>9}{s.get('target_modes_start', '-'):>10}"
                           + tv("tv_to_target_start") + f"{s.get('target_modes_between', '-'):>14}"
                           + tv("tv_to_target_between"))
                else:
                    row = (f"  {algo:<6}{seed:>5}{s['success']:>9}{s['collision']:>9}"
                           f"{s['routes']['up']:>6}{s['routes']['down']:>6}")
                lines.append(row + f"{s['entropy_start']:>9.2f}{s['modes_start']:>7}")
    lines.append("entropy: of the action at the start state (nats, [-1, 1]^d units); "
                 "modes: mode count there (smfp.monitor.modes rule)")
    if "multigoal" in results["tasks"]:
        lines.append("goals right/left/up/down: episodes ending there; goal H: entropy of that choice (log 4 = 1.39 is "
                     "all four equally)")
        lines.append("blocked: episodes that reach a goal with the run's most reached goal walled off (those that "
                     "never headed for it, plus those that met the wall and still reached another); tgt modes / "
                     "TV: the critic's target exp(Q/alpha) at the start (and at (2.5, 2.5)), its modes and the "
                     "policy's TV to it")
    for task, by_algo in results["tasks"].items():
        for seed, s in by_algo.get("sac", {}).items():
            if s.get("task_verdict"):
                lines.append(f"smfp inspect on the SAC run ({task}, seed {seed}): {s['task_verdict']}")
    return "\n".join(lines)
