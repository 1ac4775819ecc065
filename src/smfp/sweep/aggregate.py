"""``smfp aggregate DIR``: per-task returns with bootstrap CIs; across tasks, with ``rliable``: the
IQM and mean of normalised scores with stratified-bootstrap CIs, each algorithm's probability of
improvement over the baseline, and performance profiles; learning curves; a Markdown table.

A run is any sub-folder of DIR holding ``config.json`` and ``metrics.jsonl`` (what ``smfp sweep``
and ``smfp train`` write). Its *final return* is the mean of its last ``last`` evaluations
(``eval/return_mean`` rows). Normalised score: ``(R - random) / (reference - random)``, where
``random`` is the mean return of a uniform random policy (measured here, cached in
``DIR/random_scores.json``) and ``reference`` is, by default, the mean final return of the
baseline algorithm's runs (``sac``) on that task; or both come from a JSON reference table.

``write_csv`` keeps a results table with one row per finished run and evaluation mode
(``algo,commit,env,seed,steps,final_return,eval_mode``), merged into an existing file, so that
every table can be recomputed from it. A run's commit is the smfp commit its last
``sweep_attempts.jsonl`` line names (``smfp sweep``), else its ``provenance.json``'s (``smfp bench
sb3-sac``), else ``unknown``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from smfp.config import eval_mode_of
from smfp.monitor.logger import read_metrics
from smfp.storage.rundir import RunDir
from smfp.storage.userfiles import numeric_rows, read_json_object
from smfp.sweep.grid import SweepError, read_attempts
from smfp.sweep.stats import (RliableMissing, bootstrap_ci, iqm_and_mean, normalise, performance_profile,
                              probability_of_improvement)

RANDOM_FILE = "random_scores.json"
RANDOM_SEED = 10_000  # episodes start like the training loop's evaluations: reset(seed + i)
CSV_COLUMNS = ("algo", "commit", "env", "seed", "steps", "final_return", "eval_mode")
CSV_KEY = ("algo", "env", "seed", "eval_mode")
# A run's learning curve: every evaluation step, in the run's own mode and (empty when not logged) in
# `sample` mode. ``steps`` is the step the run reached; ``max_episode_steps`` empty for the env's default.
CURVE_COLUMNS = ("algo", "commit", "env", "seed", "steps", "max_episode_steps", "eval_mode", "eval_step", "return",
                 "return_sample")
CURVE_KEY = ("algo", "env", "seed")
PROVENANCE_FILE = RunDir.PROVENANCE
# Resamples of the probability of improvement and the performance profiles: at most this many
# (rliable's own examples use 2000): its probability of improvement runs a Mann-Whitney U test per
# task and resample, about 1 ms each, so --reps 50000 would take minutes per algorithm.
SLOW_REPS = 2000
TAU_POINTS = 101  # thresholds of the performance profiles


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
    commit: str = "unknown"
    sample_returns: Optional[np.ndarray] = None  # eval/return_mean_sample, when the run logged it

    def final_return(self, last: int = 3) -> float:
        return float(np.mean(self.eval_returns[-last:]))

    def final_return_sample(self, last: int = 3) -> Optional[float]:
        if self.sample_returns is None or not len(self.sample_returns):
            return None
        return float(np.mean(self.sample_returns[-last:]))

    @property
    def complete(self) -> bool:
        return self.last_step >= self.total_steps


def load_runs(root: Path, warn=lambda s: None) -> list[Run]:
    """The evaluated runs under the folder ``root`` (``root`` itself when it is a run dir), or those of a curves CSV
    (``write_curves_csv``) or of a results CSV (``write_csv``: finals only, each run one point)."""
    root = Path(root)
    if root.is_file() and root.suffix.lower() == ".csv":
        try:
            header = root.read_text().splitlines()[:1]
        except (OSError, UnicodeDecodeError) as exc:
            raise SweepError(f"cannot read {root} ({type(exc).__name__})") from None
        if header == [",".join(CSV_COLUMNS)]:
            return runs_from_finals(root)
        return runs_from_curves(root)
    if not root.is_dir():
        raise SweepError(f"{root} is not a folder (nor a curves or results .csv file)")
    runs = []
    folders = [root] if RunDir(root).holds_run() else sorted(p for p in root.iterdir() if p.is_dir())
    for d in folders:
        run_dir = RunDir(d)
        if not run_dir.holds_run():
            continue
        try:
            cfg = run_dir.read_config("skipped")
            algo, task, seed = cfg.get("label") or cfg["algo"], cfg["env"]["env"], int(cfg["seed"])
            total, mode = int(cfg.get("total_steps", 0)), eval_mode_of(cfg)
            max_steps = cfg["env"].get("max_episode_steps")
            if not (isinstance(algo, str) and isinstance(task, str)):
                raise TypeError("algo and env must be strings")
        except (KeyError, TypeError, ValueError, AttributeError):  # UserFileError too (a ValueError)
            warn(f"smfp aggregate: skipping {d.name}: unreadable {RunDir.CONFIG}")
            continue
        rows = numeric_rows(read_metrics(run_dir.metrics))
        evals = [(r["step"], r["eval/return_mean"]) for r in rows
                 if isinstance(r.get("eval/return_mean"), (int, float))]
        if not evals:
            warn(f"smfp aggregate: skipping {d.name}: no evaluation yet")
            continue
        steps, returns = (np.asarray(v, dtype=float) for v in zip(*evals))
        sampled = [r["eval/return_mean_sample"] for r in rows
                   if isinstance(r.get("eval/return_mean_sample"), (int, float))]
        runs.append(Run(d.name, algo, task, seed, steps, returns, int(max(r["step"] for r in rows)), total, max_steps,
                        mode, run_commit(d), np.asarray(sampled, dtype=float) if sampled else None))
    if not runs:
        raise SweepError(f"no evaluated runs in {root} (a run is a folder with config.json and metrics.jsonl)")
    return runs


def run_commit(run_dir: Path) -> str:
    """The smfp commit a run was made with: its last attempt line's, else provenance.json's, else unknown."""
    try:
        attempts = read_attempts(run_dir)
        commit = attempts[-1].get("commit") if attempts and isinstance(attempts[-1], dict) else None
        if not (isinstance(commit, str) and commit):
            path = RunDir(run_dir).provenance
            prov = read_json_object(path, "the provenance record", "") if path.exists() else None
            commit = prov.get("commit") if isinstance(prov, dict) else None
    except (OSError, ValueError, RecursionError):
        commit = None
    return commit.strip() if isinstance(commit, str) and commit.strip() else "unknown"


def csv_rows(runs: list[Run], last: int = 3) -> list[dict]:
    """One row per complete run in its evaluation mode, and one in ``sample`` mode where it logged one."""
    rows = []
    for r in runs:
        if not r.complete:
            continue
        base = {"algo": r.algo, "commit": r.commit, "env": r.task, "seed": str(r.seed), "steps": str(r.last_step)}
        rows.append({**base, "final_return": f"{r.final_return(last):.3f}", "eval_mode": r.eval_mode})
        sample = r.final_return_sample(last)
        if sample is not None and r.eval_mode != "sample":
            rows.append({**base, "final_return": f"{sample:.3f}", "eval_mode": "sample"})
    return rows


def _read_table(path: Path, columns: tuple, label: str, kind: str) -> list[dict]:
    """Rows of an existing CSV with header ``columns`` (none if it does not exist); SweepError if it is another
    file. ``label`` names the file in messages, ``kind`` what it should be."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SweepError(f"cannot read {label} ({type(exc).__name__})") from None
    if not text.strip():
        return []
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != columns:
        raise SweepError(f"{label} is not {kind} (its header is not {','.join(columns)}); choose another file")
    rows = []
    for i, row in enumerate(reader, start=2):
        if None in row or any(row.get(c) is None for c in columns):
            raise SweepError(f"{label}: line {i} does not have {len(columns)} fields")
        rows.append({c: row[c] for c in columns})
    return rows


