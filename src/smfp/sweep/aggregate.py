"""``smfp aggregate DIR``: per-task returns with bootstrap CIs, the IQM of normalised scores across
tasks with stratified bootstrap CIs, learning curves, and a Markdown table.

A run is any sub-folder of DIR holding ``config.json`` and ``metrics.jsonl`` (what ``smfp sweep``
and ``smfp train`` write). Its *final return* is the mean of its last ``last`` evaluations
(``eval/return_mean`` rows). Normalised score: ``(R - random) / (reference - random)``, where
``random`` is the mean return of a uniform random policy (measured here, cached in
``DIR/random_scores.json``) and ``reference`` is, by default, the mean final return of the
baseline algorithm's runs (``sac``) on that task; or both come from a JSON reference table.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from smfp.config import eval_mode_of
from smfp.monitor.logger import read_metrics
from smfp.sweep.grid import SweepError
from smfp.sweep.stats import bootstrap_ci, iqm, mean, normalise, stratified_bootstrap_ci

RANDOM_FILE = "random_scores.json"
RANDOM_SEED = 10_000  # episodes start like the training loop's evaluations: reset(seed + i)


@dataclass
class Run:
    name: str
    algo: str
    task: str
    seed: int
    eval_steps: np.ndarray
    eval_returns: np.ndarray
    last_step: int
    total_steps: int
    max_episode_steps: Optional[int]
    eval_mode: str

    def final_return(self, last: int = 3) -> float:
        return float(np.mean(self.eval_returns[-last:]))

    @property
    def complete(self) -> bool:
        return self.last_step >= self.total_steps


def load_runs(root: Path, warn=lambda s: None) -> list[Run]:
    root = Path(root)
    if not root.is_dir():
        raise SweepError(f"{root} is not a folder")
    runs = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if not (d / "config.json").exists() or not (d / "metrics.jsonl").exists():
            continue
        try:
            cfg = json.loads((d / "config.json").read_text())
            algo, task, seed = cfg.get("label") or cfg["algo"], cfg["env"]["env"], int(cfg["seed"])
            total, mode = int(cfg.get("total_steps", 0)), eval_mode_of(cfg)
            max_steps = cfg["env"].get("max_episode_steps")
            if not (isinstance(algo, str) and isinstance(task, str)):
                raise TypeError("algo and env must be strings")
        except (OSError, KeyError, TypeError, ValueError, AttributeError, RecursionError):  # also: not a JSON object
            warn(f"smfp aggregate: skipping {d.name}: unreadable config.json")
            continue
        rows = read_metrics(d / "metrics.jsonl")
        evals = [(r["step"], r["eval/return_mean"]) for r in rows
                 if isinstance(r.get("eval/return_mean"), (int, float))]
        if not evals:
            warn(f"smfp aggregate: skipping {d.name}: no evaluation yet")
            continue
        steps, returns = (np.asarray(v, dtype=float) for v in zip(*evals))
        runs.append(Run(d.name, algo, task, seed, steps, returns, int(max(r["step"] for r in rows)), total, max_steps,
                        mode))
    if not runs:
        raise SweepError(f"no evaluated runs in {root} (a run is a folder with config.json and metrics.jsonl)")
    return runs


def random_return(task: str, max_episode_steps: Optional[int], episodes: int) -> float:
    """Mean return of uniform random actions over ``episodes`` episodes (reset seeds 10000 + i)."""
    from smfp.agent import run_episodes
    from smfp.envs import make_env

    env = make_env(task, max_episode_steps=max_episode_steps)
    rng = np.random.default_rng(RANDOM_SEED)
    shape = env.action_space.shape
    try:
        eps = run_episodes(lambda obs: rng.uniform(-1.0, 1.0, shape).astype(np.float32), env, episodes, RANDOM_SEED)
    finally:
        env.close()
    return float(np.mean([e["return"] for e in eps]))


def _cached_random(root: Path, task: str, max_episode_steps, episodes: int) -> float:
    path = Path(root) / RANDOM_FILE
    try:
        cache = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError, RecursionError):
        cache = {}
    if not isinstance(cache, dict):  # a damaged cache is measured again
        cache = {}
    key = {"episodes": episodes, "max_episode_steps": max_episode_steps, "seed": RANDOM_SEED}
    hit = cache.get(task)
    if isinstance(hit, dict) and all(hit.get(k) == v for k, v in key.items()) and "return_mean" in hit:
        return float(hit["return_mean"])
    value = random_return(task, max_episode_steps, episodes)
    cache[task] = {**key, "return_mean": value}
    try:
        path.write_text(json.dumps(cache, indent=2) + "\n")
    except OSError:
        pass  # a read-only results folder still aggregates
    return value


def load_reference_table(path: Path) -> dict:
    """``{"TASK": {"reference": R1, "random": R0 (optional)}}``."""
    try:
        table = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SweepError(f"reference table {path} does not exist") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise SweepError(f"reference table {path} is not readable JSON ({type(exc).__name__})") from None
    if not isinstance(table, dict):
        raise SweepError(f"reference table {path} must map task ids to {{\"reference\": R, \"random\": R}}")
    for task, entry in table.items():
        ok = isinstance(entry, dict) and isinstance(entry.get("reference"), (int, float)) and \
            isinstance(entry.get("random", 0.0), (int, float)) and set(entry) <= {"reference", "random"}
        if not ok:
            raise SweepError(f"reference table {path}: entry {task!r} must be {{\"reference\": NUMBER, "
                             "\"random\": NUMBER (optional)}}")
    return table


def aggregate(root: Path, baseline: str = "sac", reference: Optional[Path] = None, last: int = 3,
              random_episodes: int = 10, reps: int = 50_000, confidence: float = 0.95, seed: int = 0,
              warn=lambda s: None) -> dict:
    """All the numbers of the report, as plain data."""
    if last < 1 or random_episodes < 1 or reps < 1:
        raise SweepError("--last, --random-episodes and --reps must be positive")
    if not 0.0 < confidence < 1.0:
        raise SweepError(f"--confidence must be in (0, 1), got {confidence}")
    runs = load_runs(root, warn)
    table = load_reference_table(reference) if reference is not None else None
    tasks = sorted({r.task for r in runs})
    algos = sorted({r.algo for r in runs}, key=lambda a: (a != baseline, a))
    by = {(t, a): sorted((r for r in runs if r.task == t and r.algo == a), key=lambda r: r.seed)
          for t in tasks for a in algos}

    per_task: dict = {}
    for t in tasks:
        per_task[t] = {}
        for a in algos:
            rs = by[(t, a)]
            if not rs:
                continue
            finals = np.array([r.final_return(last) for r in rs])
            point, lo, hi = bootstrap_ci(finals, mean, reps, confidence, seed)
            per_task[t][a] = {"seeds": [r.seed for r in rs], "final": finals.tolist(), "mean": point,
                              "lo": lo, "hi": hi, "steps": [r.last_step for r in rs],
                              "complete": all(r.complete for r in rs), "eval_mode": rs[0].eval_mode}

    norm: dict = {}
    for t in tasks:
        if table is not None:
            if t not in table:
                raise SweepError(f"task {t} is missing from the reference table {reference}")
            ref, ref_src = float(table[t]["reference"]), f"table {Path(reference).name}"
            rnd = table[t].get("random")
        else:
            if baseline not in per_task[t]:
                raise SweepError(f"no {baseline} runs on {t} to normalise against; pass --reference "
                                 "FILE.json or choose another --baseline")
            ref, ref_src, rnd = per_task[t][baseline]["mean"], f"{baseline} mean", None
        if rnd is None:
            mes = next(r.max_episode_steps for r in runs if r.task == t)
            rnd, rnd_src = _cached_random(root, t, mes, random_episodes), f"uniform random, {random_episodes} episodes"
        else:
            rnd, rnd_src = float(rnd), f"table {Path(reference).name}"
        if abs(ref - rnd) < 1e-12:
            raise SweepError(f"{t}: reference score {ref} equals the random score {rnd}; cannot normalise")
        norm[t] = {"random": float(rnd), "reference": float(ref), "random_source": rnd_src,
                   "reference_source": ref_src}

    overall: dict = {}
    for a in algos:
        groups = {t: normalise(per_task[t][a]["final"], norm[t]["random"], norm[t]["reference"])
                  for t in tasks if a in per_task[t]}
        g = list(groups.values())
        overall[a] = {"tasks": list(groups), "runs": int(sum(len(x) for x in g)),
                      "iqm": stratified_bootstrap_ci(g, iqm, reps, confidence, seed),
                      "mean": stratified_bootstrap_ci(g, mean, reps, confidence, seed),
                      "normalised": {t: x.tolist() for t, x in groups.items()}}
        for t, x in groups.items():
            per_task[t][a]["normalised_mean"] = float(np.mean(x))
    return {"root": str(root), "tasks": tasks, "algos": algos, "baseline": baseline, "per_task": per_task,
            "normalisation": norm, "aggregate": overall,
            "settings": {"last": last, "reps": reps, "confidence": confidence, "seed": seed,
                         "random_episodes": random_episodes, "reference": str(reference) if reference else None}}


def curves(runs: list[Run], reps: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """``{(task, algo): (steps, mean, lo, hi)}``: eval return over seeds at every eval step."""
    out = {}
    for key in sorted({(r.task, r.algo) for r in runs}):
        rs = [r for r in runs if (r.task, r.algo) == key]
        steps = np.unique(np.concatenate([r.eval_steps for r in rs]))
        m, lo, hi = [], [], []
        for s in steps:
            vals = [float(r.eval_returns[r.eval_steps == s][-1]) for r in rs if np.any(r.eval_steps == s)]
            p, a, b = bootstrap_ci(vals, mean, reps, confidence, seed)
            m.append(p), lo.append(a), hi.append(b)
        out[key] = (steps, np.array(m), np.array(lo), np.array(hi))
    return out


def plot_curves(runs: list[Run], tasks: list[str], algos: list[str], path: Path, confidence: float = 0.95) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = curves(runs, confidence=confidence)
    cols = min(4, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.0 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for i, algo in enumerate(algos):
            if (task, algo) not in data:
                continue
            s, m, lo, hi = data[(task, algo)]
            n = len({r.seed for r in runs if (r.task, r.algo) == (task, algo)})
            ax.plot(s, m, color=f"C{i}", lw=1.4, label=f"{algo} (n={n})")
            ax.fill_between(s, lo, hi, color=f"C{i}", alpha=0.2, lw=0)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("environment steps", fontsize=8)
        ax.set_ylabel("eval return", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    fig.suptitle(f"mean over seeds, shaded: {confidence:.0%} bootstrap CI", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _g(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    return f"{v:.1f}" if abs(v) >= 100 else f"{v:.3g}"


def _steps(steps: list[int]) -> str:
    k = lambda s: f"{s / 1000:g}k" if s >= 1000 else str(s)  # noqa: E731
    lo, hi = min(steps), max(steps)
    return k(lo) if lo == hi else f"{k(lo)}-{k(hi)}"


def to_markdown(res: dict, curves_png: Optional[str]) -> str:
    st, c = res["settings"], f"{res['settings']['confidence']:.0%}"
    algos, tasks = res["algos"], res["tasks"]
    lines = [f"# Sweep results: `{res['root']}`", "",
             f"Final return of a run: mean of its last {st['last']} evaluations. Per task: mean over seeds "
             f"with a {c} percentile-bootstrap CI ({st['reps']} resamples, seed {st['seed']}); "
             "`n` seeds, steps reached.", "",
             "| task | " + " | ".join(algos) + " |", "|---|" + "---|" * len(algos)]
    incomplete = []
    for t in tasks:
        cells = []
        for a in algos:
            e = res["per_task"][t].get(a)
            if e is None:
                cells.append("-")
                continue
            cells.append(f"{_g(e['mean'])} [{_g(e['lo'])}, {_g(e['hi'])}] (n={len(e['final'])}, "
                         f"{_steps(e['steps'])})")
            if not e["complete"]:
                incomplete.append(f"{a} on {t}")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    modes = sorted({f"{a}: {res['per_task'][t][a]['eval_mode']}" for t in tasks for a in algos
                    if a in res["per_task"][t]})
    lines += ["", f"Evaluation modes: {', '.join(modes)}."]
    if incomplete:
        lines += ["", f"**Incomplete** (some seeds short of their total steps): {', '.join(incomplete)}."]
    lines += ["", "## Across tasks: normalised score", "",
              "Normalised score = (R - random) / (reference - random), so the random policy scores 0 and "
              "the reference scores 1. Interquartile mean (IQM) over all runs of all tasks, and the plain "
              f"mean, with {c} stratified-bootstrap CIs (runs resampled within each task), following "
              "Agarwal et al. (2021), \"Deep RL at the edge of the statistical precipice\" (rliable).", "",
              "| algo | IQM [" + c + " CI] | mean [" + c + " CI] | tasks | runs |", "|---|---|---|---|---|"]
    for a in algos:
        o = res["aggregate"][a]
        p, lo, hi = o["iqm"]
        mp, mlo, mhi = o["mean"]
        lines.append(f"| {a} | {p:.3f} [{lo:.3f}, {hi:.3f}] | {mp:.3f} [{mlo:.3f}, {mhi:.3f}] | "
                     f"{len(o['tasks'])}/{len(tasks)} | {o['runs']} |")
    partial = [a for a in algos if len(res["aggregate"][a]["tasks"]) < len(tasks)]
    if partial:
        lines += ["", f"Not comparable row by row: {', '.join(partial)} ran on fewer tasks than the others."]
    lines += ["", "| task | random (0) | reference (1) |", "|---|---|---|"]
    for t in tasks:
        n = res["normalisation"][t]
        lines.append(f"| {t} | {_g(n['random'])} ({n['random_source']}) | {_g(n['reference'])} "
                     f"({n['reference_source']}) |")
    few = min(len(e["final"]) for t in tasks for e in res["per_task"][t].values())
    if few < 5:
        lines += ["", f"With {few} seed(s) per cell the bootstrap CIs are coarse: with n seeds they can only "
                      "span values a resample of n runs can take (for n = 2: between the two runs)."]
    if curves_png:
        lines += ["", "## Learning curves", "", f"![learning curves]({curves_png})"]
    return "\n".join(lines) + "\n"


def write_aggregate(root: Path, out: Optional[Path] = None, warn=lambda s: None, **kw) -> tuple[Path, dict]:
    """Compute, then write ``out`` (Markdown), ``<out stem>_curves.png`` and ``<out stem>.json``."""
    root = Path(root)
    res = aggregate(root, warn=warn, **kw)
    out = Path(out) if out is not None else root / "aggregate.md"
    if out.suffix.lower() != ".md":
        raise SweepError(f"--out {out} should be a .md file")
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_name(out.stem + "_curves.png")
    plot_curves(load_runs(root), res["tasks"], res["algos"], png, res["settings"]["confidence"])
    out.write_text(to_markdown(res, png.name))
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    return out, res


__all__ = ["Run", "load_runs", "aggregate", "curves", "plot_curves", "to_markdown", "write_aggregate",
           "random_return", "load_reference_table"]
