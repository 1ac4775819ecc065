"""``smfp demo``: the main job's command line (the job itself is ``smfp.demo``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from smfp.config import ConfigError
from smfp.demo import DEFAULT_TASKS, DEMO_ALGOS, TASKS, DemoOptions, run_demo

QUICK = {"steps": 600, "episodes": 10, "samples": 200}


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="the main job: SAC vs SMFP on the built-in multimodal tasks, with figures")
    p.add_argument("--out", default=None, help="output folder (default: runs/demo-DATE-TIME)")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS),
                   help=f"comma-separated, from {', '.join(TASKS)} (default: {', '.join(DEFAULT_TASKS)})")
    p.add_argument("--algos", default=",".join(DEMO_ALGOS), help="comma-separated algorithms to compare")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds (one run per algo, task, seed)")
    p.add_argument("--steps", type=int, default=None, help="environment steps per training run "
                   "(default: the tuned budget of each task, see docs/demo.md)")
    p.add_argument("--episodes", type=int, default=100, help="stochastic evaluation episodes per run")
    p.add_argument("--samples", type=int, default=500, help="sampled actions per probed state (figures, modes)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke-test budget: --steps {QUICK['steps']} --episodes {QUICK['episodes']} "
                        f"--samples {QUICK['samples']} unless given (results are not meaningful)")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="skip the PNG figures")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object instead of a table")
    p.set_defaults(func=cmd_demo)


def _csv(text: str, name: str, cast=str) -> tuple:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError(f"{name} is empty")
    try:
        return tuple(cast(t) for t in items)
    except ValueError:
        raise ConfigError(f"{name} expects comma-separated {cast.__name__} values, got {text!r}") from None


def cmd_demo(args) -> int:
    steps, episodes, samples = args.steps, args.episodes, args.samples
    if args.quick:
        steps = steps if steps is not None else QUICK["steps"]
        episodes = episodes if episodes != 100 else QUICK["episodes"]
        samples = samples if samples != 500 else QUICK["samples"]
    if samples <= 1:
        raise ConfigError(f"--samples must be at least 2, got {samples}")
    out = Path(args.out) if args.out else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    seeds = _csv(args.seeds, "--seeds", int)
    if any(s < 0 for s in seeds):
        raise ConfigError("--seeds must be >= 0")
    opts = DemoOptions(out=out, tasks=_csv(args.tasks, "--tasks"), algos=_csv(args.algos, "--algos"),
                       seeds=seeds, steps=steps, episodes=episodes, samples=samples,
                       figures=args.figures, progress=args.progress)
    results = run_demo(opts)
    if args.json:
        print(json.dumps({k: results[k] for k in ("tasks", "figures", "seconds", "settings")}, default=str))
        return 0
    print(results["table"])
    for f in results["figures"]:
        print(f"figure: {f}")
    print(f"summary: {out / 'summary.json'}  ({results['seconds']:.0f}s in all)")
    return 0