def _write_table(path: Path, columns: tuple, rows: list[dict], flag: str) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    from smfp.storage.atomic import atomic_write_text

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, buf.getvalue())
    except OSError as exc:
        raise SweepError(f"cannot write {flag} {path}: {exc.strerror or exc}") from None


def read_csv(path: Path) -> list[dict]:
    """Rows of an existing results CSV (none if it does not exist); SweepError if it is another file."""
    return _read_table(path, CSV_COLUMNS, f"--csv {path}", "a results table")


def write_csv(root: Path, path: Path, last: int = 3, warn=lambda s: None) -> tuple[int, int]:
    """Merge the rows of the complete runs under ``root`` into the CSV ``path`` (created if absent):
    a row of the same (algo, env, seed, eval_mode) is replaced, every other row is kept. Returns
    (rows from ``root``, rows in the file)."""
    if last < 1:
        raise SweepError("--last must be positive")
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise SweepError(f"--csv {path} should be a .csv file")
    old = read_csv(path)  # checked before anything is said about the runs
    runs = load_runs(root)  # its warnings come from the report, which loads the runs too
    for r in runs:
        if not r.complete:
            warn(f"smfp aggregate: {r.name} is not in the CSV: step {r.last_step} of {r.total_steps}")
    new = csv_rows(runs, last)
    key = lambda row: tuple(row[k] for k in CSV_KEY)  # noqa: E731
    merged = {key(row): row for row in old}
    merged.update({key(row): row for row in new})
    rows = sorted(merged.values(), key=lambda row: (row["algo"], row["env"], _seed_order(row["seed"]),
                                                    row["eval_mode"]))
    _write_table(path, CSV_COLUMNS, rows, "--csv")
    return len(new), len(rows)


