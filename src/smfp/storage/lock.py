"""One writer per run dir: ``smfp train`` holds an exclusive ``flock`` on ``RUN_DIR/.lock`` while it trains.

The kernel releases a ``flock`` when its holder's file is closed, which includes the process dying
(``kill -9``, OOM killer), so a lock file left behind by a killed process is harmless: the next
``train`` takes it over. The holder's pid is written into the file, for the refusal message only;
the file's content never decides anything. Readers (``smfp eval``, ``report``) do not lock.

Caveats: ``flock`` is per open file, so a second ``train`` in the *same* process is refused too (as
it should be); a child created by ``fork`` without ``exec`` would share the lock while it lives.
On a filesystem that does not support ``flock`` (some network/parallel filesystems), training goes
on unlocked after a warning on stderr, rather than not at all.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import time
from pathlib import Path
from typing import Optional

from smfp.config import ConfigError

LOCK_NAME = ".lock"
_HELD = {errno.EWOULDBLOCK, errno.EAGAIN}


class RunDirInUse(ConfigError):
    """Another process holds the run dir's lock."""


class RunDirLock:
    """An exclusive ``flock`` on ``run_dir/.lock``; ``release`` (or process death) frees it."""

    def __init__(self, run_dir: Path, fd: Optional[int]):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # no stale pid for the next reader (a killed holder leaves one: harmless)
        except OSError:
            pass
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "RunDirLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder_pid(fd: int) -> Optional[int]:
    """The pid the holder wrote; it writes it just after acquiring, so an empty file is retried briefly."""
    deadline = time.monotonic() + 0.5
    while True:
        try:
            text = os.pread(fd, 64, 0)
            return int(text.decode("ascii").strip())
        except (OSError, ValueError, UnicodeDecodeError):
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)


def lock_run_dir(run_dir: Path) -> RunDirLock:
    """Take the run dir's lock (the run dir must exist) or raise ``RunDirInUse`` naming the holder's pid."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise ConfigError(f"cannot open the lock file {path}: {exc.strerror or exc}; "
                          "choose another --run-dir") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in _HELD:
            pid = _holder_pid(fd)
            os.close(fd)
            raise RunDirInUse(f"run dir {run_dir} is in use by another smfp process "
                              f"(pid {pid if pid is not None else 'unknown'}); wait for it to finish or stop it") from None
        os.close(fd)  # e.g. ENOLCK/EOPNOTSUPP/ENOSYS: this filesystem cannot lock
        print(f"smfp: warning: cannot lock run dir {run_dir} ({exc.strerror or exc}); a second process "
              "training in it would not be refused", file=sys.stderr, flush=True)
        return RunDirLock(run_dir, None)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # unbuffered: visible to readers at once
    except OSError:
        pass  # the pid is for messages only; the lock itself is held
    return RunDirLock(run_dir, fd)


__all__ = ["LOCK_NAME", "RunDirInUse", "RunDirLock", "lock_run_dir"]
