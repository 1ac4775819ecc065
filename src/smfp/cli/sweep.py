"""``smfp sweep`` and ``smfp aggregate`` (the command line of ``smfp.sweep``; registered by ``smfp.cli.main``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from smfp.cli.args import add_dataclass_args, build_dataclass, fail
from smfp.config import TrainConfig
from smfp.sweep.grid import SweepError

# Options a sweep sets per run itself; every other TrainConfig flag passes through to all runs
# (--progress is accepted but progress bars are always off inside the workers).
SWEEP_OWNS = ("algo", "env", "seed", "run_dir", "resume", "threads")


def _warn(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def cmd_sweep(args: argparse.Namespace) -> int:
    from smfp.envs import make_env
    from smfp.sweep.grid import build_grid, parse_list, parse_seeds
    from smfp.sweep.runner import run_sweep

    try:
        algos, envs, seeds = parse_list(args.algos, "algos"), parse_list(args.envs, "envs"), parse_seeds(args.seeds)
        if args.max_retries < 0:
            raise SweepError(f"--max-retries must be >= 0, got {args.max_retries}")
        if args.progress_every <= 0:
            raise SweepError(f"--progress-every must be positive, got {args.progress_every}")
        if args.num_cpus is not None and args.num_cpus < 1:
            raise SweepError(f"--num-cpus must be positive, got {args.num_cpus}")
        overrides = {k: v for k, v in vars(args).items() if k not in SWEEP_OWNS}
        base = build_dataclass(TrainConfig, overrides)
        specs = build_grid(algos, envs, seeds, Path(args.out), base, args.cpus_per_run)
        for env_id in envs:  # a typo in an env id is reported now, not by every Ray task
            make_env(env_id, max_episode_steps=base.env.max_episode_steps).close()
        passed = {k: (list(v) if isinstance(v, tuple) else v) for k, v in overrides.items()
                  if k in {f for f in _train_flags()}}
        grid = {"algos": algos, "envs": envs, "seeds": seeds, "total_steps": specs[0].total_steps,
                "cpus_per_run": args.cpus_per_run, "train_options": passed}
        # Ray's driver prints cluster events (e.g. "a worker died") on stdout; stdout is kept for the
        # JSON summary, so they go to stderr with the progress lines.
        with contextlib.redirect_stdout(sys.stderr):
            result = run_sweep(specs, Path(args.out), grid, args.cpus_per_run, args.max_retries, args.address,
                               args.num_cpus, args.progress_every, emit=_warn)
    except SweepError as exc:
        fail(str(exc))
    summary = {"out": str(result.out), "runs": len(specs), "done": result.count("done"),
               "skipped": result.count("skipped"), "failed": result.count("failed"),
               "interrupted": result.count("interrupted"), "elapsed_s": round(result.elapsed, 1)}
    print(json.dumps(summary))
    if result.stop_signal is not None:
        import signal

        shown = list(result.stopped_at.items())
        steps = ", ".join(f"{name} at {step}" for name, step in shown[:4]) + (", ..." if len(shown) > 4 else "")
        print(f"smfp: error: stopped by {signal.Signals(result.stop_signal).name}; "
              f"{result.count('interrupted')} run(s) not finished, resumable from their last checkpoints "
              f"({steps}); rerun the same command to go on", file=sys.stderr, flush=True)
        return 128 + result.stop_signal
    if result.errors:
        first = next(iter(result.errors.items()))
        fail(f"{len(result.errors)} of {len(specs)} runs failed (first: {first[0]}: {first[1]}); see "
             f"{result.out / 'sweep.json'} and each run's train.log; rerun the same command to retry them", code=1)
    return 0


def _train_flags() -> set[str]:
    import dataclasses
    import typing

    def leaves(cls):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                yield from leaves(hints[f.name])
            else:
                yield f.name

    return set(leaves(TrainConfig)) - set(SWEEP_OWNS)


def cmd_aggregate(args: argparse.Namespace) -> int:
    from smfp.sweep.aggregate import write_aggregate, write_csv, write_curves_csv

    written = []
    # the tables first, so that a table the report cannot normalise still gets its rows
    if args.csv:
        try:
            mine, total = write_csv(Path(args.dir), Path(args.csv), last=args.last, warn=_warn)
        except SweepError as exc:
            fail(str(exc))
        written.append(f"{args.csv} ({mine} rows from {args.dir}, {total} in all)")
    if args.curves_csv:
        try:
            mine, total = write_curves_csv(Path(args.dir), Path(args.curves_csv))
        except SweepError as exc:
            fail(str(exc) + (f" (written before: {'; '.join(written)})" if written else ""))
        written.append(f"{args.curves_csv} (curves of {mine} runs from {args.dir}, {total} runs in all)")
    written = "; ".join(written) or None
    if args.no_report:
        if not written:
            fail("--no-report needs --csv or --curves-csv (there is nothing else to write)")
        print(f"written: {written}", file=sys.stderr)
        return 0
    try:
        path, res = write_aggregate(Path(args.dir), Path(args.out) if args.out else None, warn=_warn,
                                    baseline=args.baseline, reference=Path(args.reference) if args.reference else None,
                                    last=args.last, random_episodes=args.random_episodes, reps=args.reps,
                                    confidence=args.confidence, seed=args.seed,
                                    algos=[a for a in args.algos.split(",") if a] if args.algos else None,
                                    curves_from=Path(args.curves_from) if args.curves_from else None)
    except SweepError as exc:
        fail(str(exc) + (f" (written before: {written})" if written else ""))
    if args.json:
        print(json.dumps(res))
    else:
        print(path.read_text(), end="")
        print(f"written: {', '.join(res['files'])}" + (f", {written}" if written else ""), file=sys.stderr)
    return 0


def add_subcommands(sub) -> None:
    p = sub.add_parser("sweep", help="train algos x envs x seeds as Ray tasks (resumable, local or on a cluster)")
    g = p.add_argument_group("sweep options")
    g.add_argument("--algos", default="sac,smfp", help="comma-separated algorithms (default: sac,smfp)")
    g.add_argument("--envs", required=True, help="comma-separated Gymnasium ids, e.g. Hopper-v5,Walker2d-v5")
    g.add_argument("--seeds", default="0,1,2", help="comma-separated seeds or ranges, e.g. 0,1,2 or 0-4")
    g.add_argument("--out", required=True, metavar="DIR", help="sweep folder; run dirs are DIR/ALGO-ENV-sSEED")
    g.add_argument("--address", default=None,
                   help="join this Ray cluster ('auto': the one started with `ray start` on this machine); "
                        "default: start a local Ray instance")
    g.add_argument("--cpus-per-run", type=int, default=1, metavar="N",
                   help="CPUs Ray reserves per run; also the run's torch threads (default: 1)")
    g.add_argument("--num-cpus", type=int, default=None, metavar="N",
                   help="CPUs of the local Ray instance (default: all of this machine's)")
    g.add_argument("--max-retries", type=int, default=3, metavar="N",
                   help="times Ray retries a run whose worker died; each retry resumes from the last checkpoint")
    g.add_argument("--progress-every", type=float, default=30.0, metavar="S",
                   help="seconds between progress lines (default: 30)")
    add_dataclass_args(p, TrainConfig, skip=SWEEP_OWNS)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("aggregate", help="per-task CIs; IQM, probability of improvement and performance profiles "
                                         "(rliable) of normalised scores; learning curves of a sweep")
    p.add_argument("dir", metavar="DIR", help="a sweep folder (or any folder of run dirs), or a curves table "
                                             "written by --curves-csv (to recompute a report without the run dirs)")
    p.add_argument("--out", default=None, metavar="FILE.md",
                   help="Markdown output (default: DIR/aggregate.md); FILE_curves.png, FILE_profiles.png and FILE.json "
                        "beside it")
    p.add_argument("--baseline", default="sac", help="algorithm whose mean final return scores 1 (default: sac)")
    p.add_argument("--algos", default=None, metavar="A,B",
                   help="report only these algorithms (run labels), e.g. sac,sb3-sac,smfp (default: every one "
                        "in DIR); --csv and --curves-csv still take every run")
    p.add_argument("--reference", default=None, metavar="FILE.json",
                   help='reference table {"TASK": {"reference": R1, "random": R0}} instead of --baseline '
                        '(random optional: measured when absent)')
    p.add_argument("--last", type=int, default=3, metavar="K", help="final return = mean of the last K evals")
    p.add_argument("--random-episodes", type=int, default=10, metavar="N",
                   help="episodes of the uniform random policy that scores 0 (default: 10)")
    p.add_argument("--reps", type=int, default=50_000, metavar="N",
                   help="bootstrap resamples of the CIs (default: 50000; at most 2000 for the "
                        "probability of improvement and the performance profiles)")
    p.add_argument("--confidence", type=float, default=0.95, metavar="X", help="CI level (default: 0.95)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (same seed, same numbers)")
    p.add_argument("--json", action="store_true", help="print the numbers as one JSON object")
    p.add_argument("--csv", default=None, metavar="FILE.csv",
                   help="also write/update this results table: one row per finished run and eval mode "
                        "(algo,commit,env,seed,steps,final_return,eval_mode); rows of runs not under DIR are kept")
    p.add_argument("--curves-csv", default=None, metavar="FILE.csv",
                   help="also write/update this curves table: one row per evaluation of every finished run "
                        "(algo,commit,env,seed,steps,max_episode_steps,eval_mode,eval_step,return,return_sample); "
                        "runs not under DIR are kept. `smfp aggregate FILE.csv` "
                        "recomputes the report from it")
    p.add_argument("--curves-from", default=None, metavar="FILE.csv",
                   help="draw the learning curves from this curves table (one --curves-csv wrote), for the report's "
                        "algorithms and tasks: e.g. when DIR is a results table, which holds finals only")
    p.add_argument("--no-report", action="store_true",
                   help="only update --csv / --curves-csv (e.g. for a folder of one algorithm's runs, which has "
                        "nothing to normalise against)")
    p.set_defaults(func=cmd_aggregate)
