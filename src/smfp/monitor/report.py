"""``smfp report``: a Markdown summary and PNG figures for one or several runs (overlaid)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from smfp.config import eval_mode_of
from smfp.monitor.logger import read_metrics
from smfp.storage.rundir import RunDir
from smfp.storage.userfiles import UserFileError, alert_rows, numeric_rows, read_rows

PANELS = {
    "returns": [("eval/return_mean", "eval return"), ("train/episode_return", "train episode return")],
    "entropy_kl": [("train/entropy", "entropy (surrogate)"), ("train/entropy_m1", "entropy (M=1)"),
                   ("train/kl_anchor", "KL to anchor"), ("train/kl_anchor_at_refresh", "KL at refresh")],
    "temperatures": [("train/alpha", "alpha"), ("train/lambda", "lambda")],
    "q_values": [("train/q_mean", "Q mean"), ("train/q_min", "Q min"), ("train/q_max", "Q max"),
                 ("train/td_error", "|TD error|")],
    "gradients": [("train/grad_norm_actor", "actor grad norm"), ("train/grad_norm_critic", "critic grad norm")],
    "saturation": [("train/saturation", "fraction |pre-tanh| > 3"), ("train/sigma_mean", "sigma mean")],
    "modes": [("health/modes", "modes at probe states (mean)"), ("health/multistep_gap", "1-step vs 4-step gap")],
}
LOG_SCALE = {"gradients"}


def _series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    if not pts:
        return np.zeros(0), np.zeros(0)
    s, v = zip(*pts)
    return np.asarray(s, dtype=float), np.asarray(v, dtype=float)


def load_run(run_dir: Path, warn=lambda message: None) -> dict:
    run = RunDir(run_dir)
    if not run.metrics.exists():
        raise FileNotFoundError(f"{run.path} has no {RunDir.METRICS}; is it a run dir?")
    config = {}
    try:  # the report only displays the config: an unreadable one is shown as unknown ("?")
        config = run.read_config("its fields are shown as ?") or {}
    except UserFileError as exc:
        warn(f"smfp report: warning: {exc}")
    if not all(isinstance(config.get(k, {}), dict) for k in ("env", "eval")):
        warn(f"smfp report: warning: {run.config} is malformed; its fields are shown as ?")
        config = {}
    starts = []
    try:  # shown only: an unreadable record is a warning
        starts = read_rows(run.starts)
    except UserFileError as exc:
        warn(f"smfp report: warning: {exc}")
    return {"name": run.path.name, "dir": run.path, "rows": numeric_rows(read_metrics(run.metrics)),
            "alerts": alert_rows(read_metrics(run.alerts)), "config": config, "starts": starts}


def describe_start(start: dict) -> str:
    """One start of a run (a line of ``starts.jsonl``): where, on what and with which code."""
    commit = str(start.get("commit", "?"))
    return (f"step {start.get('step')}: {start.get('cpu', '?')} ({start.get('cpu_id', '?')}), ISA {start.get('isa', '?')}, "
            f"torch {start.get('torch', '?')}, mujoco {start.get('mujoco', '?')}, {start.get('threads', '?')} thread(s), "
            f"{start.get('precision', '?')}, commit {commit[:12] + ('-dirty' if commit.endswith('-dirty') else '')}")


def summarise(run: dict) -> dict:
    steps_e, evals = _series(run["rows"], "eval/return_mean")
    _, sps = _series(run["rows"], "train/sps")
    last = [r for r in run["rows"] if "train/entropy" in r][-1:] or [{}]
    cfg = run["config"]
    return {
        "run": run["name"], "algo": cfg.get("algo", "?"), "env": cfg.get("env", {}).get("env", "?"),
        "seed": cfg.get("seed", "?"), "steps": int(max((r["step"] for r in run["rows"]), default=0)),
        "final_eval": float(np.mean(evals[-3:])) if len(evals) else math.nan,
        "eval_mode": eval_mode_of(cfg),
        "sps_median": float(np.median(sps)) if len(sps) else math.nan,
        "entropy": last[0].get("train/entropy", math.nan), "entropy_m1": last[0].get("train/entropy_m1", math.nan),
        "alerts": len(run["alerts"]),
    }


def plot_panels(runs: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for panel, keys in PANELS.items():
        present = [(k, label) for k, label in keys if any(len(_series(r["rows"], k)[0]) for r in runs)]
        if not present:
            continue
        fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.2), squeeze=False)
        for ax, (key, label) in zip(axes[0], present):
            for i, run in enumerate(runs):
                s, v = _series(run["rows"], key)
                if len(s):
                    ax.plot(s, v, label=run["name"], color=f"C{i}", lw=1.2)
                for a in run["alerts"]:
                    ax.axvline(a["step"], color=f"C{i}", ls=":", lw=0.8)
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            if panel in LOG_SCALE:
                ax.set_yscale("log")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{panel}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        paths.append(path)
    return paths


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else "-"  # not logged yet (e.g. no update before the first checkpoint)
    return str(v)


def write_report(run_dirs: list[str | Path], out: str | Path | None = None, warn=lambda message: None) -> Path:
    runs = [load_run(Path(d), warn) for d in run_dirs]
    out = Path(out) if out is not None else RunDir(runs[0]["dir"]) / RunDir.REPORT
    out.mkdir(parents=True, exist_ok=True)
    figures = plot_panels(runs, out)
    rows = [summarise(r) for r in runs]
    cols = ["run", "algo", "env", "seed", "steps", "final_eval", "eval_mode", "sps_median", "entropy",
            "entropy_m1", "alerts"]
    lines = ["# SMFP run report", "", "`final_eval`: mean of the last 3 evaluations.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    lines += ["", "## Alarms", ""]
    any_alert = False
    for run in runs:
        for a in run["alerts"]:
            any_alert = True
            lines.append(f"- {run['name']}, step {a['step']}: **{a['alarm']}**: {a['message']}")
    if not any_alert:
        lines.append("No alarms were raised.")
    lines += ["", "## Where they ran", "",
              "Each start or resume (`starts.jsonl`). A run repeats bit-for-bit only on the same ISA, libraries, "
              "threads and precision.", ""]
    for run in runs:
        lines.append(f"- {run['name']}: " + ("; ".join(describe_start(s) for s in run["starts"]) if run["starts"]
                                             else "not recorded (a run made before smfp recorded its starts)"))
    lines += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figures]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
