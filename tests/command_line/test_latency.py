"""``smfp bench latency``: the JSON schema on a tiny configuration, and one-line user errors."""

from __future__ import annotations

import json

import pytest

from conftest import assert_one_line_error, run_cli, tiny_config
from smfp.cli.main import main
from smfp.training.loop import train

RECORD_KEYS = {"policy", "steps", "mode", "backend", "batch", "median_us", "p90_us"}
TINY = ["--seconds", "0.01", "--min-rounds", "2"]


def bench_json(capsys, *argv: str) -> dict:
    assert main(["bench", "latency", "--json", *TINY, *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_schema_tiny_config(capsys):
    report = bench_json(capsys, "--obs-dim", "3", "--act-dim", "2", "--batch", "1,3")
    results = report["results"]
    assert isinstance(results, list)
    for r in results:
        assert set(r) == RECORD_KEYS, r
        assert isinstance(r["policy"], str) and isinstance(r["mode"], str) and isinstance(r["backend"], str)
        assert isinstance(r["steps"], int) and isinstance(r["batch"], int)
        assert isinstance(r["median_us"], float) and isinstance(r["p90_us"], float)
        assert 0 < r["median_us"] <= r["p90_us"]
    keys = {(r["policy"], r["steps"], r["mode"]) for r in results}
    assert keys == {("gaussian", 1, "sample"), ("smfp", 1, "sample"), ("smfp", 2, "sample"), ("smfp", 4, "sample"),
                    ("flow", 10, "sample"), ("flow", 20, "sample"), ("flow", 50, "sample"), ("smfp", 1, "best-of-n")}
    assert {r["backend"] for r in results} == {"eager", "onnx", "torchscript"}
    assert {r["batch"] for r in results} == {1, 3}
    assert len(results) == 8 * 3 * 2  # every candidate x backend x batch, once
    assert report["obs_dim"] == 3 and report["act_dim"] == 2 and report["trained_policy"] is None
    for key in ("cpu", "usable_cores", "torch", "onnxruntime", "threads", "load_average"):
        assert key in report["machine"]
    ratios = report["ratios_to_smfp1"]
    assert len(ratios) == len(results)
    assert all(r["ratio"] == 1.0 for r in ratios if (r["policy"], r["steps"], r["mode"]) == ("smfp", 1, "sample"))
    assert set(report["targets"]) >= {"eager_smfp1_over_gaussian", "eager_flow20_over_smfp1",
                                      "eager_flow50_over_smfp1", "eager_smfp1_over_best_exported_smfp1"}


def test_run_dir_uses_trained_actor_and_backend_subset(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = tiny_config(run_dir, total_steps=50, learning_starts=50, eval_every=0, checkpoint_every=0)
    cfg.algo = "smfp"
    cfg.log.tensorboard = False
    train(cfg)
    report = bench_json(capsys, "--run", str(run_dir), "--batch", "2", "--backends", "eager", "--clock", "cpu")
    assert report["trained_policy"] == "smfp" and report["obs_dim"] == 3 and report["act_dim"] == 1
    assert report["hidden"] == [32, 32] and report["settings"]["clock"] == "cpu"
    assert {r["backend"] for r in report["results"]} == {"eager"} and len(report["results"]) == 8


def test_text_output_has_table(capsys):
    assert main(["bench", "latency", *TINY, "--obs-dim", "2", "--act-dim", "1", "--batch", "1",
                 "--backends", "eager"]) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "flow" in out and "batch-1 targets" in out


@pytest.mark.parametrize("argv,needle", [
    (["--run", "somewhere", "--obs-dim", "3"], "either --run"),
    (["--batch", "1,x"], "--batch"),
    (["--batch", "0"], "--batch"),
    (["--backends", "eager,tensorrt"], "backend"),
    (["--seconds", "0"], "--seconds"),
])
def test_user_mistakes_are_one_line(capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "latency", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code != 0 and len(err) == 1 and needle in err[0], err


def test_missing_run_dir_real_cli(tmp_path):
    assert_one_line_error(run_cli("bench", "latency", "--run", tmp_path / "none"), "none")