def read_curves_csv(path: Path) -> list[dict]:
    """Rows of an existing curves CSV (none if it does not exist); SweepError if it is another file."""
    return _read_table(path, CURVE_COLUMNS, str(path), "a curves table")


def curve_rows(runs: list[Run]) -> list[dict]:
    """One row per evaluation of every complete run."""
    rows = []
    for r in runs:
        if not r.complete:
            continue
        base = {"algo": r.algo, "commit": r.commit, "env": r.task, "seed": str(r.seed), "steps": str(r.last_step),
                "max_episode_steps": "" if r.max_episode_steps is None else str(int(r.max_episode_steps)),
                "eval_mode": r.eval_mode}
        # the sample-mode evaluations run at the same steps as the run's own (one eval, both modes)
        sample = r.sample_returns if r.sample_returns is not None and \
            len(r.sample_returns) == len(r.eval_returns) else None
        for i, (step, ret) in enumerate(zip(r.eval_steps, r.eval_returns)):
            rows.append({**base, "eval_step": str(int(step)), "return": f"{float(ret):.3f}",
                         "return_sample": "" if sample is None else f"{float(sample[i]):.3f}"})
    return rows


def write_curves_csv(root: Path, path: Path) -> tuple[int, int]:
    """Merge the curves of the complete runs under ``root`` into the CSV ``path``: every row of a run
    (algo, env, seed) found under ``root`` is replaced, rows of other runs are kept. Returns (runs from
    ``root``, runs in the file)."""
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise SweepError(f"--curves-csv {path} should be a .csv file")
    old = read_curves_csv(path)
    new = curve_rows(load_runs(root))
    key = lambda row: tuple(row[k] for k in CURVE_KEY)  # noqa: E731
    mine = {key(row) for row in new}
    rows = [row for row in old if key(row) not in mine] + new
    rows.sort(key=lambda row: (row["algo"], row["env"], _seed_order(row["seed"]), int(row["eval_step"])))
    _write_table(path, CURVE_COLUMNS, rows, "--curves-csv")
    return len(mine), len({key(row) for row in rows})


def runs_from_curves(path: Path) -> list[Run]:
    """The runs of a curves CSV, as ``load_runs`` reads them from run dirs (complete runs only)."""
    rows = read_curves_csv(path)
    groups: dict = {}
    try:
        for row in rows:
            groups.setdefault(tuple(row[k] for k in CURVE_KEY), []).append(row)
        runs = []
        for (algo, env, seed), rs in groups.items():
            rs.sort(key=lambda row: int(row["eval_step"]))
            first = rs[0]
            steps = np.array([int(row["eval_step"]) for row in rs], dtype=float)
            returns = np.array([float(row["return"]) for row in rs])
            sampled = [row["return_sample"] for row in rs]
            sample = np.array([float(v) for v in sampled]) if all(sampled) else None
            last = int(first["steps"])
            mes = int(first["max_episode_steps"]) if first["max_episode_steps"] else None
            runs.append(Run(f"{algo}-{env}-s{seed}", algo, env, int(seed), steps, returns, last, last, mes,
                            first["eval_mode"], first["commit"] or "unknown", sample))
    except ValueError:
        raise SweepError(f"{path}: a row holds a value that is not a number where one is expected") from None
    if not runs:
        raise SweepError(f"no runs in the curves table {path}")
    return sorted(runs, key=lambda r: (r.algo, r.task, r.seed))


