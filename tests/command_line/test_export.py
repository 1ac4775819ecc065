"""Deployment export: ONNX / TorchScript actors equal the library's eager actors, and stand alone."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, run_cli, tiny_config
from smfp.agent import Agent
from smfp.cli.main import main
from smfp.critic import QEnsemble
from smfp.export import ExportError, export_policy, load_runner, read_meta
from smfp.policies import build_policy
from smfp.training.loop import train

OBS, ACT = 5, 2
LOW, HIGH = np.array([-2.0, 0.0], np.float32), np.array([2.0, 10.0], np.float32)  # asymmetric: rescaling shows
POLICY_KW = {"gaussian": {}, "smfp": {"sigma_hidden": (16,)}, "flow": {"sigma_hidden": (16,), "steps": 5}}


def make_agent(kind: str, n: int = 6, seed: int = 0) -> Agent:
    torch.manual_seed(seed)
    policy = build_policy(kind, obs_dim=OBS, act_dim=ACT, hidden=(32, 32), **POLICY_KW[kind]).eval()
    with torch.no_grad():  # a sigma of order 1, so that the output noise visibly matters
        for p in policy.parameters():
            p.mul_(1.5)
    critic = QEnsemble(OBS, ACT, (32, 32), 2).eval()
    return Agent(policy, critic, "none", LOW, HIGH, best_of_n=n)


def library_noise(kind: str, mode: str, b: int, n: int, seed: int) -> np.ndarray | None:
    """The noise ``Policy.act`` draws after ``torch.manual_seed(seed)``, in the exported actor's layout."""
    torch.manual_seed(seed)
    if mode == "sample":
        z, xi = torch.randn(b, 1, ACT), torch.randn(b, 1, ACT)  # draw_noise, then randn_like(mean)
        return (xi[:, 0] if kind == "gaussian" else torch.cat([z[:, 0], xi[:, 0]], dim=1)).numpy()
    if mode == "best-of-n":
        return torch.randn(b, n, ACT).numpy()
    return None


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("kind,mode", [("gaussian", "sample"), ("gaussian", "mean"), ("smfp", "sample"),
                                       ("smfp", "best-of-n"), ("flow", "sample"), ("flow", "best-of-n")])
def test_round_trip_equals_library_agent(tmp_path, kind, mode, fmt):
    """Same observations and noise: the exported file acts exactly like ``Agent.act`` (bounds included)."""
    n, b = 6, 32
    agent = make_agent(kind, n)
    path = tmp_path / f"actor.{fmt}"
    summary = export_policy(agent.policy, LOW, HIGH, fmt, path, mode, critic=agent.critic, num_candidates=n)
    assert summary["max_abs_error"] <= 1e-4 and summary["mode"] == mode
    run = load_runner(path, fmt)
    obs = np.random.default_rng(1).standard_normal((b, OBS)).astype(np.float32) * 2.0
    for seed in (11, 12):
        torch.manual_seed(seed)
        with torch.no_grad():
            expected = agent.act(obs, mode)
        noise = library_noise(kind, mode, b, n, seed)
        got = run(obs) if noise is None else run(obs, noise)
        assert got.shape == (b, ACT) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)
        assert (got >= LOW - 1e-6).all() and (got <= HIGH + 1e-6).all()
    if noise is not None:  # the noise input is really used
        other = run(obs, np.random.default_rng(3).standard_normal(noise.shape).astype(np.float32))
        assert np.abs(other - got).max() > 1e-2
    meta = read_meta(path, fmt)
    assert meta["policy"] == kind and meta["mode"] == mode and meta["action_high"] == HIGH.tolist()
    assert meta["noise_shape"] == (None if noise is None else list(noise.shape[1:]))


def test_best_of_n_candidate_count_is_free_at_run_time(tmp_path):
    agent = make_agent("smfp", n=6)
    path = tmp_path / "b.onnx"
    export_policy(agent.policy, LOW, HIGH, "onnx", path, "best-of-n", critic=agent.critic, num_candidates=6)
    run = load_runner(path, "onnx")
    obs = np.random.default_rng(0).standard_normal((3, OBS)).astype(np.float32)
    for n in (1, 40):
        agent.best_of_n = n
        torch.manual_seed(5)
        with torch.no_grad():
            expected = agent.act(obs, "best-of-n")
        np.testing.assert_allclose(run(obs, library_noise("smfp", "best-of-n", 3, n, 5)), expected, atol=2e-5)


