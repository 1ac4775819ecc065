"""The grid of a sweep: one training run per (algo, env, seed), each in ``OUT/ALGO-ENV-sSEED``.

Everything here is plain Python (no Ray): parsing the lists, building and checking every run's
``TrainConfig`` before anything starts, reading a run dir's state without touching it, and the
``sweep.json`` record.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from smfp.config import ALGOS, ConfigError, TrainConfig, changed_fields
from smfp.storage.atomic import atomic_write_text
from smfp.storage.checkpoint import list_checkpoints
from smfp.storage.rundir import RunDir, resolve_for_run_dir
from smfp.storage.userfiles import read_json_object, reading

SWEEP_FILE = "sweep.json"
ATTEMPTS_FILE = RunDir.SWEEP_ATTEMPTS  # one line per task start: host, pid, start step, commit
PROGRESS_FILE = RunDir.SWEEP_PROGRESS  # heartbeat: latest logged step of the running attempt
LOG_FILE = RunDir.SWEEP_LOG  # stdout/stderr of the run's training


class SweepError(ValueError):
    """A user-facing sweep mistake (reported as one line)."""


def parse_list(text: str, what: str) -> list[str]:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise SweepError(f"--{what} is empty; give a comma-separated list")
    if len(set(items)) != len(items):
        raise SweepError(f"--{what} lists an item twice: {text}")
    return items


def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` or ranges ``0-4`` (inclusive), mixed freely."""
    seeds: list[int] = []
    for tok in parse_list(text, "seeds"):
        m = re.fullmatch(r"(\d+)-(\d+)", tok)
        try:
            part = list(range(int(m.group(1)), int(m.group(2)) + 1)) if m else [int(tok)]
        except ValueError:
            raise SweepError(f"--seeds expects integers such as 0,1,2 or 0-4, got {tok!r}") from None
        if not part:
            raise SweepError(f"--seeds range {tok!r} is empty")
        seeds += part
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"--seeds lists a seed twice: {text}")
    return seeds


def run_name(algo: str, env: str, seed: int) -> str:
    return f"{algo}-{env.replace('/', '_').replace(':', '_')}-s{seed}"


@dataclass
class RunSpec:
    algo: str
    env: str
    seed: int
    config: TrainConfig  # resolved, resume=True, run_dir absolute

    @property
    def name(self) -> str:
        return run_name(self.algo, self.env, self.seed)

    @property
    def run_dir(self) -> Path:
        return Path(self.config.run_dir)

    @property
    def total_steps(self) -> int:
        return self.config.total_steps


def build_grid(algos: list[str], envs: list[str], seeds: list[int], out: Path, base: TrainConfig,
               cpus_per_run: int) -> list[RunSpec]:
    """One resolved, validated config per run (a mistake surfaces here, before Ray starts)."""
    for a in algos:
        if a not in ALGOS:
            raise SweepError(f"unknown algo {a!r} in --algos; choose from {', '.join(ALGOS)}")
    if cpus_per_run < 1:
        raise SweepError(f"--cpus-per-run must be a positive integer, got {cpus_per_run}")
    out = Path(out).resolve()
    names: dict[str, tuple] = {}
    specs = []
    for env in envs:
        for algo in algos:
            for seed in seeds:
                cfg = TrainConfig.from_dict(base.to_dict())  # a deep copy
                cfg.algo, cfg.seed, cfg.env.env = algo, seed, env
                cfg.resume, cfg.threads, cfg.log.progress = True, cpus_per_run, False
                cfg.run_dir = str(out / run_name(algo, env, seed))
                try:
                    cfg = resolve_for_run_dir(cfg)  # a run it resumes keeps its precision
                except ConfigError as exc:
                    raise ConfigError(f"{run_name(algo, env, seed)}: {exc}") from None
                spec = RunSpec(algo, env, seed, cfg)
                if spec.name in names:
                    raise SweepError(f"envs {names[spec.name][1]!r} and {env!r} map to the same run dir "
                                     f"{spec.name}; rename one")
                names[spec.name] = (algo, env, seed)
                specs.append(spec)
    return specs


@dataclass
class RunState:
    step: int  # latest checkpoint step (0: none)
    finished: bool


