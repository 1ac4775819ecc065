"""The one boundary where files a user hands to smfp are read.

A checkpoint, a run's ``config.json``, ``metrics.jsonl`` or ``alerts.jsonl``, a sweep record or an
exported actor may be truncated, damaged on disk, hand-edited or not what its name says. Whatever
goes wrong while such a file is read *and checked*, the user gets one ``UserFileError`` line that
names the file, says what is wrong and what to do. The boundary converts; it never swallows, and
it covers only reading and checking: once a reader has returned checked data, an exception in
smfp's own code is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Iterator

from smfp.config import flatten_config

# The largest step a metrics row may carry (a damaged file may hold any integer).
MAX_STEP = 2**62


class UserFileError(ValueError):
    """A file handed to smfp could not be read or does not hold what it should (one line)."""


def describe(exc: BaseException) -> str:
    """``Type: first line of the message`` (short, one line)."""
    first = (str(exc).strip().splitlines() or [""])[0][:160]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


@contextlib.contextmanager
def reading(path: str | Path, what: str, fix: str,
            keep: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Any exception raised inside becomes ``UserFileError("WHAT PATH is unreadable (why); FIX")``, except
    those of the ``keep`` types (errors that already say the right thing, e.g. a missing package).

    Put only the reading and checking of the file inside: code that uses checked data stays outside."""
    try:
        yield
    except (UserFileError, *keep):
        raise
    except Exception as exc:  # noqa: BLE001 - the boundary: every failure to read a user's file is one line
        raise UserFileError(f"{what} {path} is unreadable ({describe(exc)}); {fix}") from None


def read_json_object(path: str | Path, what: str, fix: str) -> dict:
    """A file holding one JSON object (``config.json``, a sweep record, a score table)."""
    with reading(path, what, fix):
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, found {type(data).__name__}")
        return data


def read_saved_config(path: str | Path, fix: str) -> dict | None:
    """A run's saved config file flattened (``{"section.field": value}``); None when there is none."""
    path = Path(path)
    if not path.exists():
        return None
    data = read_json_object(path, "the saved config", fix)
    with reading(path, "the saved config", fix):
        flat = flatten_config(data)
        bad = [k for k, v in flat.items() if not _plain(v)]
        if bad:
            raise ValueError(f"field {bad[0]!r} is not a plain value")
        return flat


def _plain(v) -> bool:
    if isinstance(v, list):
        return all(_plain(x) for x in v)
    return v is None or isinstance(v, (bool, int, float, str))


def read_rows(path: str | Path) -> list[dict]:
    """Complete rows of a JSON-lines file whose rows carry an integer ``step`` (``metrics.jsonl``,
    ``alerts.jsonl``). A line that is not a JSON object with such a step (a torn last line left by a
    crash mid-write, junk bytes, a hand edit) is skipped: every complete row before and after it is
    kept. A missing file has no rows; an unreadable one (a folder, no permission) is one line."""
    p = Path(path)
    if not p.exists():
        return []
    with reading(p, "the log", "move the damaged file away and run again"):
        raw = p.read_bytes()
    rows = []
    for line in raw.split(b"\n"):
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            continue
        if isinstance(row, dict) and _is_step(row.get("step")):
            rows.append(row)
    return rows


def _is_step(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_STEP


def numeric_rows(rows: list[dict]) -> list[dict]:
    """Metrics rows with only their numeric values (non-finite ones, which the logger writes as the strings
    'nan', 'inf', '-inf', as floats): any other value of a damaged row is dropped, its key with it."""
    out = []
    for row in rows:
        clean = {}
        for k, v in row.items():
            if isinstance(v, bool) or not isinstance(k, str):
                continue
            if isinstance(v, (int, float)):
                if abs(v) <= 1e300:  # a damaged row may hold an integer too large for a float
                    clean[k] = float(v)
            elif v in ("nan", "inf", "-inf"):
                clean[k] = math.nan if v == "nan" else float(v)
        clean["step"] = row["step"]
        out.append(clean)
    return out


def alert_rows(rows: list[dict]) -> list[dict]:
    """``alerts.jsonl`` rows that hold what an alert is (its name and message as text); others are skipped."""
    return [r for r in rows if isinstance(r.get("alarm"), str) and isinstance(r.get("message"), str)
            and isinstance(r.get("value", 0.0), (int, float, str)) and not isinstance(r.get("value"), bool)]


__all__ = ["MAX_STEP", "UserFileError", "alert_rows", "describe", "numeric_rows", "read_json_object", "read_rows",
           "read_saved_config", "reading"]