@pytest.mark.parametrize("k", [1, 4, 9])
def test_exported_flow_makes_k_network_passes(tmp_path, k):
    """The exported flow-K graph holds K copies of the 3-layer velocity net plus the 2-layer sigma net."""
    onnx = pytest.importorskip("onnx")
    agent = make_agent("flow")
    path = tmp_path / "f.onnx"
    export_policy(agent.policy, LOW, HIGH, "onnx", path, "sample", steps=k)
    ops = collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    assert ops["Gemm"] + ops["MatMul"] == 3 * k + 2
    assert read_meta(path, "onnx")["steps"] == k


def test_smfp_multi_step_export_matches_transport(tmp_path):
    agent = make_agent("smfp")
    path = tmp_path / "s4.pt"
    export_policy(agent.policy, LOW, HIGH, "torchscript", path, "sample", steps=4)
    obs = np.random.default_rng(2).standard_normal((7, OBS)).astype(np.float32)
    noise = np.random.default_rng(3).standard_normal((7, 2 * ACT)).astype(np.float32)
    with torch.no_grad():
        o, z, xi = torch.from_numpy(obs), torch.from_numpy(noise[:, :ACT]), torch.from_numpy(noise[:, ACT:])
        x = agent.policy.transport(o, z.unsqueeze(1), steps=4)[:, 0] + agent.policy.log_std(o).exp() * xi
        expected = LOW + (torch.tanh(x).numpy() + 1) * 0.5 * (HIGH - LOW)
    np.testing.assert_allclose(load_runner(path, "torchscript")(obs, noise), expected, atol=2e-5)


def test_export_refuses_mean_for_mixtures(tmp_path):
    agent = make_agent("smfp")
    with pytest.raises(ExportError, match="best-of-n or sample"):
        export_policy(agent.policy, LOW, HIGH, "onnx", tmp_path / "x.onnx", "mean", critic=agent.critic)


@pytest.fixture(scope="module")
def smfp_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("export") / "run"
    cfg = tiny_config(run_dir, total_steps=300, learning_starts=200, eval_every=0, checkpoint_every=0)
    cfg.algo = "smfp"
    cfg.policy.sigma_hidden = (16, 16)
    cfg.log.tensorboard = False
    train(cfg)
    return run_dir


