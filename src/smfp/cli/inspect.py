"""``smfp inspect RUN_DIR``: assess multimodality (the command line of ``smfp.monitor.modes``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from smfp.agent import load_agent
from smfp.cli.args import fail
from smfp.monitor.modes import (DEFAULT_MIN_MASS, assess_state, entropy_gap_from_metrics, format_report, plot_states,
                                probe_states, verdict)
from smfp.monitor.target import (VERDICT_NOISE_FACTOR, assess_targets, plot_target, policy_against_target,
                                 target_verdict)
from smfp.storage.rundir import RunDir


def inspect_run(run_dir: str | Path, states: list[list[float]] | None = None, samples: int = 1000,
                num_states: int = 8, episodes: int = 2, seed: int = 0, png: str | Path | None = None,
                min_mass: float = DEFAULT_MIN_MASS, alpha: float | None = None,
                plot_dir: str | Path | None = None, noise_factor: float = VERDICT_NOISE_FACTOR) -> dict:
    """The multimodality assessment of a run (or checkpoint), as a JSON-ready dict: the modes of the policy at
    the probed states and, from the run's critic, the modes of the soft-greedy target ``exp(Q/alpha)`` there
    (``smfp.monitor.target``) with the policy's distance to it, and a verdict on the task."""
    agent = load_agent(run_dir)
    obs_dim = agent.policy.obs_dim
    if states:
        for s in states:
            if len(s) != obs_dim:
                raise ValueError(f"--state has {len(s)} values but {agent.env_id} observations have {obs_dim}")
        probe = np.asarray(states, dtype=np.float32)
    else:
        probe = probe_states(agent, num_states, episodes, seed)
    import torch

    torch.manual_seed(seed)
    reports = [assess_state(agent.policy, s, samples, min_mass) for s in probe]
    run_path = Path(run_dir)
    base = run_path if run_path.is_dir() else run_path.parent.parent
    out = {"run": str(run_dir), "env": agent.env_id, "policy": agent.policy.kind, "step": agent.step,
           "samples": samples, "rule": f"mean-shift KDE modes, Scott bandwidth, min mass {min_mass:g}",
           "states": [r.to_json() for r in reports], "verdict": verdict(reports, agent.policy.kind),
           "train_entropy": entropy_gap_from_metrics(base)}
    alpha = agent.alpha if alpha is None else alpha
    if agent.critic is not None and alpha is not None and alpha > 0:
        targets = assess_targets(agent.policy, agent.critic, probe, alpha, [r.modes for r in reports], seed, min_mass,
                                 noise_factor)
        for entry, t in zip(out["states"], targets):
            entry.update(t.to_json())
        out["target_verdict"] = target_verdict(targets)
        out["verdict"] = verdict(reports, agent.policy.kind, policy_against_target(targets))
        out["target_rule"] = (f"exp(Q/alpha) with Q the critic ensemble's min and alpha {alpha:.4g}; "
                              f"{targets[0].method if targets else 'grid'} estimate, the same mode rule"
                              + (f"; modes whose Q_min dip is within {noise_factor:g}x the critics' disagreement "
                                 "merged" if noise_factor > 0 else ""))
        if plot_dir is not None:
            Path(plot_dir).mkdir(parents=True, exist_ok=True)
            out["target_pngs"] = [str(plot_target(t, Path(plot_dir) / f"target_state{i}.png"))
                                  for i, t in enumerate(targets)]
    else:
        out["target_verdict"] = "no critic or temperature in this checkpoint: the task's target was not assessed"
    if png is None:
        png = base / RunDir.INSPECT_PNG
    out["png"] = str(plot_states(reports, png, f"{agent.policy.kind} on {agent.env_id}, step {agent.step}"))
    return out


def add_inspect_parser(sub) -> None:
    p = sub.add_parser("inspect", help="assess multimodality: does the task's critic target have several modes, "
                                       "and does the policy follow them?")
    p.add_argument("target", metavar="RUN_DIR|CHECKPOINT")
    p.add_argument("--state", action="append", nargs="+", default=None, metavar="X",
                   help="an observation to probe, as numbers or one comma-separated list (repeat the option "
                        "for several states; write --state=-1,0 when the first number is negative). "
                        "Default: start states and states along a few fresh episodes of the policy")
    p.add_argument("--samples", type=int, default=1000, help="actions sampled per state")
    p.add_argument("--states", type=int, default=8, help="states probed when no --state is given")
    p.add_argument("--episodes", type=int, default=2, help="fresh episodes the probed states come from")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-mass", type=float, default=DEFAULT_MIN_MASS,
                   help="smallest share of the samples that counts as a mode")
    p.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/inspect.png)")
    p.add_argument("--alpha", type=float, default=None,
                   help="temperature of the critic's target exp(Q/alpha) (default: the run's, from the checkpoint)")
    p.add_argument("--plot", default=None, metavar="DIR",
                   help="write one PNG per probed state: the critic's target with the policy's samples over it")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--target-noise-factor", type=float, default=VERDICT_NOISE_FACTOR, metavar="X",
                   help="two modes of the critic's target count as one where the dip of Q between them is at most X "
                        "times the critic ensemble's disagreement there: a flat critic's wiggles at a small alpha are "
                        "noise, not distinct good actions (0: the plain mode rule; default: %(default)g)")
    p.set_defaults(func=cmd_inspect)


def _parse_states(raw: list[list[str]] | None) -> list[list[float]] | None:
    if not raw:
        return None
    states = []
    for tokens in raw:
        values = []
        for tok in tokens:
            for part in tok.split(","):
                if not part.strip():
                    continue
                try:
                    v = float(part)
                except ValueError:
                    raise ValueError(f"--state expects numbers, got {part!r}") from None
                if not math.isfinite(v):
                    raise ValueError(f"--state values must be finite, got {part!r}")
                values.append(v)
        if not values:
            raise ValueError("--state needs at least one number")
        states.append(values)
    return states


def cmd_inspect(args) -> int:
    for name, value, low in (("--samples", args.samples, 2), ("--states", args.states, 1),
                             ("--episodes", args.episodes, 1)):
        if value < low:
            fail(f"{name} must be at least {low}, got {value}")
    if args.seed < 0:
        fail(f"--seed must be >= 0, got {args.seed}")
    if not 0.0 <= args.min_mass < 1.0:
        fail(f"--min-mass must be in [0, 1), got {args.min_mass}")
    if args.alpha is not None and not (math.isfinite(args.alpha) and args.alpha > 0):
        fail(f"--alpha must be a positive number, got {args.alpha}")
    if not (math.isfinite(args.target_noise_factor) and args.target_noise_factor >= 0):
        fail(f"--target-noise-factor must be a number >= 0, got {args.target_noise_factor}")
    try:
        states = _parse_states(args.state)
        report = inspect_run(args.target, states, args.samples, args.states, args.episodes, args.seed,
                             args.out, args.min_mass, args.alpha, args.plot, args.target_noise_factor)
    except ValueError as exc:
        if type(exc) is not ValueError:  # CheckpointError, EnvError...: the CLI reports those itself
            raise
        fail(str(exc))
    except OSError as exc:
        if exc.filename is None:
            raise
        fail(f"cannot write {exc.filename}: {exc.strerror}")
    print(json.dumps(report) if args.json else format_report(report))
    return 0
