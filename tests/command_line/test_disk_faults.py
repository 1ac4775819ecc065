"""Disk problems: an unwritable or full run dir is reported (one line, non-zero exit) before
training starts; a disk that fills up mid-run is reported the same way and never damages the
last good checkpoint, from which ``--resume`` carries on once space is back.

The tests run as root, so permissions cannot make a folder unwritable: they use a path under a
regular file, the read-only sysfs, and ENOSPC raised from inside the real atomic writer (a full
disk cannot be made safely on a shared machine).
"""

from __future__ import annotations

import errno
import io
import os
import pathlib
from pathlib import Path

import pytest
import torch

from conftest import error_line, load_weights_only
import smfp.storage.atomic as atomic_mod
import smfp.storage.checkpoint as ckpt_mod
from smfp.cli.main import main
from smfp.monitor.logger import MetricsLogger, read_metrics
from smfp.storage.checkpoint import list_checkpoints, load_checkpoint

TRAIN = ["train", "--algo", "sac", "--env", "Pendulum-v1", "--seed", "1", "--total-steps", "600",
         "--checkpoint-every", "200", "--learning-starts", "100", "--log-every", "100", "--eval-every", "0",
         "--eval-episodes", "1", "--max-episode-steps", "100", "--hidden", "16", "16", "--critic-hidden", "16", "16",
         "--batch-size", "32", "--no-progress", "--no-tensorboard"]


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """The CLI entry point in-process: (exit status, stdout, stderr). An exception escaping it
    would be a traceback for the user, so it fails the test by propagating."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code: int, err: str, *needles: str) -> str:
    """The error is one line, the last on stderr, after the run's own ``smfp`` progress messages."""
    return error_line(code, err, *needles, after_messages=True)


def test_run_dir_under_a_regular_file_is_refused_before_training(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, out, err = run_main([*TRAIN, "--run-dir", blocker / "run"], capsys)
    line = assert_one_error_line(code, err, "cannot write to run dir", str(blocker / "run"))
    assert len(err.splitlines()) == 1, "nothing may start before the run dir is known to be writable"
    assert blocker.read_text() == "not a folder" and out == "", line


@pytest.mark.parametrize("run_dir", ["/sys/smfp-reliability-test/run", "/sys/kernel"])
def test_read_only_run_dir_is_refused_before_training(run_dir, capsys):
    """sysfs refuses new files and folders even to root (a read-only or unwritable folder)."""
    probe = Path(run_dir) / ".write_probe"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("x")
    except OSError:
        pass
    else:  # pragma: no cover - an unusual machine where sysfs is writable
        probe.unlink()
        pytest.skip("sysfs is writable here")
    code, _, err = run_main([*TRAIN, "--run-dir", run_dir], capsys)
    assert_one_error_line(code, err, "cannot write to run dir")
    assert len(err.splitlines()) == 1


def test_full_disk_at_start_is_refused_before_training(tmp_path, capsys, monkeypatch):
    real = pathlib.Path.write_text

    def full(self, *args, **kwargs):
        if self.name.startswith(".write_probe"):  # one probe file per process
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    code, _, err = run_main([*TRAIN, "--run-dir", tmp_path / "run"], capsys)
    assert_one_error_line(code, err, "cannot write to run dir", "No space left on device")
    assert not (tmp_path / "run" / "config.json").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("failing_file", ["buffer", "step"])
def test_disk_full_while_checkpointing_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch, failing_file):
    """The checkpoint of step 400 hits ENOSPC halfway through writing its buffer file or its own
    file (through the real atomic writer): one error line, exit 2, the checkpoint of step 200
    byte-for-byte intact and loadable, no partial file left; after space is back --resume goes on."""
    run = tmp_path / "run"
    ckdir = run / "checkpoints"
    real_save = ckpt_mod.atomic_torch_save
    seen = {}

    def disk_fills_up(obj, path):
        path = Path(path)
        if not (path.name.startswith(failing_file) and "0000000400" in path.name):
            return real_save(obj, path)
        seen["good"] = (ckdir / "step_0000000200.pt").read_bytes()

        def write(f):
            raw = io.BytesIO()
            torch.save(obj, raw)
            f.write(raw.getvalue()[: len(raw.getvalue()) // 2])
            f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

        atomic_mod._atomic(path, write)  # the real temp-file + rename writer, failing mid-write

    monkeypatch.setattr(ckpt_mod, "atomic_torch_save", disk_fills_up)
    code, out, err = run_main([*TRAIN, "--run-dir", run], capsys)
    assert_one_error_line(code, err, "checkpoint of step 400", "No space left on device",
                          "checkpoint of step 200 is intact", "--resume")
    assert out == "" and "good" in seen, "the fault was not injected"
    assert (ckdir / "step_0000000200.pt").read_bytes() == seen["good"]
    assert load_checkpoint(ckdir / "step_0000000200.pt")["step"] == 200
    assert load_weights_only(ckdir / "buffer_0000000200.pt")["size"] == 200
    assert sorted(p.name for p in ckdir.iterdir()) == ["buffer_0000000200.pt", "step_0000000200.pt"], \
        "no partial, temporary or orphan file may be left behind"

    monkeypatch.undo()  # space is back
    code, out, err = run_main([*TRAIN, "--run-dir", run, "--resume"], capsys)
    assert code == 0 and "resumed at step 200" in err, err
    assert [s for s, _ in list_checkpoints(run)][-1] == 600
    rows = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "train/sps" in r]
    assert rows == [100, 200, 300, 400, 500, 600]


def test_disk_full_while_logging_metrics_is_one_line(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    real_log = MetricsLogger.log

    def log(self, step, metrics):
        if step >= 300:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        return real_log(self, step, metrics)

    monkeypatch.setattr(MetricsLogger, "log", log)
    code, _, err = run_main([*TRAIN, "--run-dir", run], capsys)
    assert_one_error_line(code, err, "No space left on device", "metrics.jsonl", "--resume")
    assert load_checkpoint(run / "checkpoints" / "step_0000000200.pt")["step"] == 200


def test_atomic_writer_failure_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "state.pt"
    atomic_mod.atomic_torch_save({"w": torch.arange(5)}, target)
    before = target.read_bytes()

    def fails_halfway(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError) as info:
        atomic_mod._atomic(target, fails_halfway)
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]
    assert torch.equal(load_weights_only(target)["w"], torch.arange(5))