def runs_from_finals(path: Path) -> list[Run]:
    """The runs of a results CSV: one point each (its final return at its last step), in the run's own
    evaluation mode (the row that is not ``sample``, else ``sample``), its ``sample`` row beside it. The
    finals are used as they were computed (mean of the last 3 evaluations): ``--last`` does not change them."""
    groups: dict = {}
    for row in read_csv(path):
        groups.setdefault((row["algo"], row["env"], row["seed"]), {})[row["eval_mode"]] = row
    runs = []
    try:
        for (algo, env, seed), modes in groups.items():
            own = next((m for m in modes if m != "sample"), "sample")
            row = modes[own]
            step = int(row["steps"])
            sample = np.array([float(modes["sample"]["final_return"])]) if "sample" in modes else None
            runs.append(Run(f"{algo}-{env}-s{seed}", algo, env, int(seed), np.array([float(step)]),
                            np.array([float(row["final_return"])]), step, step, None, own, row["commit"] or "unknown",
                            sample))
    except ValueError:
        raise SweepError(f"{path}: a row holds a value that is not a number where one is expected") from None
    if not runs:
        raise SweepError(f"no runs in the results table {path}")
    return sorted(runs, key=lambda r: (r.algo, r.task, r.seed))


def _seed_order(seed: str) -> tuple:
    return (0, int(seed), "") if seed.lstrip("-").isdigit() else (1, 0, seed)


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
    root = Path(root)
    path = (root.parent if root.is_file() else root) / RANDOM_FILE
    try:  # a cache smfp wrote; a damaged one is measured again
        cache = read_json_object(path, "the random-score cache", "") if path.exists() else {}
    except ValueError:
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
    if not Path(path).exists():
        raise SweepError(f"reference table {path} does not exist")
    table = read_json_object(path, "the reference table", 'it must map task ids to {"reference": R, "random": R}')
    for task, entry in table.items():
        ok = isinstance(entry, dict) and isinstance(entry.get("reference"), (int, float)) and \
            isinstance(entry.get("random", 0.0), (int, float)) and set(entry) <= {"reference", "random"}
        if not ok:
            raise SweepError(f"reference table {path}: entry {task!r} must be {{\"reference\": NUMBER, "
                             "\"random\": NUMBER (optional)}}")
    return table


def select_algos(runs: list[Run], algos: Optional[list[str]], root: Path) -> list[Run]:
    """The runs of the named algorithms (run labels); all runs when ``algos`` is empty or None."""
    if not algos:
        return runs
    present = sorted({r.algo for r in runs})
    missing = [a for a in algos if a not in present]
    if missing:
        raise SweepError(f"--algos: no runs of {', '.join(missing)} in {root} (it has: {', '.join(present)}); "
                         "choose among those")
    return [r for r in runs if r.algo in algos]


def aggregate(root: Path, baseline: str = "sac", reference: Optional[Path] = None, last: int = 3,
              random_episodes: int = 10, reps: int = 50_000, confidence: float = 0.95, seed: int = 0,
              warn=lambda s: None, algos: Optional[list[str]] = None) -> dict:
    """All the numbers of the report, as plain data; ``algos``: only the runs of these algorithms (labels)."""
    if last < 1 or random_episodes < 1 or reps < 1:
        raise SweepError("--last, --random-episodes and --reps must be positive")
    if not 0.0 < confidence < 1.0:
        raise SweepError(f"--confidence must be in (0, 1), got {confidence}")
    runs = select_algos(load_runs(root, warn), algos, root)
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
            point, lo, hi = bootstrap_ci(finals, reps, confidence, seed)
            per_task[t][a] = {"seeds": [r.seed for r in rs], "final": finals.tolist(), "mean": point,
                              "lo": lo, "hi": hi, "steps": [r.last_step for r in rs],
                              "complete": all(r.complete for r in rs), "eval_mode": rs[0].eval_mode,
                              "final_sample": [r.final_return_sample(last) for r in rs],
                              "commits": [r.commit for r in rs]}

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

    groups = {a: {t: normalise(per_task[t][a]["final"], norm[t]["random"], norm[t]["reference"])
                  for t in tasks if a in per_task[t]} for a in algos}
    slow_reps = min(reps, SLOW_REPS)
    overall: dict = {}
    improvement: dict = {}
    try:
        for a in algos:  # every estimate starts from --seed: an algorithm's numbers do not depend on the others
            g = groups[a]
            overall[a] = {"tasks": list(g), "runs": int(sum(len(x) for x in g.values())),
                          **iqm_and_mean(g, reps, confidence, seed),
                          "normalised": {t: x.tolist() for t, x in g.items()}}
            for t, x in g.items():
                per_task[t][a]["normalised_mean"] = float(np.mean(x))
        for a in algos:
            common = [t for t in groups[a] if t in groups.get(baseline, {})]
            if a == baseline or not common:
                continue
            improvement[a] = {"baseline": baseline, "tasks": common,
                              "p": probability_of_improvement({t: groups[a][t] for t in common}, groups[baseline],
                                                              slow_reps, confidence, seed)}
        profiles = _profiles(groups, slow_reps, confidence, seed)
    except RliableMissing as exc:
        raise SweepError(str(exc)) from None
    return {"root": str(root), "tasks": tasks, "algos": algos, "baseline": baseline, "per_task": per_task,
            "normalisation": norm, "aggregate": overall, "improvement": improvement, "profiles": profiles,
            "settings": {"last": last, "reps": reps, "reps_improvement_profiles": slow_reps,
                         "confidence": confidence, "seed": seed, "random_episodes": random_episodes,
                         "reference": str(reference) if reference else None,
                         "rliable": _version("rliable"), "arch": _version("arch")}}