def config_difference(run_dir: Path, cfg: TrainConfig) -> list[str]:
    """Settings that differ from the run already in ``run_dir`` (the fields resuming may not change); a
    ``config.json`` that is not a readable JSON object is a ``SweepError``, as it is for ``smfp train --resume``."""
    old = RunDir(run_dir).read_flat_config("move that run dir away or choose another --out")
    if old is None:
        return []
    return changed_fields(old, cfg)


def run_state(spec: RunSpec) -> RunState:
    """Read-only: where the run in ``spec.run_dir`` stands. Raises if it is a different run."""
    diff = config_difference(spec.run_dir, spec.config)
    if diff:
        raise SweepError(f"{spec.run_dir} holds a different run (differs in: {', '.join(diff)}); "
                         "use the options it was started with, or another --out")
    ckpts = list_checkpoints(spec.run_dir)
    step = ckpts[-1][0] if ckpts else 0
    return RunState(step, step >= spec.total_steps)


def read_progress(run_dir: Path) -> Optional[dict]:
    try:  # a heartbeat is advisory: a missing or damaged one means "no news"
        beat = json.loads((Path(run_dir) / PROGRESS_FILE).read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return beat if isinstance(beat, dict) else None


def read_attempts(run_dir: Path, sweep_id: Optional[str] = None) -> list[dict]:
    path = Path(run_dir) / ATTEMPTS_FILE
    rows = []
    if path.exists():
        for line in path.read_bytes().split(b"\n"):
            try:
                row = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                continue
            if isinstance(row, dict) and (sweep_id is None or row.get("sweep") == sweep_id):
                rows.append(row)
    return rows


@dataclass
class SweepRecord:
    """``OUT/sweep.json``: the grids asked for and every run's latest status.

    Two sweeps may share a folder (disjoint runs, e.g. one per task started by hand; a run dir itself is
    locked by its training). Each save therefore re-reads the file under ``OUT/sweep.json.lock`` and writes
    back only the runs and invocations this record set, so neither sweep erases the other's entries."""

    path: Path
    data: dict = field(default_factory=dict)
    mine: set = field(default_factory=set)  # run names set by this record
    my_invocations: list = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> dict:
        data = {}
        if path.exists():
            fix = "move it away to start a new record"
            data = read_json_object(path, "the sweep record", fix)
            with reading(path, "the sweep record", fix):
                for key, kind in (("invocations", list), ("runs", dict)):
                    if not isinstance(data.get(key, kind()), kind):
                        raise ValueError(f"{key!r} is not a JSON {'array' if kind is list else 'object'}")
                if not all(isinstance(v, dict) for v in data.get("runs", {}).values()):
                    raise ValueError("an entry of 'runs' is not a JSON object")
        data.setdefault("format", "smfp-sweep")
        data.setdefault("version", 1)
        data.setdefault("invocations", [])
        data.setdefault("runs", {})
        return data

    @classmethod
    def open(cls, out: Path) -> "SweepRecord":
        path = Path(out) / SWEEP_FILE
        return cls(path, cls.read(path))

    def start(self, sweep_id: str, grid: dict) -> None:
        invocation = {"id": sweep_id, "started": time.time(), **grid}
        self.data["invocations"].append(invocation)
        self.my_invocations.append(invocation)
        self.data["grid"] = grid

    def set_run(self, spec: RunSpec, **fields) -> None:
        entry = self.data["runs"].setdefault(spec.name, {})
        entry.update({"algo": spec.algo, "env": spec.env, "seed": spec.seed, "run_dir": spec.name,
                      "total_steps": spec.total_steps})
        entry.update(fields)
        self.mine.add(spec.name)

    def save(self) -> None:
        import fcntl

        lock = self.path.with_name(self.path.name + ".lock")
        with open(lock, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX)
            except OSError:
                pass  # a filesystem without flock: the merge below still narrows the window
            try:
                disk = self.read(self.path)
            except ValueError:
                disk = dict(self.data)  # damaged since we opened it: ours is the best record left
            known = {inv.get("id") for inv in disk["invocations"] if isinstance(inv, dict)}
            disk["invocations"] += [inv for inv in self.my_invocations if inv["id"] not in known]
            disk["runs"].update({name: self.data["runs"][name] for name in self.mine})
            if "grid" in self.data:
                disk["grid"] = self.data["grid"]
            disk["updated"] = time.time()
            self.data = disk
            atomic_write_text(self.path, json.dumps(self.data, indent=2) + "\n")
