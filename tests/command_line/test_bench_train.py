"""``smfp bench train`` (throughput benchmark) and the speed work behind it.

The benchmark's JSON schema and its protocol (one update per timed step, round-robin runs,
medians) on a tiny Pendulum run; the Stable-Baselines3 part is skipped when SB3 is missing.
The speed changes must not change behaviour: the float32 path is bit-identical to the plain
modules, the critic target's ``sample_first`` equals ``sample(...)[:, 0]`` (to float rounding), and bf16 stays
close to float32 and keeps float32 weights.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys

import pytest
import torch
from torch import nn

from smfp.bench.speed.train import candidate_config, format_table, run_train_bench, sb3_available
from smfp.config import ConfigError, TrainConfig
from smfp.critic import QEnsemble
from smfp.policies import POLICY_CLASSES, build_policy
from smfp.precision import matmul_precision
from smfp.update import Learner
from smfp.update.learner import grad_norm

SMFP = [sys.executable, "-m", "smfp.cli.main"]


def _check_result(result: dict, repeats: int, steps: int) -> None:
    assert len(result["runs"]) == repeats
    for run in result["runs"]:
        assert run["steps_per_s"] > 0 and math.isfinite(run["steps_per_s"])
        assert run["cpu_steps_per_s"] > 0
        assert run["updates"] == steps, "one gradient update per timed step, none during warmup"
        if result["name"] != "sb3-sac":  # ours time the step less its updates
            assert 0 < run["rest_of_step_ms"] < 1e3 / run["steps_per_s"]
            assert 0 < run["rest_of_step_cpu_ms"] < 1e3 / run["cpu_steps_per_s"]
    assert result["steps_per_s"] == pytest.approx(statistics.median(r["steps_per_s"] for r in result["runs"]))
    assert [r["seed"] for r in result["runs"]] == list(range(repeats))


def test_cli_json_schema_with_sb3_yardstick():
    cmd = SMFP + ["bench", "train", "--env", "Pendulum-v1", "--algos", "sac,smfp", "--steps", "12",
                  "--warmup", "20", "--repeats", "1", "--json", "--batch-size", "32"]
    with_sb3 = sb3_available()
    if with_sb3:
        cmd.append("--compare-sb3")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # stdout is exactly one JSON object
    assert report["env"] == "Pendulum-v1"
    names = [r["name"] for r in report["results"]]
    assert names == ["sac", "smfp"] + (["sb3-sac"] if with_sb3 else [])
    for result in report["results"]:
        _check_result(result, repeats=1, steps=12)
    med = {r["name"]: r["steps_per_s"] for r in report["results"]}
    assert report["ratios"]["smfp / sac"] == pytest.approx(med["smfp"] / med["sac"])
    if with_sb3:
        assert report["ratios"]["sac / sb3-sac"] == pytest.approx(med["sac"] / med["sb3-sac"])
        cpu = {r["name"]: r["cpu_steps_per_s"] for r in report["results"]}
        for result in report["results"][:2]:  # the most each could gain without fewer products, in CPU time
            c, f = result["floor"]["ceiling_vs_sb3"], result["floor"]
            assert f["clock"] == "thread CPU time"  # one torch thread
            assert c["at_most"] == pytest.approx(1e3 / cpu["sb3-sac"] / (f["matmul_floor_ms"] + c["rest_of_step_ms"]))
            assert 0 < c["rest_of_step_ms"] < 1e3 / cpu[result["name"]]  # a part of the whole step
    assert report["settings"]["batch_size"] == 32 and report["settings"]["threads"] == 1
    assert proc.stderr.count("smfp bench: run") == len(names)
    if not with_sb3:
        pytest.skip("stable-baselines3 not installed: the SB3 part was not exercised")


def test_round_robin_medians_and_candidate_options_in_process():
    base = TrainConfig()
    report = run_train_bench("Pendulum-v1", ["sac", "sac:batch_size=16:precision=bf16"], steps=5, repeats=3,
                             compare_sb3=False, warmup=8, overrides=base, log=None, isolate=False)
    assert [r["name"] for r in report["results"]] == ["sac", "sac:batch_size=16:precision=bf16"]
    assert [r["precision"] for r in report["results"]] == ["fp32", "bf16"]  # auto is fp32 in the tests (conftest)
    assert "sac:batch_size=16:precision=bf16      bf16" in format_table(report)
    for result in report["results"]:
        _check_result(result, repeats=3, steps=5)
        f = result["floor"]  # the update against its own GEMMs timed alone
        assert f["update_ms"] > 0 and f["matmul_floor_ms"] > 0 and f["gemms_per_update"] > 0
        assert f["update_over_floor"] == pytest.approx(f["update_ms"] / f["matmul_floor_ms"])
    assert set(report["ratios"]) == {"sac:batch_size=16:precision=bf16 / sac"}
    assert report["machine"]["isa"] and report["machine"]["threads"] == base.threads == 1  # what each run uses


def test_the_ceiling_puts_the_update_at_its_floor_and_keeps_the_rest_of_the_step():
    from smfp.bench.speed.train import ceiling_over

    # Zen 3, 2026-12-07: SB3's step 17.2 ms; SAC's floor 7.78 ms, acting, stepping and sampling 0.79 ms
    c = ceiling_over(17.2, 0.79, 7.78)
    assert c["step_at_floor_ms"] == pytest.approx(8.57) and c["at_most"] == pytest.approx(17.2 / 8.57)


def test_the_floor_records_every_gemm_of_an_update_forward_and_backward():
    """SAC with a 2-critic ensemble of 2 hidden layers: each critic pass is 3 batched products (baddbmm), each
    actor pass 3 linear layers; SMFP adds M components, the anchor, the sigma net and the MeanFlow loss."""
    from smfp.bench.speed.floor import update_floor

    def floor(algo):
        cfg = TrainConfig(algo=algo, run_dir="unused")
        cfg.policy.hidden = cfg.critic.critic_hidden = (16, 16)
        cfg.update.batch_size = 32
        return update_floor(cfg.resolved(), 5, 2, updates=3, reps=2)

    sac, smfp = floor("sac"), floor("smfp")
    assert sac["gemms_per_update"] >= 3 * 3 + 3 * 2  # forward passes alone, before any backward product
    assert smfp["gemms_per_update"] > sac["gemms_per_update"]


def test_candidate_specs_set_fields_and_reject_mistakes():
    cfg = candidate_config("smfp:precision=bf16:components=4:hidden=64/64:meanflow_coef=0.5",
                           "Pendulum-v1", 3, 100, 50)
    assert (cfg.algo, cfg.seed, cfg.env.env) == ("smfp", 3, "Pendulum-v1")
    assert cfg.update.precision == "bf16" and cfg.policy.components == 4
    assert cfg.policy.hidden == (64, 64) and cfg.policy.meanflow_coef == 0.5
    assert cfg.update.learning_starts == 50 and cfg.total_steps == 150
    for bad in ("ppo", "sac:nonsense=1", "sac:precision=fp16", "sac:components=x", "sac:seed=2", "sac:components"):
        with pytest.raises(ConfigError):
            candidate_config(bad, "Pendulum-v1", 0, 10, 10)


@pytest.mark.parametrize("args, word", [
    (["--steps", "0"], "--steps"),
    (["--algos", "sac,ppo"], "ppo"),
    (["--algos", "sac:bogus=3"], "bogus"),
    (["--env", "CartPole-v1"], "Discrete"),
])
def test_bad_input_is_one_line_without_traceback(args, word):
    proc = subprocess.run(SMFP + ["bench", "train", "--steps", "5", "--warmup", "5", "--repeats", "1", *args],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and word in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


# --- the speed work keeps behaviour -----------------------------------------------------------
def _policy(kind: str, hidden=(32, 32)):
    kwargs = dict(obs_dim=5, act_dim=3, hidden=hidden)
    if kind != "gaussian":
        kwargs["sigma_hidden"] = (16, 16)
    return build_policy(kind, **kwargs)


@pytest.mark.parametrize("kind", sorted(POLICY_CLASSES))
@pytest.mark.parametrize("m", [1, 8])
def test_sample_first_is_sample_column_zero(kind, m):
    policy = _policy(kind)
    obs = 2.0 * torch.randn(40, 5)
    torch.manual_seed(11)
    full = policy.sample(obs, m)
    after_full = torch.randn(3)
    torch.manual_seed(11)
    action, log_prob = policy.sample_first(obs, m)
    assert torch.equal(action, full.action[:, 0])
    # the 1 x M table may round differently from the M x M one (vectorised reductions)
    torch.testing.assert_close(log_prob, full.log_prob[:, 0], rtol=1e-6, atol=1e-6)
    assert torch.equal(torch.randn(3), after_full), "same random draws as sample()"


def test_float32_path_is_bit_identical_to_plain_modules():
    torch.manual_seed(0)
    policy = _policy("smfp", hidden=(128, 128))
    plain = nn.Sequential(*policy.u_net)  # same layers, the stock Sequential forward
    x = torch.randn(64, 5 + 3 + 2)
    assert torch.equal(policy.u_net(x), plain(x))
    with matmul_precision(torch.bfloat16):
        assert not torch.equal(policy.u_net(x), plain(x))  # the context really switches
        assert torch.equal(policy.sigma_net(x[:, :5]), nn.Sequential(*policy.sigma_net)(x[:, :5]))  # too narrow
    assert torch.equal(policy.u_net(x), plain(x))  # and is left behind


def test_bf16_is_close_to_float32_and_keeps_float32_outputs():
    torch.manual_seed(0)
    critic = QEnsemble(11, 3, (256, 256))
    obs, act = torch.randn(256, 11), torch.rand(256, 3) * 2 - 1
    q32 = critic(obs, act)
    with matmul_precision(torch.bfloat16):
        q16 = critic(obs, act)
    assert q16.dtype == torch.float32
    rel = (q16 - q32).norm() / q32.norm()
    assert 0 < rel < 0.02, rel
    policy = _policy("gaussian", hidden=(256, 256))
    o = torch.randn(64, 5)
    out32 = policy.net(o)
    with matmul_precision(torch.bfloat16):
        out16 = policy.net(o)
    assert out16.dtype == torch.float32
    assert (out16 - out32).norm() / out32.norm() < 0.02


def test_meanflow_loss_ignores_bf16_context():
    policy = _policy("smfp")
    obs = torch.randn(16, 5)
    torch.manual_seed(5)
    ref = policy.meanflow_loss(obs)
    torch.manual_seed(5)
    with matmul_precision(torch.bfloat16):
        inside = policy.meanflow_loss(obs)
    assert torch.equal(ref, inside)


@pytest.mark.parametrize("algo", ["sac", "smfp"])
def test_bf16_learner_updates_float32_weights(algo):
    cfg = candidate_config(f"{algo}:precision=bf16:hidden=128/128:critic_hidden=128/128:batch_size=32",
                           "Pendulum-v1", 0, 10, 10)
    torch.manual_seed(0)
    learner = Learner(cfg, 3, 1)
    from smfp.buffer import ReplayBuffer

    buf = ReplayBuffer(3, 1, 100)
    for _ in range(100):
        buf.add(torch.randn(3).numpy(), torch.rand(1).numpy() * 2 - 1, float(torch.randn(())), torch.randn(3).numpy(),
                False)
    before = [p.detach().clone() for p in learner.critic.parameters()]
    for i in range(5):
        metrics = learner.update(buf.sample(32), with_metrics=i == 4)
    assert learner.skipped_updates == 0
    assert all(math.isfinite(float(v)) for v in metrics.values())
    assert all(p.dtype == torch.float32 for p in [*learner.critic.parameters(), *learner.policy.parameters()])
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.critic.parameters()))


def test_grad_norm_without_clipping_matches_clip_grad_norm_and_leaves_grads():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    net(torch.randn(10, 4)).pow(2).sum().backward()
    params = list(net.parameters())
    grads = [p.grad.clone() for p in params]
    norm = grad_norm(params, 0.0)
    assert all(torch.equal(p.grad, g) for p, g in zip(params, grads))
    ref = torch.nn.utils.clip_grad_norm_(params, math.inf)
    assert torch.equal(norm, ref)
    assert float(grad_norm(params, 1e-3)) == pytest.approx(float(ref))
    assert float(torch.nn.utils.get_total_norm([p.grad for p in params])) == pytest.approx(1e-3, rel=1e-4)


@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_resolves_to_what_the_cpu_runs_natively_and_is_recorded(native, monkeypatch, tmp_path):
    import smfp.precision as precision

    monkeypatch.setattr(precision, "native_bf16", lambda: native)
    cfg = TrainConfig(algo="sac", run_dir=str(tmp_path / "run"))
    cfg.update.precision = "auto"
    resolved = cfg.resolved()
    assert resolved.update.precision == ("bf16" if native else "fp32")
    assert resolved.to_dict()["update"]["precision"] in ("bf16", "fp32")  # config.json names what ran
    assert Learner(resolved, 3, 1).matmul_dtype == (torch.bfloat16 if native else None)
    for explicit in ("fp32", "bf16"):  # an explicit choice is never overridden
        cfg.update.precision = explicit
        assert cfg.resolved().update.precision == explicit


def test_native_bf16_reads_the_cpu_flags(monkeypatch):
    import smfp.precision as precision

    monkeypatch.delenv(precision.NATIVE_BF16_ENV)  # set by conftest for every other test
    for flags, native in ((frozenset({"avx2", "avx512f", "avx512_bf16"}), True), (frozenset({"amx_bf16"}), True),
                          (frozenset({"avx2", "avx512f"}), False), (frozenset(), False)):
        monkeypatch.setattr(precision, "cpu_flags", lambda flags=flags: flags)
        assert precision.native_bf16() is native


def test_smfp_native_bf16_overrides_the_cpu_flags(monkeypatch):
    import smfp.precision as precision

    for flags in (frozenset({"avx512_bf16"}), frozenset()):
        monkeypatch.setattr(precision, "cpu_flags", lambda flags=flags: flags)
        for forced, native in (("0", False), ("1", True)):
            monkeypatch.setenv(precision.NATIVE_BF16_ENV, forced)
            assert precision.native_bf16() is native
            assert precision.resolve_precision("auto") == ("bf16" if native else "fp32")
        monkeypatch.setenv(precision.NATIVE_BF16_ENV, "yes")  # not 0/1: the flags decide
        assert precision.native_bf16() is bool(flags)


def test_the_default_precision_is_auto():
    assert TrainConfig().update.precision == "auto"
