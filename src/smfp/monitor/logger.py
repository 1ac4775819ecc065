"""Metrics go to ``metrics.jsonl`` (one JSON object per line, always with ``step``) and to
TensorBoard under the same keys; a tqdm bar shows progress on a terminal.

Resume rule: when a run resumes from the checkpoint at step S, ``metrics.jsonl`` is rewritten
(atomically) to keep only complete lines with ``step <= S``, so lines logged after the
checkpoint by the interrupted process, and a torn last line, are dropped; TensorBoard
purges its events after S in the same way (``purge_step``). A resume that finds no checkpoint
starts from scratch (S = 0), so it keeps no line. A "complete line" is a JSON object whose
``step`` is an integer.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import torch

from smfp.storage.atomic import atomic_write_text
from smfp.storage.userfiles import read_rows


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Complete rows of a metrics file as written (a torn last line or a damaged line is skipped)."""
    return read_rows(path)


def truncate_metrics(path: Path, last_step: int) -> None:
    rows = [r for r in read_metrics(path) if r["step"] <= last_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _number(v) -> float:
    if isinstance(v, torch.Tensor):
        v = v.item()
    v = float(v)
    return v if math.isfinite(v) else (str(v))  # JSON has no NaN: keep it visible as a string


class MetricsLogger:
    """Writes every row to ``metrics.jsonl`` (the record), then hands it to its subscribers (TensorBoard, the
    alarms, a caller's callback), in the order they subscribed; shows a progress bar on a terminal."""

    def __init__(self, path: Path, total_steps: int, start_step: int = 0, progress: bool = True):
        self.path = Path(path)
        if start_step > 0 or self.path.exists():  # a resume without a checkpoint restarts at step 0
            truncate_metrics(self.path, start_step)
        self.file = open(self.path, "a", buffering=1)
        self.subscribers: list[Callable[[int, dict], object]] = []
        self.bar = None
        if progress and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, file=sys.stderr)
        self.postfix: dict[str, str] = {}

    def subscribe(self, fn: Callable[[int, dict], object]) -> None:
        self.subscribers.append(fn)

    def log(self, step: int, metrics: dict) -> dict:
        row = {"step": int(step)}
        row.update({k: _number(v) for k, v in metrics.items()})
        self.file.write(json.dumps(row) + "\n")
        for fn in self.subscribers:
            fn(step, row)
        return row

    def progress(self, step: int, **postfix) -> None:
        if self.bar is None:
            return
        self.bar.n = step
        for k, v in postfix.items():
            self.postfix[k] = f"{v:.4g}" if isinstance(v, float) else str(v)
        self.bar.set_postfix(self.postfix, refresh=False)
        self.bar.refresh()

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.file.close()


class TensorBoardSink:
    """A logger subscriber writing every numeric value of a row as a TensorBoard scalar; on a resume, the events
    after the resumed step are purged (``purge_step``) like the metrics file's rows."""

    def __init__(self, folder: Path, purge_step: Optional[int]):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder), purge_step=purge_step)

    def __call__(self, step: int, row: dict) -> None:
        for k, v in row.items():
            if k != "step" and isinstance(v, float):
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()
