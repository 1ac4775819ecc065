"""The real ``smfp`` command line in one long-lived worker process, for fuzz tests.

Starting a Python process that imports torch costs seconds on a busy machine, so the CLI runs in one
worker process per test module: the worker calls ``smfp.cli.main.main(argv)`` exactly as the ``smfp``
script does, with its real stdout/stderr file descriptors redirected to files, and reports the exit
status (an escaping exception is reported as the traceback the user would see). Each call has a
timeout: a hang kills the worker and fails the test.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import event
from hypothesis.control import currently_in_test_context

from conftest import REPO, error_line

CALL_TIMEOUT = 90  # seconds; every valid input here finishes in a few

WORKER = textwrap.dedent(r'''
    import json, os, sys, traceback
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    from smfp.cli.main import main
    for line in sys.stdin:
        req = json.loads(line)
        os.chdir(req["cwd"])
        tb = None
        with open(req["out"], "w") as out_f, open(req["err"], "w") as err_f:
            sys.stdout.flush(); sys.stderr.flush()
            saved = os.dup(1), os.dup(2)
            os.dup2(out_f.fileno(), 1); os.dup2(err_f.fileno(), 2)
            try:
                code = main(req["argv"])
            except SystemExit as exc:
                code = exc.code
                if isinstance(code, str):  # sys.exit("message"): printed, status 1
                    print(code, file=sys.stderr); code = 1
            except BaseException:  # what the user would see as a traceback
                tb = traceback.format_exc(); sys.stderr.write(tb); code = 1
            finally:
                sys.stdout.flush(); sys.stderr.flush()
                os.dup2(saved[0], 1); os.dup2(saved[1], 2); os.close(saved[0]); os.close(saved[1])
        proto.write(json.dumps({"code": 0 if code is None else code, "traceback": tb}) + "\n")
''')


class Worker:
    def __init__(self, folder: Path):
        self.folder = folder
        self.counter = itertools.count()
        self.log = open(folder / "worker_stderr.txt", "a")
        self._start()

    def _start(self):
        env = dict(os.environ)
        env.pop("PYTHONWARNINGS", None)
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, cwd=REPO, env=env)

    def _restart(self):
        """After a hang or a crash: a fresh worker, so that hypothesis can replay the failing input."""
        self.proc.kill()
        self.proc.wait()
        self._start()

    def new_dir(self) -> Path:
        d = self.folder / f"case{next(self.counter)}"
        d.mkdir()
        return d

    def run(self, argv: list[str], cwd: Path) -> tuple[int, str, str]:
        out, err = cwd / "_stdout.txt", cwd / "_stderr.txt"
        self.proc.stdin.write(json.dumps({"argv": argv, "cwd": str(cwd), "out": str(out), "err": str(err)}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], CALL_TIMEOUT)
        if not ready:
            self._restart()
            raise AssertionError(f"smfp {argv!r} hung for more than {CALL_TIMEOUT} s")
        line = self.proc.stdout.readline()
        if not line:
            status = self.proc.wait()
            self._restart()
            raise AssertionError(f"the process died (status {status}) on smfp {argv!r}:\n{err.read_text()}")
        reply = json.loads(line)
        stderr = err.read_text()
        assert reply["traceback"] is None, f"traceback for smfp {argv!r}:\n{reply['traceback']}"
        return reply["code"], out.read_text(), stderr

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    w = Worker(tmp_path_factory.mktemp("fuzz"))
    yield w
    w.close()


def check_outcome(argv: list[str], code: int, stderr: str) -> str:
    """Works, or fails with exactly one error line (the last), nothing else but ``smfp:`` messages."""
    assert "Traceback" not in stderr, f"smfp {argv!r}:\n{stderr}"
    if code == 0:
        _event("works")
        return "ok"
    try:
        error_line(code, stderr, after_messages=True)
    except AssertionError as exc:
        raise AssertionError(f"smfp {argv!r}: {exc}") from None
    lines = stderr.splitlines()
    _event(f"exit {code}: {'after start' if len(lines) > 1 else 'before start'}")
    return "error"


def _event(label: str) -> None:
    if currently_in_test_context():  # hypothesis' statistics; the plain loops of other tests have none
        event(label)
