"""Which code made a run: the git commit of the smfp source checkout.

``git_commit()`` is recorded when a run starts (``smfp sweep`` adds it to every
``sweep_attempts.jsonl`` line, ``smfp bench sb3-sac`` writes it to ``provenance.json``), and
``smfp aggregate --csv`` puts it in the results table. It never raises: anything that prevents
an answer (no git, not a checkout, smfp installed as a plain copy, a timeout) gives ``"unknown"``.

``-dirty`` counts changes to tracked files outside the checkout's top-level ``docs/`` folder only: the results
tables and the text there change while runs go on, and do not change what a run computes.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Optional

UNKNOWN = "unknown"
# Changes here do not make a checkout dirty (pathspec relative to the checkout's top, whatever folder git runs in).
_NOT_CODE = ":(top,exclude)docs"
_TIMEOUT_S = 10.0


def _git(folder: Path, *args: str) -> Optional[str]:
    """stdout of ``git -C folder ARGS``, or None on any failure."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}  # no GIT_DIR from a caller's hook
    env["GIT_OPTIONAL_LOCKS"] = "0"  # `git status` must not take the index lock of a checkout in use
    try:
        proc = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, env=env,
                              timeout=_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_commit(path: Optional[str | os.PathLike] = None) -> str:
    """``git rev-parse HEAD`` of the checkout holding ``path`` (default: the smfp package's own
    source folder), with ``-dirty`` appended when tracked files (other than docs) differ from it; ``"unknown"`` when
    ``path`` is not tracked by a git checkout (e.g. smfp installed as a copy in site-packages).
    Changes under the top-level ``docs/`` do not count (results tables and text).
    """
    try:
        folder = Path(path) if path is not None else Path(__file__).resolve().parent
        folder = folder.resolve()
        if not folder.is_dir():
            return UNKNOWN
        head = _git(folder, "rev-parse", "--verify", "HEAD")
        # The folder itself must be tracked: a copy inside an ignored folder of some other checkout
        # (a virtualenv in a repository) says nothing about its own version.
        tracked = _git(folder, "ls-files", "--", ".")
        if not head or not head.strip() or not tracked or not tracked.strip():
            return UNKNOWN
        commit = head.strip().splitlines()[0]
        status = _git(folder, "status", "--porcelain", "--untracked-files=no", "--", ":(top)", _NOT_CODE)
        if status is None:
            return UNKNOWN
        return commit + ("-dirty" if status.strip() else "")
    except Exception:  # noqa: BLE001 - provenance is best effort and must never stop a run
        return UNKNOWN


__all__ = ["git_commit", "UNKNOWN"]