def _version(package: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _profiles(groups: dict, reps: int, confidence: float, seed: int) -> dict:
    """Score distributions of every algorithm at ``TAU_POINTS`` thresholds spanning all normalised
    scores (and at least [0, 1]), with their CI bands."""
    scores = np.concatenate([x for g in groups.values() for x in g.values()])
    lo, hi = min(0.0, float(scores.min())), max(1.0, float(scores.max()))
    tau = np.linspace(lo, hi, TAU_POINTS)
    out: dict = {"tau": tau.tolist(), "algos": {}}
    for a, g in groups.items():
        frac, flo, fhi = performance_profile(g, tau, reps, confidence, seed)
        out["algos"][a] = {"fraction": frac.tolist(), "lo": flo.tolist(), "hi": fhi.tolist()}
    return out


def curves(runs: list[Run], reps: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """``{(task, algo): (steps, mean, lo, hi)}``: eval return over seeds at every eval step."""
    out = {}
    for key in sorted({(r.task, r.algo) for r in runs}):
        rs = [r for r in runs if (r.task, r.algo) == key]
        steps = np.unique(np.concatenate([r.eval_steps for r in rs]))
        m, lo, hi = [], [], []
        for s in steps:
            vals = [float(r.eval_returns[r.eval_steps == s][-1]) for r in rs if np.any(r.eval_steps == s)]
            p, a, b = bootstrap_ci(vals, reps, confidence, seed)
            m.append(p), lo.append(a), hi.append(b)
        out[key] = (steps, np.array(m), np.array(lo), np.array(hi))
    return out


def curve_modes(runs: list[Run], algos: list[str]) -> str:
    """Which evaluation mode each algorithm's curves show, e.g. ``mean mode: sac, sb3-sac; sample mode: smfp``."""
    by_mode: dict[str, list[str]] = {}
    for algo in algos:
        for mode in sorted({r.eval_mode for r in runs if r.algo == algo}):
            by_mode.setdefault(mode, []).append(algo)
    return "; ".join(f"{mode} mode: {', '.join(names)}" for mode, names in sorted(by_mode.items()))


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
    fig.suptitle(f"evaluation return ({curve_modes(runs, algos)}): mean over the n seeds at each evaluation, shaded: "
                 f"{confidence:.0%} bootstrap CI", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_profiles(res: dict, path: Path) -> Path:
    """Performance profiles (``rliable.plot_utils.plot_performance_profiles``): per algorithm, the
    fraction of runs whose normalised score exceeds tau, with its CI band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        from rliable import plot_utils
    except (ImportError, TypeError) as exc:
        raise SweepError(f"rliable.plot_utils cannot be imported ({type(exc).__name__}: {exc}); "
                         "install the sweep extra: pip install -e \".[sweep]\"") from None
    prof, algos = res["profiles"], res["algos"]
    tau = np.asarray(prof["tau"])
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    plot_utils.plot_performance_profiles(
        {a: np.asarray(prof["algos"][a]["fraction"]) for a in algos}, tau,
        performance_profile_cis={a: (np.asarray(prof["algos"][a]["lo"]), np.asarray(prof["algos"][a]["hi"]))
                                 for a in algos},
        ax=ax, colors={a: f"C{i}" for i, a in enumerate(algos)},  # the learning curves' colours
        xlabel=r"normalised score $\tau$", ylabel=r"fraction of runs with score $> \tau$",
        labelsize="medium", ticklabelsize="small", linewidth=1.6)
    for i in (0.0, 1.0):
        ax.axvline(i, color="0.6", lw=0.8, ls=":")
    ax.legend(fontsize=8, loc="upper right")
    c = res["settings"]["confidence"]
    ax.set_title(f"performance profiles (rliable), shaded: {c:.0%} stratified-bootstrap CI", fontsize=9)
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


def to_markdown(res: dict, curves_png: Optional[str], profiles_png: Optional[str] = None) -> str:
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
    lines += _per_run_lines(res)
    lines += ["", "## Across tasks: normalised score", "",
              "Normalised score = (R - random) / (reference - random), so the random policy scores 0 and "
              "the reference scores 1. Interquartile mean (IQM) over all runs of all tasks, and the mean "
              f"of the per-task means, with {c} stratified-bootstrap CIs (runs resampled within each task; "
              f"{st['reps']} resamples, seed {st['seed']}), computed by rliable "
              f"{st.get('rliable') or ''} (Agarwal et al. 2021, \"Deep RL at the edge of the statistical "
              "precipice\").", "",
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
    ragged = [a for a in algos if len({len(x) for x in res["aggregate"][a]["normalised"].values()}) > 1]
    if ragged:
        lines += ["", f"Different numbers of runs per task ({', '.join(ragged)}): rliable's list form is used "
                      "(each task resampled on its own; mean = mean of the task means)."]
    lines += _improvement_lines(res)
    lines += ["", "| task | random (0) | reference (1) |", "|---|---|---|"]
    for t in tasks:
        n = res["normalisation"][t]
        lines.append(f"| {t} | {_g(n['random'])} ({n['random_source']}) | {_g(n['reference'])} "
                     f"({n['reference_source']}) |")
    few = min(len(e["final"]) for t in tasks for e in res["per_task"][t].values())
    if few < 5:
        lines += ["", f"With {few} seed(s) per cell the bootstrap CIs are coarse: with n seeds they can only "
                      "span values a resample of n runs can take (for n = 2: between the two runs)."]
    if profiles_png:
        lines += ["", "## Performance profiles", "",
                  "Fraction of runs (all tasks) whose normalised score exceeds tau, per algorithm, with "
                  f"{c} stratified-bootstrap CI bands ({st['reps_improvement_profiles']} resamples; rliable's "
                  "score distributions). A curve above another for every tau dominates it.", "",
                  f"![performance profiles]({profiles_png})"]
    if curves_png:
        lines += ["", "## Learning curves", "",
                  f"A panel per task: each algorithm's evaluation return at every evaluation step, averaged over its "
                  f"seeds (n in the legend; a run contributes where it was evaluated), with a {c} percentile-bootstrap "
                  f"band ({st['reps']} resamples); the evaluation modes are those listed above"
                  + (f"; curves from `{res['curves_from']}`" if res.get("curves_from") else "") + ".", "",
                  f"![learning curves]({curves_png})"]
    return "\n".join(lines) + "\n"


def _per_run_lines(res: dict) -> list[str]:
    """Every run's final, in its algorithm's evaluation mode and in ``sample`` mode (the stochastic policy, one pass:
    the mode every algorithm shares), with each task's means over seeds in both."""
    algos, tasks = res["algos"], res["tasks"]
    lines = ["", "## Per run", "",
             "Final return of each run: in its algorithm's evaluation mode / in `sample` mode (stochastic actions, "
             "the mode every algorithm shares; `-` where a run did not evaluate it); the task's `mean` row averages "
             "each over the seeds. The commit of every run is in the JSON beside this report.", "",
             "| task | seed | " + " | ".join(algos) + " |", "|---|---|" + "---|" * len(algos)]

    def pair(own: float, sample) -> str:
        return f"{_g(own)} / {'-' if sample is None else _g(sample)}"

    for t in tasks:
        entries = res["per_task"][t]
        seeds = sorted({s for e in entries.values() for s in e["seeds"]})
        for seed in seeds:
            cells = []
            for a in algos:
                e = entries.get(a)
                if e is None or seed not in e["seeds"]:
                    cells.append("")
                    continue
                i = e["seeds"].index(seed)
                cells.append(pair(e["final"][i], e["final_sample"][i]))
            lines.append(f"| {t} | {seed} | " + " | ".join(cells) + " |")
        cells = []
        for a in algos:
            e = entries.get(a)
            if e is None:
                cells.append("")
                continue
            samples = e["final_sample"]
            mean_sample = None if any(v is None for v in samples) else float(np.mean(samples))
            cells.append(pair(e["mean"], mean_sample))
        lines.append(f"| {t} | mean | " + " | ".join(cells) + " |")
    return lines


def _improvement_lines(res: dict) -> list[str]:
    st, c, base = res["settings"], f"{res['settings']['confidence']:.0%}", res["baseline"]
    imp = res.get("improvement") or {}
    lines = ["", "### Probability of improvement over " + base, ""]
    if base not in res["algos"]:
        return lines + [f"None: there are no {base} runs (see --baseline)."]
    if not imp:
        return lines + [f"None: no other algorithm ran a task that {base} ran."]
    lines += [f"P(X > {base}): the probability that a run of X on a task scores higher than a run of {base} "
              "on the same task, averaged over the tasks both ran (rliable's probability of improvement: "
              f"Mann-Whitney U / (n_X n_Y)), with a {c} stratified-bootstrap CI "
              f"({st['reps_improvement_profiles']} resamples). 0.5: no difference.", "",
              f"| algo X | P(X > {base}) [{c} CI] | tasks |", "|---|---|---|"]
    for a in res["algos"]:
        if a in imp:
            p, lo, hi = imp[a]["p"]
            lines.append(f"| {a} | {p:.3f} [{lo:.3f}, {hi:.3f}] | {len(imp[a]['tasks'])}/{len(res['tasks'])} |")
    return lines


def curve_runs_from(path: Path, algos: list[str], tasks: list[str]) -> list[Run]:
    """The runs of the curves table ``path`` (``--curves-from``) of the report's algorithms and tasks."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"--curves-from {path}: no such file; give the curves table `--curves-csv` wrote")
    runs = [r for r in runs_from_curves(path) if r.algo in algos and r.task in tasks]
    if not runs:
        raise SweepError(f"--curves-from {path} holds no curves of {', '.join(algos)} on the report's tasks")
    return runs


def write_aggregate(root: Path, out: Optional[Path] = None, warn=lambda s: None, curves_from: Optional[Path] = None,
                    **kw) -> tuple[Path, dict]:
    """Compute, then write ``out`` (Markdown), ``<out stem>_curves.png``, ``<out stem>_profiles.png`` and
    ``<out stem>.json``. ``curves_from``: a curves table to draw the learning curves from (e.g. when ``root`` is a
    finals table, which has none), for the report's algorithms and tasks."""
    root = Path(root)
    res = aggregate(root, warn=warn, **kw)
    out = Path(out) if out is not None else (root.parent if root.is_file() else root) / "aggregate.md"
    if out.suffix.lower() != ".md":
        raise SweepError(f"--out {out} should be a .md file")
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = (curve_runs_from(curves_from, res["algos"], res["tasks"]) if curves_from is not None
            else select_algos(load_runs(root), kw.get("algos"), root))
    png = None
    if any(len(r.eval_steps) > 1 for r in runs):  # a results table (finals only) has no curves to draw
        png = out.with_name(out.stem + "_curves.png")
        plot_curves(runs, res["tasks"], res["algos"], png, res["settings"]["confidence"])
    profiles = plot_profiles(res, out.with_name(out.stem + "_profiles.png"))
    res["curves_from"] = str(curves_from) if curves_from is not None else None
    out.write_text(to_markdown(res, png.name if png else None, profiles.name))
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    res["files"] = [str(f) for f in (out, png, profiles, out.with_suffix(".json")) if f is not None]
    return out, res


__all__ = ["Run", "load_runs", "aggregate", "curves", "curve_runs_from", "plot_curves", "plot_profiles", "to_markdown", "write_aggregate",
           "random_return", "load_reference_table", "select_algos", "run_commit", "csv_rows", "read_csv", "write_csv",
           "CSV_COLUMNS", "CURVE_COLUMNS", "curve_rows", "read_curves_csv", "write_curves_csv", "runs_from_curves",
           "runs_from_finals"]
