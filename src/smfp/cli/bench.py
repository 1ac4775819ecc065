"""``smfp bench``: train (update throughput), bandit (the fixed-Q acceptance suite), latency (action selection),
sb3-sac (the Stable-Baselines3 SAC reference run)."""

from __future__ import annotations

import argparse
import json
import sys

from smfp.cli.args import OneLineParser, add_dataclass_args, build_dataclass, fail
from smfp.config import ALGOS, ConfigError, TrainConfig, leaf_fields


def cmd_bench_train(args: argparse.Namespace) -> int:
    from smfp.bench.speed.train import format_table, run_train_bench

    algos = [a for a in args.algos.split(",") if a]
    report = run_train_bench(args.env, algos, args.steps, args.repeats, args.compare_sb3, args.warmup,
                             overrides=build_dataclass(TrainConfig, vars(args)), floor=args.floor)
    print(json.dumps(report) if args.json else format_table(report))
    return 0


# The suite's cases fix alpha; every other policy and update setting may be varied (a candidate's rows).
BANDIT_OVERRIDES = {f.name for path, f, _ in leaf_fields() if path[0] in ("policy", "update")} - {
    "alpha", "autotune_alpha", "learning_starts", "updates_per_step"}
# The MultiGoal bench sets the temperature and precision itself (--alpha, --precision) and --multimodal the rest of
# the temperature, the backup and the warm-up; any other policy / update setting may be screened on top.
MULTIGOAL_OVERRIDES = {f.name for path, f, _ in leaf_fields() if path[0] in ("policy", "update")} - {
    "alpha", "autotune_alpha", "learning_starts", "precision", "value_backup"}


def cmd_bench_bandit(args: argparse.Namespace) -> int:
    import torch

    from smfp.bench.acceptance.suite import CASES, format_row, run_suite

    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        fail(f"--seeds expects comma-separated integers, got {args.seeds!r}")
    algos = [a for a in args.algos.split(",") if a]
    if not seeds or any(s < 0 for s in seeds):
        fail(f"--seeds expects comma-separated non-negative integers, got {args.seeds!r}")
    if any(a not in ALGOS for a in algos) or not algos:
        fail(f"--algos expects a comma-separated subset of {','.join(ALGOS)}, got {args.algos!r}")
    if not 1 <= args.steps <= 5000:
        fail(f"--steps must be in 1..5000 (the suite's budget), got {args.steps}")
    known = {c.target.lower() for c in CASES}
    cases = [c.strip().lower() for c in args.cases.split(",") if c.strip()] if args.cases else None
    if cases is not None and (not cases or any(c not in known for c in cases)):
        fail(f"--cases expects comma-separated case names from: {', '.join(sorted(known))}; got {args.cases!r}")
    if args.threads < 1:
        fail(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)  # small matmuls: one thread is fastest, and leaves the other cores alone
    given = {k: v for k, v in vars(args).items() if k in BANDIT_OVERRIDES}

    def overrides(cfg: TrainConfig) -> None:
        changed = build_dataclass(TrainConfig, given, base=cfg)
        cfg.policy, cfg.update = changed.policy, changed.update

    progress = None if args.json else (lambda row: print(format_row(row), flush=True))
    if given and not args.json:
        print("settings: " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in given.items()), flush=True)
    try:
        report = run_suite(seeds, algos, args.steps, fast_only=args.fast, progress=progress,
                           overrides=overrides if given else None, cases=cases)
    except ConfigError as exc:
        fail(str(exc))
    report["settings"] = given
    if args.json:
        print(json.dumps(report))
    else:
        print("rows passed: " + ", ".join(f"{algo} {n} of {total}" for algo, (n, total) in report["passed"].items()))
        print(f"SMFP {'passes' if report['smfp_pass'] else 'does NOT pass'}: TV <= {report['tv_max']} and every "
              f"share within {report['share_tol']} of the target's, in every case")
    return 0 if report["smfp_pass"] or "smfp" not in algos else 1


