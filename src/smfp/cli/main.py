"""``smfp`` command line: train, eval, report, bench (train, bandit, latency), sweep, aggregate, export,
demo, inspect. Every subcommand's parser lives in this package or beside the code it drives.

User mistakes (bad options, unknown envs, missing or unsafe checkpoints) are reported as one
line on stderr with a non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import json
import sys
import typing

from smfp.cli.args import OneLineParser, add_dataclass_args, build_dataclass, fail
from smfp.config import ConfigError, TrainConfig


# Disk problems are the machine's, not the program's: one line, not a traceback.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG, errno.EACCES, errno.EPERM}


def _user_errors() -> tuple[type[BaseException], ...]:
    from smfp.envs import EnvError
    from smfp.storage.userfiles import UserFileError  # damaged checkpoints, configs, logs (CheckpointError too)
    from smfp.training.loop import TrainingDiverged

    return (ConfigError, EnvError, UserFileError, TrainingDiverged)


def cmd_train(args: argparse.Namespace) -> int:
    """0 when the run reached --total-steps; 128 + the signal's number (130 SIGINT, 143 SIGTERM) when a signal
    stopped it early: the summary is still printed and the final checkpoint written, but the run is not done."""
    from smfp.training.loop import stop_report, train

    cfg = build_dataclass(TrainConfig, vars(args))
    result = train(cfg)
    summary = {"run_dir": str(result.run_dir), "step": result.step, "stopped_early": result.stopped_early}
    if result.final_eval:
        summary.update({k: result.final_eval[k] for k in ("return_mean", "return_std", "episodes", "mode",
                                                          "return_mean_sample") if k in result.final_eval})
    print(json.dumps(summary), flush=True)
    if result.stop_signal is None:
        return 0
    print(f"smfp: error: {stop_report(result)}; continue with --resume", file=sys.stderr, flush=True)
    return 128 + result.stop_signal


def cmd_eval(args: argparse.Namespace) -> int:
    from smfp.agent import evaluate, load_agent

    if args.episodes <= 0:
        fail(f"--episodes must be positive, got {args.episodes}")
    if args.seed < 0:
        fail(f"--seed must be >= 0, got {args.seed}")
    agent = load_agent(args.target)
    try:
        mode = agent.resolve_mode(args.mode)
    except ValueError as exc:
        fail(str(exc))
    result = evaluate(agent, args.episodes, mode, seed=args.seed)
    out = {k: result[k] for k in ("return_mean", "return_std", "episodes", "mode")}
    out["step"] = agent.step
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{agent.env_id} step {agent.step}: return {out['return_mean']:.1f} +- {out['return_std']:.1f} "
              f"over {args.episodes} episodes (mode {mode})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from smfp.monitor.report import write_report

    try:
        path = write_report(args.run_dirs, args.out, warn=lambda message: print(message, file=sys.stderr))
    except FileNotFoundError as exc:
        fail(str(exc))
    except OSError as exc:  # e.g. --out under a regular file, or an unwritable folder
        fail(f"cannot write the report to {exc.filename or args.out}: {exc.strerror or exc}")
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="smfp", description="Stochastic MeanFlow Policies: train, evaluate, benchmark.")
    sub = parser.add_subparsers(dest="command", parser_class=OneLineParser, metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("train", help="train an agent (sac, mdpo, smfp, flow)")
    add_dataclass_args(p, TrainConfig)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run's latest checkpoint or a checkpoint file")
    p.add_argument("target", metavar="RUN_DIR|CHECKPOINT")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--mode", default="auto", help="auto, sample, best-of-n or mean (gaussian only)")
    p.add_argument("--seed", type=int, default=10_000, help="episode i starts from reset(seed + i)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("report", help="Markdown summary and PNG figures of one or several runs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default=None, help="output folder (default: FIRST_RUN_DIR/report)")
    p.set_defaults(func=cmd_report)

    from smfp.cli.bench import add_bench_parser  # bench train, bandit, latency, sb3-sac

    add_bench_parser(sub)

    from smfp.cli.sweep import add_subcommands as add_sweep_subcommands  # sweep, aggregate

    add_sweep_subcommands(sub)

    from smfp.cli.export import add_export_parser  # export

    add_export_parser(sub)

    from smfp.cli.demo import add_demo_parser  # demo (the main job)
    from smfp.cli.inspect import add_inspect_parser  # inspect (assess multimodality)

    add_demo_parser(sub)
    add_inspect_parser(sub)
    return parser


def _subparser(parser: argparse.ArgumentParser, name: str | None) -> argparse.ArgumentParser | None:
    for action in parser._actions:  # argparse keeps its subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name)
    return None


def close_flags(word: str, flags: list[str], n: int = 4) -> list[str]:
    """The options a mistyped ``word`` may have meant: those containing it (``--lr``: ``--actor-lr``, ...), else the
    nearest spellings."""
    stem = word.split("=", 1)[0].lstrip("-")
    if len(stem) >= 2:
        containing = [f for f in flags if stem in f.lstrip("-")]
        if containing:  # the nearest spelling first
            return sorted(containing, key=lambda f: (-difflib.SequenceMatcher(None, word, f).ratio(), f))[:n]
    return difflib.get_close_matches(word.split("=", 1)[0], flags, n=n, cutoff=0.7)


def reject_unknown(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> typing.NoReturn:
    """One line for arguments no option takes, from the subcommand that got them, with the options meant."""
    target = _subparser(parser, getattr(args, "command", None)) or parser
    nested = _subparser(target, getattr(args, "bench", None)) if getattr(args, "command", None) == "bench" else None
    target = nested or target
    flags = [s for s in target._option_string_actions if s.startswith("--")]
    hints = [f"{x}: did you mean {' or '.join(close)}?" for x in extra if x.startswith("--")
             for close in [close_flags(x, flags)] if close]
    target.error(f"unrecognized arguments: {' '.join(extra)}" + (f" ({'; '.join(hints)})" if hints else ""))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        reject_unknown(parser, args, extra)
    try:
        return args.func(args) or 0
    except _user_errors() as exc:
        fail(str(exc))
    except (MemoryError, RuntimeError) as exc:  # torch reports a failed allocation as a RuntimeError
        if not isinstance(exc, MemoryError) and "can't allocate memory" not in str(exc):
            raise
        fail("out of memory; use smaller sizes (--buffer-size, --hidden, --critic-hidden, --batch-size)")
    except OSError as exc:
        if exc.errno not in _DISK_ERRNOS:
            raise
        fail(f"{exc.strerror} ({exc.filename or 'while writing'}); free space or fix the folder, then run again"
             + (" with --resume" if getattr(args, "command", None) == "train" else ""))
    except KeyboardInterrupt:
        print("smfp: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from smfp.training.loop import TrainingStopped

        if not isinstance(exc, TrainingStopped):
            raise
        print(f"smfp: error: {exc}", file=sys.stderr, flush=True)
        return 128 + exc.signum


if __name__ == "__main__":
    sys.exit(main())
