"""Untrusted checkpoints: a file crafted to run code when unpickled is refused and the code does
not run; truncated, bit-flipped, random-byte or incomplete files give a clear one-line error.

The payload creates a file when unpickled; the tests first show that it really does so under
plain ``pickle`` (a harmless canary, not a checkpoint load), then that neither ``load_agent`` nor
``smfp eval`` (in a separate process) lets it run.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import assert_one_line_error, load_weights_only, run_cli, tiny_config
from smfp.agent import load_agent
from smfp.cli.main import main
from smfp.storage.checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from smfp.training.loop import train


class CreatesFile:
    """Unpickling this object calls ``open(path, "w")``: it creates ``path``."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("untrusted") / "run"
    cfg = tiny_config(run, total_steps=300, learning_starts=100, log_every=100, eval_every=0, checkpoint_every=150)
    cfg.log.tensorboard = False
    train(cfg)
    return run


@pytest.fixture(scope="module")
def good_bytes(good_run) -> bytes:
    return (good_run / "checkpoints" / "step_0000000300.pt").read_bytes()


def _malicious_files(tmp_path: Path, good_run: Path, sentinel: Path) -> dict[str, Path]:
    """The same payload in every form torch.load might be handed."""
    real = load_weights_only(good_run / "checkpoints" / "step_0000000300.pt")
    real["learner"]["policy"] = CreatesFile(sentinel)  # a genuine-looking checkpoint with one poisoned entry
    files = {}
    files["zip"] = tmp_path / "zip.pt"
    torch.save(real, files["zip"])
    files["legacy"] = tmp_path / "legacy.pt"
    torch.save(real, files["legacy"], _use_new_zipfile_serialization=False)
    files["raw_pickle"] = tmp_path / "raw_pickle.pt"
    files["raw_pickle"].write_bytes(pickle.dumps({"learner": CreatesFile(sentinel)}, protocol=2))
    return files


def test_payload_is_live_under_plain_pickle(tmp_path):
    canary = tmp_path / "canary"
    pickle.loads(pickle.dumps(CreatesFile(canary))).close()
    assert canary.exists(), "the payload must really create a file, or the tests below prove nothing"


@pytest.mark.parametrize("form", ["zip", "legacy", "raw_pickle"])
def test_load_agent_refuses_a_malicious_checkpoint(tmp_path, good_run, form):
    sentinel = tmp_path / "PWNED"
    path = _malicious_files(tmp_path, good_run, sentinel)[form]
    with pytest.raises(CheckpointError) as info:
        load_agent(path)
    assert not sentinel.exists(), "the payload ran"
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    assert "refusing to load" in msg and "malicious" in msg and "open" in msg, msg
    assert "add_safe_globals" not in msg, "never suggest allow-listing the payload's function"


def test_smfp_eval_refuses_a_malicious_checkpoint_in_a_separate_process(tmp_path, good_run):
    sentinel = tmp_path / "PWNED"
    path = _malicious_files(tmp_path, good_run, sentinel)["zip"]
    assert_one_line_error(run_cli("eval", path, "--episodes", "1"), "refusing to load", "malicious", str(path))
    assert not sentinel.exists(), "the payload ran"


def test_malicious_newest_checkpoint_in_a_run_dir_is_skipped_not_run(tmp_path, good_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    sentinel = tmp_path / "PWNED"
    shutil.copy(_malicious_files(tmp_path, good_run, sentinel)["zip"], run / "checkpoints" / "step_0000009999.pt")
    assert load_agent(run).step == 300  # the newest loadable one
    code = _main(["eval", str(run), "--episodes", "1", "--json"])
    assert code == 0 and not sentinel.exists()
    capsys.readouterr()


def _main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def _eval_error_line(path: Path, capsys) -> str:
    code = _main(["eval", str(path), "--episodes", "1"])
    _, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("smfp: error:") and str(path) in lines[0], err
    return lines[0]


@pytest.mark.parametrize("case", ["empty", "one_byte", "half", "all_but_one_byte", "random", "zip_of_junk",
                                  "tensor_not_dict", "missing_fields", "wrong_shapes", "flipped_weight_byte"])
def test_damaged_checkpoints_give_one_clear_line(tmp_path, good_bytes, case, capsys):
    path = tmp_path / f"{case}.pt"
    rnd = torch.Generator().manual_seed(0)
    if case == "empty":
        path.write_bytes(b"")
    elif case == "one_byte":
        path.write_bytes(good_bytes[:1])
    elif case == "half":
        path.write_bytes(good_bytes[: len(good_bytes) // 2])
    elif case == "all_but_one_byte":
        path.write_bytes(good_bytes[:-1])
    elif case == "random":
        path.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=rnd, dtype=torch.uint8).tolist()))
    elif case == "zip_of_junk":
        import zipfile
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", b"junk")
    elif case == "tensor_not_dict":
        torch.save(torch.zeros(3), path)
    elif case == "missing_fields":
        torch.save({"format": "smfp-checkpoint", "version": 1, "step": 5}, path)
    elif case == "wrong_shapes":
        ckpt = load_weights_only(_write(tmp_path / "src.pt", good_bytes))
        ckpt["learner"]["policy"] = {k: v[:1] for k, v in ckpt["learner"]["policy"].items()}
        torch.save(ckpt, path)
    elif case == "flipped_weight_byte":  # bit rot inside a tensor: caught by the archive's CRC-32
        data = bytearray(good_bytes)
        data[_first_tensor_byte(good_bytes)] ^= 0x01
        path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as info:
        load_agent(path)
    assert "\n" not in str(info.value)
    line = _eval_error_line(path, capsys)
    if case == "flipped_weight_byte":
        assert "CRC-32" in line


def _first_tensor_byte(raw: bytes) -> int:
    """Offset of a byte inside the first tensor's storage in a torch zip archive."""
    import io
    import struct
    import zipfile

    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data/0"))
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
    assert info.file_size > 4
    return info.header_offset + 30 + name_len + extra_len + 3


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@settings(max_examples=int(os.environ.get("SMFP_FUZZ_EXAMPLES", "40")), deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_truncation_or_corruption_is_a_checkpoint_error(tmp_path, good_bytes, data):
    """Hypothesis: cut the file anywhere or overwrite a few bytes anywhere; loading either gives
    an intact checkpoint or raises CheckpointError, never another exception."""
    raw = bytearray(good_bytes)
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="cut")]
    else:
        for _ in range(data.draw(st.integers(1, 4), label="edits")):
            at = data.draw(st.integers(0, len(raw) - 1), label="at")
            raw[at] = data.draw(st.integers(0, 255).filter(lambda b, at=at: b != raw[at]), label="byte")
    path = tmp_path / "fuzzed.pt"
    path.write_bytes(bytes(raw))
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        assert "\n" not in str(exc)
        return
    # a change the CRC cannot see (e.g. in the zip's own headers) may load; it must still be the same data
    original = load_checkpoint(_write(tmp_path / "original.pt", good_bytes))
    assert ckpt["step"] == original["step"]
    for k, v in original["learner"]["policy"].items():
        assert torch.equal(ckpt["learner"]["policy"][k], v)


def test_every_checkpoint_of_a_run_loads(good_run):
    steps = [s for s, _ in list_checkpoints(good_run)]
    assert steps == [150, 300]
    for step, path in list_checkpoints(good_run):
        assert load_checkpoint(path)["step"] == step
