"""``smfp export RUN_DIR --out FILE [--format onnx|torchscript] [--mode ...] [--steps K]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from smfp.cli.args import fail
from smfp.export import export_run
from smfp.export.actor import ExportError
from smfp.export.runtime import FORMATS

FORMAT_OF_SUFFIX = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript"}


def cmd_export(args: argparse.Namespace) -> int:
    if args.steps is not None and args.steps <= 0:
        fail(f"--steps must be positive, got {args.steps}")
    fmt = args.format or FORMAT_OF_SUFFIX.get(Path(args.out).suffix.lower())
    if fmt is None:
        fail(f"cannot tell the format from --out {args.out}; name it .onnx or .pt, or add --format "
             f"{' or --format '.join(FORMATS)}")
    try:
        summary = export_run(args.target, fmt, args.out, args.mode, args.steps)
    except ExportError as exc:
        fail(str(exc))
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"wrote {summary['path']} ({summary['format']}, {summary['policy']} policy, mode {summary['mode']}, "
          f"{summary['steps']} step(s))")
    for name, text in summary["inputs"].items():
        print(f"  input {name}: {text}")
    print(f"  output action: {summary['output']}")
    print(f"verified against the eager policy on {summary['verified_on']} observations: "
          f"max abs error {summary['max_abs_error']:.3g} (tolerance {summary['tolerance']:.3g})"
          + (f"; {summary['near_ties']} of them picked another of two candidates whose min-Q tie to float rounding"
             if summary.get("near_ties") else ""))
    return 0


def add_export_parser(subparsers) -> None:
    """Register ``smfp export``."""
    p = subparsers.add_parser("export", help="export a run's actor to ONNX or TorchScript (self-contained)")
    p.add_argument("target", metavar="RUN_DIR|CHECKPOINT")
    p.add_argument("--format", default=None, choices=FORMATS,
                   help="default: from --out's suffix (.onnx: onnx; .pt, .ts: torchscript)")
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--mode", default="auto", choices=("auto", "sample", "best-of-n", "mean"),
                   help="auto (mean for gaussian, best-of-n otherwise), sample (noise is an input), best-of-n "
                        "(candidate noises are an input; includes the critic), mean (gaussian only)")
    p.add_argument("--steps", type=int, default=None,
                   help="generation steps: MeanFlow jumps for smfp (default 1), Euler steps for flow "
                        "(default: as trained)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=cmd_export)