def test_cli_export_and_standalone_use(smfp_run, tmp_path):
    """``smfp export`` (real CLI) writes files that run in a Python process that cannot import smfp."""
    outs = {}
    for fmt, ext in (("onnx", "onnx"), ("torchscript", "pt")):
        out = tmp_path / f"actor.{ext}"
        given = ["--format", fmt] if fmt == "onnx" else []  # TorchScript from the .pt suffix alone
        proc = run_cli("export", smfp_run, *given, "--out", out, "--mode", "sample")
        assert proc.returncode == 0, proc.stderr
        assert "max abs error" in proc.stdout and out.is_file()
        err = float(proc.stdout.split("max abs error ")[1].split()[0])
        assert 0 <= err <= 1e-4
        outs[fmt] = out
    obs = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)  # Pendulum: obs 3, act 1 in [-2, 2]
    noise = np.random.default_rng(1).standard_normal((4, 2)).astype(np.float32)
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["smfp"] = None  # any import of smfp now fails
        import numpy as np, onnxruntime as ort, torch
        obs = np.array({obs.tolist()}, dtype=np.float32)
        noise = np.array({noise.tolist()}, dtype=np.float32)
        sess = ort.InferenceSession({str(outs["onnx"])!r}, providers=["CPUExecutionProvider"])
        a_onnx = sess.run(None, {{"obs": obs, "noise": noise}})[0]
        meta = json.loads(sess.get_modelmeta().custom_metadata_map["smfp"])
        actor = torch.jit.load({str(outs["torchscript"])!r})
        a_ts = actor(torch.from_numpy(obs), torch.from_numpy(noise)).numpy()
        print(json.dumps({{"onnx": a_onnx.tolist(), "ts": a_ts.tolist(), "meta": meta}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    a_onnx, a_ts = np.array(out["onnx"]), np.array(out["ts"])
    assert a_onnx.shape == (4, 1) and np.abs(a_onnx - a_ts).max() < 1e-5
    assert (np.abs(a_onnx) <= 2.0 + 1e-6).all() and out["meta"]["env_id"] == "Pendulum-v1"
    assert out["meta"]["policy"] == "smfp" and out["meta"]["noise_shape"] == [2]


@pytest.mark.parametrize("argv,needle", [
    (["--format", "onnx", "--mode", "mean"], "best-of-n or sample"),
    (["--format", "tflite"], "--format"),
    (["--format", "onnx", "--steps", "0"], "--steps"),
    ([], "cannot tell the format from --out"),
])
def test_cli_export_user_mistakes(smfp_run, tmp_path, capsys, argv, needle):
    with pytest.raises(SystemExit) as exc:
        main(["export", str(smfp_run), "--out", str(tmp_path / "x"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code != 0 and len(err) == 1 and needle in err[0], err


def test_cli_export_missing_run_is_one_line(tmp_path):
    proc = run_cli("export", tmp_path / "nope", "--format", "onnx", "--out", tmp_path / "a.onnx")
    assert_one_line_error(proc, "nope")


def test_best_of_n_verification_accepts_a_near_tie_and_nothing_else(tmp_path, monkeypatch):
    """best-of-n keeps the candidate with the highest min-Q; where two candidates' min-Q agree to float rounding,
    the file may keep the other one (ONNX Runtime sums in another order than PyTorch): that row agrees. A file that
    keeps a worse candidate, or an action that is no candidate, still fails the check."""
    import smfp.export as export
    from smfp.export import reference_candidates
    from smfp.policies import SMFPPolicy

    torch.manual_seed(3)
    policy = SMFPPolicy(3, 2, hidden=(16, 16), sigma_hidden=(8,)).eval()
    critic = QEnsemble(3, 2, (8,), 2).eval()
    low, high = np.array([-1.0, -2.0]), np.array([1.0, 2.0])
    real_runner = export.load_runner

    def runner_keeping(pick):
        def load(path, fmt):
            run = real_runner(path, fmt)

            def act(obs, noise):
                cands, q = reference_candidates(policy, low, high, torch.as_tensor(obs), torch.as_tensor(noise), None,
                                                critic)
                return pick(run(obs, noise), cands.detach().numpy(), q.detach().numpy())
            return act
        return load

    out = tmp_path / "a.onnx"
    assert export_policy(policy, low, high, "onnx", out, "best-of-n", None, critic)["near_ties"] == 0
    with torch.no_grad():  # every candidate ties: min-Q does not depend on the action
        critic.weights[-1].zero_()
    second = lambda got, cands, q: cands[:, 1]  # noqa: E731  another tied candidate, in every row
    monkeypatch.setattr(export, "load_runner", runner_keeping(second))
    summary = export_policy(policy, low, high, "onnx", out, "best-of-n", None, critic)
    assert summary["near_ties"] == 64 and summary["max_abs_error"] <= summary["tolerance"]
    off = lambda got, cands, q: got + 0.01  # noqa: E731  no candidate
    monkeypatch.setattr(export, "load_runner", runner_keeping(off))
    with pytest.raises(ExportError, match="disagrees"):
        export_policy(policy, low, high, "onnx", out, "best-of-n", None, critic)

    torch.manual_seed(3)
    critic = QEnsemble(3, 2, (8,), 2).eval()  # candidates' min-Q differ again: keeping the worst one is wrong
    worst = lambda got, cands, q: cands[np.arange(len(q)), q.argmin(axis=1)]  # noqa: E731
    monkeypatch.setattr(export, "load_runner", runner_keeping(worst))
    with pytest.raises(ExportError, match="disagrees"):
        export_policy(policy, low, high, "onnx", out, "best-of-n", None, critic)
