"""A run directory's layout: the one place that knows its file names.

::

    RUN_DIR/config.json              the resolved TrainConfig (read back by --resume, sweeps, report, aggregate)
            metrics.jsonl            one JSON object per logged row, always with "step"
            alerts.jsonl             one JSON object per alarm raised
            tb/                      TensorBoard event files
            checkpoints/step_S.pt    complete checkpoints; buffer_S.pt beside the newest one
            .lock                    held (flock) by the process training in it
            starts.jsonl             one line per start or resume of smfp train: the step, commit and machine
            provenance.json          what made a run that smfp train did not (bench sb3-sac)
            report/, inspect.png     what `smfp report` and `smfp inspect` write by default
            train.log, sweep_attempts.jsonl, sweep_progress.json    written by `smfp sweep`
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from smfp.config import TrainConfig
from smfp.storage.userfiles import read_json_object, read_saved_config


@dataclass(frozen=True)
class RunDir:
    path: Path

    CONFIG = "config.json"
    METRICS = "metrics.jsonl"
    ALERTS = "alerts.jsonl"
    TENSORBOARD = "tb"
    CHECKPOINTS = "checkpoints"
    LOCK = ".lock"
    STARTS = "starts.jsonl"
    PROVENANCE = "provenance.json"
    REPORT = "report"
    INSPECT_PNG = "inspect.png"
    SWEEP_LOG = "train.log"
    SWEEP_ATTEMPTS = "sweep_attempts.jsonl"
    SWEEP_PROGRESS = "sweep_progress.json"

    def __init__(self, path: "str | Path | RunDir"):
        object.__setattr__(self, "path", Path(path.path if isinstance(path, RunDir) else path))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def alerts(self) -> Path:
        return self.path / self.ALERTS

    @property
    def tensorboard(self) -> Path:
        return self.path / self.TENSORBOARD

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def lock(self) -> Path:
        return self.path / self.LOCK

    @property
    def starts(self) -> Path:
        return self.path / self.STARTS

    @property
    def provenance(self) -> Path:
        return self.path / self.PROVENANCE

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:010d}.pt"

    def buffer(self, step: int) -> Path:
        return self.checkpoints / f"buffer_{step:010d}.pt"

    def holds_run(self) -> bool:
        """A run's files are here (what `smfp aggregate` and `smfp report` look for)."""
        return self.config.is_file() and self.metrics.is_file()

    def read_config(self, fix: str) -> dict | None:
        """The saved config as written (nested), checked to be a JSON object; None when there is none."""
        return read_json_object(self.config, "the saved config", fix) if self.config.exists() else None

    def read_flat_config(self, fix: str) -> dict | None:
        """The saved config flattened (``{"section.field": value}``, plain values only); None when there is none."""
        return read_saved_config(self.config, fix)


def resolve_for_run_dir(cfg: TrainConfig) -> TrainConfig:
    """``cfg.resolved()``, except that a resumed run left at ``--precision auto`` keeps the precision it was saved
    with: a run continues as it ran when the default changed or it moved to another CPU (an explicit ``fp32`` /
    ``bf16`` may still change it; a run saved before the field existed ran in fp32). An unreadable saved config
    is left to the run dir's own check, which names it."""
    resolved = cfg.resolved()
    if not (cfg.resume and cfg.update.precision == "auto"):
        return resolved
    try:
        saved = RunDir(Path(resolved.run_dir)).read_flat_config("")
    except (OSError, ValueError):
        return resolved
    if saved is not None:
        resolved.update.precision = saved.get("update.precision", "fp32")
    return resolved


__all__ = ["RunDir", "resolve_for_run_dir"]
