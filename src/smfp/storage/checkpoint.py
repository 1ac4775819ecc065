"""Complete, atomic, safely loaded checkpoints.

A checkpoint holds everything a resumed run needs (weights, targets, anchor, optimiser
moments, temperatures, counters, RNG states, config; optional keys for the loop's own state:
``recoveries``, the health probe's ``probe``) and only tensors and plain Python values, so it
is loaded with ``torch.load(weights_only=True)``: a file crafted to run code when unpickled is
refused. Before unpickling, every member of the zip archive is checked
against its CRC-32 (a flipped bit is caught, not loaded as a different weight); after, the
fields every reader needs are checked. The replay buffer goes to a sibling file written *before* the
checkpoint, so a checkpoint on disk always has its buffer.
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

from smfp.storage.atomic import atomic_torch_save
from smfp.storage.rundir import RunDir
from smfp.storage.userfiles import UserFileError, describe

FORMAT = "smfp-checkpoint"
VERSION = 1
_NAME = re.compile(r"^step_(\d+)\.pt$")


class CheckpointError(UserFileError):
    """A missing, corrupt or unsafe checkpoint (reported as one line)."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, read-only...); earlier checkpoints are untouched."""


def checkpoint_dir(run_dir: Path) -> Path:
    return RunDir(run_dir).checkpoints


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return RunDir(run_dir).checkpoint(step)


def buffer_path(run_dir: Path, step: int) -> Path:
    return RunDir(run_dir).buffer(step)


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def safe_load(path: Path) -> dict:
    """``torch.load(weights_only=True)`` behind the user-file boundary: whatever a damaged file makes the
    loader raise is one ``CheckpointError``; a file that references code keeps its own refusal."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} " + ("is not a file" if path.exists() else "does not exist"))
    damaged = f"{path} is not a readable checkpoint (truncated, corrupt or not a checkpoint"
    try:
        if zipfile.is_zipfile(path):  # torch's format is a zip archive: check every member's CRC-32 first
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                raise CheckpointError(f"{path} is corrupt: {bad} fails its CRC-32 check; use an intact copy "
                                      "or an older checkpoint")
        with warnings.catch_warnings():  # torch's pickle-protocol notices would add lines to a one-line error
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as exc:
        blocked = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line or "global" in line]
        if not blocked:  # the safe unpickler choked on bytes that are not a pickle at all
            raise CheckpointError(f"{damaged}: {describe(exc)}); use an intact copy or an older checkpoint") from None
        raise CheckpointError(f"refusing to load {path}: it references code, not just tensors and plain data "
                              f"(possibly malicious; only load checkpoints you trust): "
                              f"{blocked[0].split(' Please use')[0][:160]}") from None  # not torch's allow-list advice
    except Exception as exc:  # noqa: BLE001 - the boundary: any failure of the loader on these bytes
        raise CheckpointError(f"{damaged}: {describe(exc)}); use an intact copy or an older checkpoint") from None


_META_KEYS = ("env_id", "policy_kind", "policy_kwargs", "critic_kwargs", "action_low", "action_high")


def load_checkpoint(path: Path) -> dict:
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an SMFP checkpoint")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {ckpt.get('version')}, this smfp reads {VERSION}")
    try:  # the structure every reader relies on (a damaged or hand-made file may lack it)
        ckpt["config"] = json.loads(ckpt["config"])
        ckpt["meta"] = json.loads(ckpt["meta"])
        ok = (isinstance(ckpt["config"], dict) and isinstance(ckpt["meta"], dict)
              and all(k in ckpt["meta"] for k in _META_KEYS) and isinstance(ckpt["learner"], dict)
              and isinstance(ckpt["step"], int) and ckpt["step"] >= 0 and isinstance(ckpt.get("rng"), dict))
    except (KeyError, TypeError, ValueError, RecursionError):
        ok = False
    if not ok:
        raise CheckpointError(f"{path} is an incomplete or damaged SMFP checkpoint (missing or malformed fields)")
    return ckpt


def save_checkpoint(run_dir: Path, step: int, config: dict, meta: dict, learner_state: dict, rng: dict,
                    buffer_state: dict | None, keep: int, extra: dict | None = None) -> Path:
    """``extra``: optional keys (readers of older checkpoints, which lack them, use defaults)."""
    ckpt = {**(extra or {}), "format": FORMAT, "version": VERSION, "step": int(step), "config": json.dumps(config),
            "meta": json.dumps(meta), "learner": learner_state, "rng": rng,
            "buffer_file": buffer_path(run_dir, step).name if buffer_state is not None else None}
    path = checkpoint_path(run_dir, step)
    try:
        checkpoint_dir(run_dir).mkdir(parents=True, exist_ok=True)
        if buffer_state is not None:
            atomic_torch_save(buffer_state, buffer_path(run_dir, step))
        atomic_torch_save(ckpt, path)
    except OSError as exc:  # disk full, quota, read-only, I/O error: the atomic writer left no partial file
        if buffer_state is not None and not path.exists():
            buffer_path(run_dir, step).unlink(missing_ok=True)  # a buffer without its checkpoint is useless
        good = [s for s, _ in list_checkpoints(run_dir)]
        kept = f"the checkpoint of step {good[-1]} is intact" if good else "no earlier checkpoint exists"
        raise CheckpointWriteError(f"cannot write the checkpoint of step {step} to {checkpoint_dir(run_dir)} "
                                   f"({exc.strerror or exc}); {kept}: free space, then continue with "
                                   "--resume") from None
    _prune(run_dir, keep)
    return path


def _prune(run_dir: Path, keep: int) -> None:
    steps = list_checkpoints(run_dir)
    for step, path in steps[:-keep]:
        path.unlink(missing_ok=True)
    kept_buffers = {buffer_path(run_dir, s).name for s, _ in steps[-1:]}
    for p in checkpoint_dir(run_dir).glob("buffer_*.pt"):
        if p.name not in kept_buffers:
            p.unlink(missing_ok=True)
    for p in checkpoint_dir(run_dir).glob(".*.tmp"):  # left by a process killed mid-write
        p.unlink(missing_ok=True)


def latest_checkpoint(run_dir: Path, damaged: list[str] | None = None) -> dict | None:
    """The newest checkpoint that loads (older ones are tried if the newest is damaged); the reasons the
    newer ones did not load are appended to ``damaged``."""
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as exc:
            if damaged is not None:
                damaged.append(str(exc))
            continue
        ckpt["path"] = str(path)
        return ckpt
    return None


def resolve_checkpoint(target: str | Path) -> dict:
    """A checkpoint from a run dir (its latest) or a checkpoint file."""
    target = Path(target)
    if target.is_dir():
        damaged: list[str] = []
        ckpt = latest_checkpoint(target, damaged)
        if ckpt is None:
            raise CheckpointError(f"no loadable checkpoint in {target / 'checkpoints'}"
                                  + (f" ({len(damaged)} damaged; the newest: {damaged[0]})" if damaged else ""))
        return ckpt
    if not target.exists():
        raise CheckpointError(f"{target} is neither a run dir nor a checkpoint file")
    ckpt = load_checkpoint(target)
    ckpt["path"] = str(target)
    return ckpt