def cmd_bench_sb3(args: argparse.Namespace) -> int:
    from smfp.bench.sb3_reference import OPTIONS, reference_config, run_sb3_reference

    base = build_dataclass(TrainConfig, {k: v for k, v in vars(args).items() if k in OPTIONS})
    print(json.dumps(run_sb3_reference(reference_config(args.out, base), log=sys.stderr)))
    return 0


def cmd_bench_multigoal(args: argparse.Namespace) -> int:
    from pathlib import Path

    from smfp.bench.acceptance.multigoal import MultiGoalOptions, goal_check, merge_tables, run_multigoal, write
    from smfp.sweep.grid import SweepError, parse_seeds

    if args.merge:  # tables of runs made side by side, one folder each: one table and one goal check, nothing trained
        rows = merge_tables(args.merge)
        write(Path(args.out), rows)
        print(f"merged {len(rows)} rows from {len(args.merge)} folders")
        for line in goal_check(rows):
            print(line)
        print(f"table: {args.out}/multigoal.md")
        return 0

    try:
        seeds = parse_seeds(args.seeds)
    except SweepError as exc:
        fail(str(exc))
    given = {k: v for k, v in vars(args).items() if k in MULTIGOAL_OVERRIDES}
    opts = MultiGoalOptions(out=args.out, seeds=seeds, algos=[a for a in args.algos.split(",") if a],
                            settings=[s for s in args.settings.split(",") if s], steps=args.steps, alpha=args.alpha,
                            episodes=args.episodes, block_radius=args.block_radius, precision=args.precision,
                            overrides=given)
    if given:
        print("settings on top of each setting's: " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in given.items()),
              flush=True)
    run_multigoal(opts, say=lambda line: print(line, flush=True))
    from smfp.bench.acceptance.multigoal import previous_rows

    for line in goal_check(previous_rows(Path(args.out))):  # every seed in the table, this command's and earlier ones
        print(line)
    print(f"table: {args.out}/multigoal.md")
    return 0


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: train (update throughput), latency (action selection)")
    bench = p.add_subparsers(dest="bench", parser_class=OneLineParser, metavar="BENCH")
    bench.required = True
    b = bench.add_parser("train", help="gradient-update throughput (steps/s) on a MuJoCo task")
    b.add_argument("--env", default="HalfCheetah-v5")
    b.add_argument("--algos", default="sac,smfp")
    b.add_argument("--steps", type=int, default=1000, help="timed steps per run (after --warmup)")
    b.add_argument("--warmup", type=int, default=1000, help="random steps filling the buffer, not timed")
    b.add_argument("--repeats", type=int, default=3, help="alternating runs per candidate; medians are reported")
    b.add_argument("--compare-sb3", action="store_true", help="also time Stable-Baselines3's SAC (extra .[bench])")
    b.add_argument("--no-floor", dest="floor", action="store_false",
                   help="skip the matmul floor (each candidate's update time against its GEMMs timed alone)")
    b.add_argument("--json", action="store_true")
    add_dataclass_args(b, TrainConfig, skip=("env", "algo", "total_steps", "run_dir", "resume", "seed"))
    b.set_defaults(func=cmd_bench_train)

    b = bench.add_parser("bandit", help="fixed-Q acceptance suite: does the default actor update match exp(Q/alpha)?")
    b.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    b.add_argument("--algos", default="smfp,sac", help="algorithms whose default policy and update are run")
    b.add_argument("--steps", type=int, default=5000, help="actor updates per case (at most 5000)")
    b.add_argument("--fast", action="store_true", help="only the fast cases (the ones the test suite runs)")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--cases", default=None, help="comma-separated case names (default: all), e.g. "
                                                 "'five peaks (2-D),unequal 3:1'; every temperature of each")
    b.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    add_dataclass_args(b, TrainConfig, skip=tuple(f.name for _, f, _ in leaf_fields() if f.name not in BANDIT_OVERRIDES))
    b.set_defaults(func=cmd_bench_bandit)

    from smfp.bench.speed.latency import BACKENDS, CLOCKS, main_latency

    b = bench.add_parser(
        "latency", help="latency of one action selection: gaussian, smfp (1/2/4 steps), flow-K, best-of-N; "
                        "eager, ONNX Runtime, TorchScript")
    b.add_argument("--batch", default="1,32,1024", help="comma-separated batch sizes (default: 1,32,1024)")
    b.add_argument("--obs-dim", type=int, default=None, help="observation size of untrained networks (default 17)")
    b.add_argument("--act-dim", type=int, default=None, help="action size of untrained networks (default 6)")
    b.add_argument("--run", default=None, metavar="RUN_DIR", help="time this run's trained actor (and same-size "
                   "untrained networks of the other classes)")
    b.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: eager,onnx,torchscript")
    b.add_argument("--seconds", type=float, default=6.0, help="timing budget per batch size (interleaved rounds)")
    b.add_argument("--min-rounds", type=int, default=5, help="rounds run even past --seconds")
    b.add_argument("--best-of-n", type=int, default=None, help="candidates of best-of-N (default: the run's, or 16)")
    b.add_argument("--threads", type=int, default=1, help="torch / ONNX Runtime intra-op threads")
    b.add_argument("--clock", default="wall", choices=tuple(CLOCKS),
                   help="wall: elapsed time, what a controller sees (default); cpu: the calling thread's CPU time, "
                        "which leaves out time the OS gives to other processes (use on a shared, busy machine)")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.set_defaults(func=main_latency)

    b = bench.add_parser("multigoal", help="MultiGoal evidence: goals reached, TV to the critic's target, blocked-goal "
                                           "success, per algo, setting (default / --multimodal) and seed")
    b.add_argument("--out", required=True, metavar="DIR", help="folder of the runs and multigoal.{json,md}; finished "
                                                                "runs in it are evaluated again, not retrained")
    b.add_argument("--seeds", default="0-4", help="comma-separated seeds or ranges (default: 0-4)")
    b.add_argument("--algos", default="sac,smfp", help="comma-separated algorithms (default: sac,smfp)")
    b.add_argument("--settings", default="default,multimodal", help="comma-separated from default, multimodal and "
                   "heads (smfp only: multimodal with the experimental --heads 4 --per-head-sigma --actor-update em); "
                   "default: the first two")
    b.add_argument("--steps", type=int, default=30_000, help="environment steps per run (default: 30000)")
    b.add_argument("--alpha", type=float, default=10.0, help="the fixed temperature of --multimodal (default: 10, "
                                                             "Soft Q-Learning's 1 at reward scale 0.1)")
    b.add_argument("--episodes", type=int, default=100, help="episodes per evaluation (default: 100)")
    b.add_argument("--block-radius", type=float, default=2.0, metavar="R",
                   help="the blocked-goal test's obstacle: no move enters a disc of radius R around the walled goal "
                        "(default: 2, its rim 3 from the start; 4 puts the rim 1 from the start, where the task still "
                        "offers the other goals; docs/demo.md)")
    b.add_argument("--merge", nargs="+", metavar="DIR", help="train nothing: merge the tables of these folders "
                   "(e.g. one per seed, run side by side) into --out and print the goal check over all of them")
    b.add_argument("--precision", default="auto", choices=("fp32", "bf16", "auto"),
                   help="the runs' matmul precision (smfp train --precision; default: auto; a run being resumed "
                        "keeps its own)")
    add_dataclass_args(b, TrainConfig, skip=tuple(f.name for _, f, _ in leaf_fields() if f.name not in MULTIGOAL_OVERRIDES))
    b.set_defaults(func=cmd_bench_multigoal)

    from smfp.bench.sb3_reference import OPTIONS

    b = bench.add_parser(
        "sb3-sac", help="reference: Stable-Baselines3's SAC with smfp's SAC hyperparameters, evaluated like smfp "
                        "runs, written as a run dir for smfp aggregate (extra .[bench])")
    b.add_argument("--out", required=True, metavar="RUN_DIR",
                   help="run dir to write (a finished one is left as it is; an unfinished one restarts)")
    add_dataclass_args(b, TrainConfig, skip=tuple(f.name for _, f, _ in leaf_fields() if f.name not in OPTIONS))
    b.set_defaults(func=cmd_bench_sb3)

