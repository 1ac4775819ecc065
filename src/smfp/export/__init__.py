"""Deployment export: a trained actor as one self-contained ONNX or TorchScript file.

``export_run(run_dir, "onnx", "actor.onnx", mode="sample")`` writes the actor of a run's latest
checkpoint (observation -> action in the task's bounds) and checks, on random observations and
noise, that the file's actions equal the library's eager ``Policy`` for the same inputs; the
largest absolute difference is returned. Noise conventions are in ``smfp.export.actor``;
docs/deployment.md shows how to use the file without importing smfp.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from smfp.export.actor import (MODES, ExportError, build_actor, default_steps, noise_shape, reference_actions,
                               reference_candidates, resolve_mode)
from smfp.export.runtime import FORMATS, export_onnx, export_torchscript, load_runner, read_meta
from smfp.policies import Policy

META_FORMAT = "smfp-actor"
META_VERSION = 1
# best-of-n: candidates whose min-Q is within this fraction (of max(1, |Q|)) of the best are a tie that float
# rounding may decide either way (ONNX Runtime and PyTorch sum in different orders).
NEAR_TIE = 1e-5


def _describe_inputs(obs_dim: int, shape: Optional[tuple[int, ...]], policy: Policy, mode: str) -> dict:
    inputs = {"obs": f"float32 (B, {obs_dim}) raw observations"}
    if shape is None:
        return inputs
    d = policy.act_dim
    heads = getattr(policy, "heads", 1) > 1
    if mode == "best-of-n":
        inputs["noise"] = (f"float32 (B, N, {d + 1}) standard normal, N candidates per state (N free): [..., :{d}] = z, "
                           f"[..., {d}] = the head's number" if heads else
                           f"float32 (B, N, {d}) standard normal, N candidate noises z per state (N free)")
    elif policy.is_mixture and heads:
        inputs["noise"] = (f"float32 (B, {2 * d + 1}) standard normal: [:, :{d}] = z (generator), [:, {d}:{2 * d}] = xi "
                           f"(output), [:, {2 * d}] = the head's number (inverse CDF of p(c|s) at Phi of it)")
    elif policy.is_mixture:
        inputs["noise"] = f"float32 (B, {2 * d}) standard normal: [:, :{d}] = z (generator), [:, {d}:] = xi (output)"
    else:
        inputs["noise"] = f"float32 (B, {d}) standard normal output noise xi"
    return inputs


def export_policy(policy: Policy, low, high, fmt: str, out: str | Path, mode: str = "auto",
                  steps: Optional[int] = None, critic: Optional[nn.Module] = None, num_candidates: int = 16,
                  extra_meta: Optional[dict] = None, verify_batch: int = 64, seed: int = 0) -> dict:
    """Export ``policy``'s actor to ``out`` and verify it; returns a summary with ``max_abs_error``."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    mode = resolve_mode(policy, mode)
    steps = default_steps(policy) if steps is None else int(steps)
    if policy.kind == "gaussian" and steps != 1:
        raise ExportError("--steps applies to smfp and flow policies only")
    actor = build_actor(policy, low, high, mode, steps, critic)
    shape = noise_shape(policy, mode, num_candidates)
    low = np.asarray(low, dtype=np.float64)
    high = np.asarray(high, dtype=np.float64)
    meta = {"format": META_FORMAT, "version": META_VERSION, "policy": policy.kind, "mode": mode,
            "steps": steps, "obs_dim": policy.obs_dim, "act_dim": policy.act_dim,
            "inputs": _describe_inputs(policy.obs_dim, shape, policy, mode),
            "output": f"float32 (B, {policy.act_dim}) action in [action_low, action_high]",
            "noise_shape": list(shape) if shape is not None else None,
            "action_low": low.tolist(), "action_high": high.tolist(), **(extra_meta or {})}
    out = Path(out)
    try:
        if fmt == "onnx":
            export_onnx(actor, out, policy.obs_dim, shape, meta)
        else:
            export_torchscript(actor, out, meta)
    except OSError as exc:
        raise ExportError(f"cannot write {out}: {exc.strerror or exc}") from None

    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(verify_batch, policy.obs_dim, generator=gen)
    noise = None if shape is None else torch.randn(verify_batch, *shape, generator=gen)
    expected = reference_actions(policy, low, high, mode, obs, noise, steps, critic).numpy()
    arrays = [obs.numpy()] + ([] if noise is None else [noise.numpy()])
    got = load_runner(out, fmt)(*arrays)
    if got.shape != expected.shape:
        raise ExportError(f"exported actor returned shape {got.shape}, expected {expected.shape}")
    scale = float(max(1.0, np.max(high - low) / 2.0))
    tol = 1e-4 * scale
    row_err = np.abs(got - expected).max(axis=1)
    near_ties = 0
    if mode == "best-of-n" and noise is not None and noise.ndim == 3 and (row_err > tol).any():
        # Two candidates whose min-Q agree to float rounding are equally good; the file and the eager policy may
        # round them apart and keep different ones. Such a row agrees if the file's action is one of them.
        cands, q = (t.detach().numpy() for t in reference_candidates(policy, low, high, obs, noise, steps, critic))
        for r in np.flatnonzero(row_err > tol):
            best = q[r].max()
            tied = q[r] >= best - NEAR_TIE * max(1.0, abs(best))
            nearest = float(np.abs(cands[r][tied] - got[r]).max(axis=1).min())
            if tied.sum() > 1 and nearest <= tol:
                row_err[r], near_ties = nearest, near_ties + 1
    err = float(row_err.max())
    summary = {"path": str(out), "format": fmt, "policy": policy.kind, "mode": mode, "steps": steps,
               "inputs": meta["inputs"], "output": meta["output"], "max_abs_error": err, "tolerance": tol,
               "verified_on": verify_batch, "near_ties": near_ties}
    if not err <= tol:
        raise ExportError(f"exported actor {out} disagrees with the eager policy: max abs error {err:.3g} "
                          f"> {tol:.3g} on {verify_batch} observations")
    return summary


def export_run(target: str | Path, fmt: str, out: str | Path, mode: str = "auto",
               steps: Optional[int] = None) -> dict:
    """Export the actor of a run dir's latest checkpoint (or a checkpoint file)."""
    from smfp.agent import load_agent

    agent = load_agent(target)
    policy = agent.policy.eval()
    return export_policy(policy, agent.action_low, agent.action_high, fmt, out, mode, steps, agent.critic,
                         agent.best_of_n, extra_meta={"env_id": agent.env_id, "checkpoint_step": agent.step})


__all__ = ["FORMATS", "MODES", "ExportError", "build_actor", "export_policy", "export_run", "load_runner",
           "noise_shape", "read_meta", "reference_actions"]
