"""Which code and which machine made a run: the git commit of the smfp source checkout, and the CPU and library
versions that decide its floating-point results.

``git_commit()`` is recorded when a run starts (``smfp sweep`` adds it to every
``sweep_attempts.jsonl`` line, ``smfp bench sb3-sac`` writes it to ``provenance.json``), and
``smfp aggregate --csv`` puts it in the results table. It never raises: anything that prevents
an answer (no git, not a checkout, smfp installed as a plain copy, a timeout) gives ``"unknown"``.

``-dirty`` counts changes to tracked files outside the checkout's top-level ``docs/`` folder only: the results
tables and the text there change while runs go on, and do not change what a run computes.

``machine()`` describes the machine a process runs on. A run repeats bit-for-bit only on the same code, libraries
and instruction set: PyTorch picks its kernels by the CPU's ISA (AVX2, AVX-512, AMX), and their sums round
differently, so the same seed on another CPU follows another trajectory. ``smfp train`` writes one line of it per
start or resume to the run's ``starts.jsonl``.
"""

from __future__ import annotations

import os
import platform
import socket
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


# The libraries whose versions change a run's numbers (the kernels, the simulator, the sampling).
_LIBRARIES = ("torch", "numpy", "gymnasium", "mujoco")


def cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where it cannot be read)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def _version(name: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict:
    """The CPU (model; vendor, family and model numbers, which tell CPU generations apart where the model name does
    not, e.g. AMD EPYC Zen 3 and Zen 4), the ISA PyTorch dispatches to, the host, Python and the versions of the
    libraries that change a run's numbers. Never raises."""
    import torch

    info = cpuinfo()
    vendor, family, model = info.get("vendor_id"), info.get("cpu family"), info.get("model")
    return {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "cpu_id": " ".join(f"{k} {v}" for k, v in (("vendor", vendor), ("family", family), ("model", model)) if v)
        or UNKNOWN,
        "isa": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        **{name: _version(name) for name in _LIBRARIES},
    }


# What must match for a resumed or repeated run to follow the same trajectory.
SAME_NUMBERS = ("cpu_id", "isa") + _LIBRARIES


def machine_changes(before: dict, now: dict, keys: tuple[str, ...] = SAME_NUMBERS) -> list[str]:
    """``field before -> now`` for each of ``keys`` that differs between two records (empty: none)."""
    return [f"{key} {before.get(key)} -> {now.get(key)}" for key in keys if before.get(key) != now.get(key)]


__all__ = ["git_commit", "machine", "machine_changes", "SAME_NUMBERS", "UNKNOWN"]
