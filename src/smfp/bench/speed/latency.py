"""``smfp bench latency``: the cost of one action selection, one-step vs multi-step generation.

What is timed is a full action selection as a controller runs it: a float32 numpy observation
batch in, the noise drawn, the actor evaluated, the action rescaled to the task's bounds and
returned as numpy. The actors are the deployable modules of ``smfp.export`` (the same
computation in every backend): eager PyTorch, TorchScript (scripted + frozen, loaded back from
its file) and ONNX Runtime (from its file).

Method: every candidate (policy x steps x mode x backend) is warmed up, then all candidates are
run in interleaved rounds, in a shuffled order each round, each for a short block of calls, so
that a busy machine's slow spells are shared by all candidates; every call is timed on its own
and medians and 90th percentiles are reported in microseconds, with ratios to the one-step SMFP
actor of the same backend and batch.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from smfp.config import ConfigError, CriticConfig, PolicyConfig
from smfp.critic import QEnsemble
from smfp.export.actor import build_actor, noise_shape
from smfp.export.runtime import export_onnx, export_torchscript
from smfp.policies import build_policy
from smfp.provenance import machine

BACKENDS = ("eager", "onnx", "torchscript")
SMFP_STEPS = (1, 2, 4)
FLOW_STEPS = (10, 20, 50)


def machine_description(threads: int) -> dict:
    """``smfp.provenance.machine()`` plus what a latency figure also depends on: the cores this process may use,
    onnxruntime's version, the torch threads and the load."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return {**machine(), "logical_cores": os.cpu_count(), "usable_cores": usable, "platform": platform.platform(),
            "onnxruntime": ort_version, "threads": threads,
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def parse_batches(text: str) -> list[int]:
    try:
        batches = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--batch expects comma-separated positive integers, got {text!r}") from None
    if not batches or any(b <= 0 for b in batches):
        raise ConfigError(f"--batch expects comma-separated positive integers, got {text!r}")
    return batches


def _policies(obs_dim: int, act_dim: int, run: Optional[str], pcfg: PolicyConfig, ccfg: CriticConfig,
              seed: int) -> tuple[dict, QEnsemble, np.ndarray, np.ndarray, Optional[str], int]:
    """Networks to time: the run's trained actor for its own class, untrained ones of the same size otherwise."""
    torch.manual_seed(seed)
    trained_kind, best_of_n = None, 16
    low, high = -np.ones(act_dim), np.ones(act_dim)
    critic = None
    trained = None
    if run is not None:
        from smfp.agent import load_agent

        agent = load_agent(run)
        trained, critic = agent.policy, agent.critic
        trained_kind, best_of_n = trained.kind, agent.best_of_n
        obs_dim, act_dim = trained.obs_dim, trained.act_dim
        low, high = agent.action_low, agent.action_high
        pcfg = PolicyConfig(hidden=tuple(trained.hidden),
                            sigma_hidden=tuple(getattr(trained, "sigma_hidden", pcfg.sigma_hidden)))
    common = dict(obs_dim=obs_dim, act_dim=act_dim, hidden=pcfg.hidden, log_std_min=pcfg.log_std_min,
                  log_std_max=pcfg.log_std_max)
    policies = {
        "gaussian": build_policy("gaussian", **common),
        "smfp": build_policy("smfp", sigma_hidden=pcfg.sigma_hidden, **common),
        "flow": build_policy("flow", sigma_hidden=pcfg.sigma_hidden, steps=20, **common),
    }
    if trained is not None:
        policies[trained_kind] = trained
    if critic is None:
        critic = QEnsemble(obs_dim, act_dim, ccfg.critic_hidden, ccfg.num_q)
    for p in policies.values():
        p.eval()
    return policies, critic.eval(), np.asarray(low), np.asarray(high), trained_kind, best_of_n


def _candidates() -> list[tuple[str, int, str]]:
    cands = [("gaussian", 1, "sample")]
    cands += [("smfp", k, "sample") for k in SMFP_STEPS]
    cands += [("flow", k, "sample") for k in FLOW_STEPS]
    cands += [("smfp", 1, "best-of-n")]
    return cands


def _eager_fn(actor, shape, obs: np.ndarray) -> Callable[[], np.ndarray]:
    b = obs.shape[0]
    if shape is None:
        return lambda: actor(torch.from_numpy(obs)).numpy()
    size = (b, *shape)
    return lambda: actor(torch.from_numpy(obs), torch.randn(size)).numpy()


def _torchscript_fn(module, shape, obs: np.ndarray) -> Callable[[], np.ndarray]:
    return _eager_fn(module, shape, obs)


def _onnx_fn(sess, shape, obs: np.ndarray, rng: np.random.Generator) -> Callable[[], np.ndarray]:
    b = obs.shape[0]
    if shape is None:
        return lambda: sess.run(None, {"obs": obs})[0]
    size = (b, *shape)
    return lambda: sess.run(None, {"obs": obs, "noise": rng.standard_normal(size, dtype=np.float32)})[0]


CLOCKS = {"wall": time.perf_counter_ns, "cpu": time.thread_time_ns}


def _call_floors(obs_dim: int, backends: tuple[str, ...], tmp: Path, threads: int, clock: str) -> dict:
    """Time of a call that does no arithmetic (numpy in, numpy out) in each backend: the fixed cost."""
    floors: dict[str, float] = {}
    obs = np.zeros((1, obs_dim), dtype=np.float32)

    class Identity(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 0.0

    fns = {}
    if "eager" in backends:
        ident = Identity()
        fns["eager"] = lambda: ident(torch.from_numpy(obs)).numpy()
    if "torchscript" in backends:
        scripted = torch.jit.freeze(torch.jit.script(Identity()).eval())
        fns["torchscript"] = lambda: scripted(torch.from_numpy(obs)).numpy()
    if "onnx" in backends:
        from smfp.export.runtime import onnx_session

        path = tmp / "identity.onnx"
        export_onnx(Identity(), path, obs_dim, None, {})
        sess = onnx_session(path, threads)
        fns["onnx"] = lambda: sess.run(None, {"obs": obs})[0]
    for name, fn in fns.items():
        for _ in range(200):
            fn()
        times, now = [], CLOCKS[clock]
        for _ in range(2000):
            t0 = now()
            fn()
            times.append(now() - t0)
        floors[name] = round(float(np.median(times)) / 1e3, 2)
    return floors


def run_latency_bench(obs_dim: int = 17, act_dim: int = 6, batches: tuple[int, ...] = (1, 32, 1024),
                      run: Optional[str] = None, backends: tuple[str, ...] = BACKENDS, seconds: float = 6.0,
                      max_rounds: int = 200, min_rounds: int = 5, warmup_s: float = 0.05, block_s: float = 0.005,
                      threads: int = 1, seed: int = 0, clock: str = "wall", best_of_n: Optional[int] = None,
                      policy_cfg: Optional[PolicyConfig] = None, critic_cfg: Optional[CriticConfig] = None,
                      log: Callable[[str], None] = lambda s: None) -> dict:
    """Time every candidate in every backend at every batch size; returns the JSON-ready report."""
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise ConfigError(f"unknown backend(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(BACKENDS)}")
    if obs_dim <= 0 or act_dim <= 0:
        raise ConfigError("--obs-dim and --act-dim must be positive")
    if "onnx" in backends:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            log("smfp: onnx/onnxruntime not installed (pip install 'smfp[export]'); skipping the onnx backend")
            backends = tuple(b for b in backends if b != "onnx")
    if clock not in CLOCKS:
        raise ConfigError(f"unknown --clock {clock!r}; choose wall or cpu")
    torch.set_num_threads(threads)
    pcfg, ccfg = policy_cfg or PolicyConfig(), critic_cfg or CriticConfig()
    policies, critic, low, high, trained_kind, run_n = _policies(obs_dim, act_dim, run, pcfg, ccfg, seed)
    n_best = best_of_n or run_n
    obs_dim, act_dim = policies["smfp"].obs_dim, policies["smfp"].act_dim
    machine = machine_description(threads)
    rng = np.random.default_rng(seed)
    cands = _candidates()
    report_results: list[dict] = []

    with tempfile.TemporaryDirectory(prefix="smfp-latency-") as tmpdir, torch.inference_mode():
        tmp = Path(tmpdir)
        actors = {}
        for i, (kind, steps, mode) in enumerate(cands):
            pol = policies[kind]
            actor = build_actor(pol, low, high, mode, steps, critic)
            shape = noise_shape(pol, mode, n_best)
            entry = {"eager": actor, "shape": shape}
            if "torchscript" in backends:
                path = export_torchscript(actor, tmp / f"c{i}.pt", {})
                entry["torchscript"] = torch.jit.load(str(path))
            if "onnx" in backends:
                from smfp.export.runtime import onnx_session

                path = export_onnx(actor, tmp / f"c{i}.onnx", obs_dim, shape, {})
                entry["onnx"] = onnx_session(path, threads)
            actors[(kind, steps, mode)] = entry
        log(f"smfp: built {len(cands)} actors x {len(backends)} backends; timing batches {list(batches)}")
        floors = _call_floors(obs_dim, backends, tmp, threads, clock)
        now = CLOCKS[clock]

        for batch in batches:
            obs = rng.standard_normal((batch, obs_dim)).astype(np.float32)
            fns: dict[tuple, Callable[[], np.ndarray]] = {}
            for key, entry in actors.items():
                for backend in backends:
                    if backend == "eager":
                        fns[(*key, backend)] = _eager_fn(entry["eager"], entry["shape"], obs)
                    elif backend == "torchscript":
                        fns[(*key, backend)] = _torchscript_fn(entry["torchscript"], entry["shape"], obs)
                    else:
                        fns[(*key, backend)] = _onnx_fn(entry["onnx"], entry["shape"], obs, rng)
            block: dict[tuple, int] = {}
            for key, fn in fns.items():  # warm-up (first calls compile/optimise), then size each block of calls
                calls, t0 = 0, time.perf_counter()
                while calls < 5 or (time.perf_counter() - t0 < warmup_s and calls < 1000):
                    fn()
                    calls += 1
                probe = []
                for _ in range(5):
                    t1 = time.perf_counter()
                    fn()
                    probe.append(time.perf_counter() - t1)
                block[key] = int(min(100, max(1, math.ceil(block_s / float(np.median(probe))))))
            samples: dict[tuple, list[int]] = {key: [] for key in fns}
            order = list(fns)
            start, rounds = time.perf_counter(), 0
            while rounds < max_rounds and (rounds < min_rounds or time.perf_counter() - start < seconds):
                rng.shuffle(order)
                for key in order:
                    fn, out = fns[key], samples[key]
                    for _ in range(block[key]):
                        t0 = now()
                        fn()
                        out.append(now() - t0)
                rounds += 1
            log(f"smfp: batch {batch}: {rounds} rounds in {time.perf_counter() - start:.1f} s")
            for (kind, steps, mode, backend), times in samples.items():
                arr = np.asarray(times, dtype=np.float64) / 1e3
                report_results.append({"policy": kind, "steps": steps, "mode": mode, "backend": backend,
                                       "batch": batch, "median_us": round(float(np.median(arr)), 2),
                                       "p90_us": round(float(np.percentile(arr, 90)), 2)})

    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    ratios = _ratios(report_results)
    return {"obs_dim": obs_dim, "act_dim": act_dim, "batches": list(batches), "backends": list(backends),
            "hidden": list(policies["smfp"].hidden), "sigma_hidden": list(policies["smfp"].sigma_hidden),
            "critic_hidden": list(critic.hidden), "num_q": critic.num_q, "best_of_n": n_best,
            "trained_policy": trained_kind, "run": run, "machine": machine, "call_floor_us": floors,
            "settings": {"clock": clock, "seconds_per_batch": seconds, "min_rounds": min_rounds,
                         "max_rounds": max_rounds,
                         "block_s": block_s, "warmup_s": warmup_s, "seed": seed},
            "results": report_results, "ratios_to_smfp1": ratios, "targets": _targets(report_results)}


def _lookup(results: list[dict]) -> dict[tuple, dict]:
    return {(r["policy"], r["steps"], r["mode"], r["backend"], r["batch"]): r for r in results}


def _ratios(results: list[dict]) -> list[dict]:
    table = _lookup(results)
    out = []
    for r in results:
        ref = table.get(("smfp", 1, "sample", r["backend"], r["batch"]))
        if ref is None:
            continue
        out.append({k: r[k] for k in ("policy", "steps", "mode", "backend", "batch")}
                   | {"ratio": round(r["median_us"] / ref["median_us"], 3)})
    return out


def _targets(results: list[dict]) -> dict:
    """The issue's batch-1 targets, as measured ratios (None where a figure is missing)."""
    t = _lookup(results)

    def med(policy, steps, mode, backend):
        r = t.get((policy, steps, mode, backend, 1))
        return r["median_us"] if r else None

    def ratio(a, b):
        return round(a / b, 3) if a is not None and b is not None else None

    smfp1 = med("smfp", 1, "sample", "eager")
    exported = [m for m in (med("smfp", 1, "sample", "onnx"), med("smfp", 1, "sample", "torchscript")) if m]
    return {
        "eager_smfp1_over_gaussian": ratio(smfp1, med("gaussian", 1, "sample", "eager")),
        "eager_flow20_over_smfp1": ratio(med("flow", 20, "sample", "eager"), smfp1),
        "eager_flow50_over_smfp1": ratio(med("flow", 50, "sample", "eager"), smfp1),
        "eager_smfp1_over_best_exported_smfp1": ratio(smfp1, min(exported) if exported else None),
        "goals": {"eager_smfp1_over_gaussian": "<= 1.25", "eager_flow20_over_smfp1": ">= 15",
                  "eager_flow50_over_smfp1": ">= 35", "eager_smfp1_over_best_exported_smfp1": ">= 2"},
    }


def format_table(report: dict) -> str:
    m = report["machine"]
    backends = report["backends"]
    lines = [f"latency of one action selection (numpy obs in -> noise -> actor -> bounded numpy action out); "
             f"median / p90 in us ({report['settings']['clock']} clock), (x) = median / smfp-1 of the same "
             f"backend and batch",
             f"machine: {m['cpu']} ({m.get('cpu_id', '?')}, ISA {m.get('isa', '?')}), {m['usable_cores']} usable cores, torch {m['torch']}, onnxruntime "
             f"{m['onnxruntime']}, {m['threads']} thread(s), load average {m['load_average']} -> "
             f"{m['load_average_end']}",
             f"actor: obs {report['obs_dim']}, act {report['act_dim']}, hidden {report['hidden']}, sigma "
             f"{report['sigma_hidden']}, best-of-n N = {report['best_of_n']} with critic {report['critic_hidden']}"
             f" x{report['num_q']}" + (f"; trained {report['trained_policy']} from {report['run']}"
                                       if report["trained_policy"] else "; untrained networks"),
             "call floor (no arithmetic): " + ", ".join(f"{k} {v} us" for k, v in report["call_floor_us"].items())]
    ratio = {(r["policy"], r["steps"], r["mode"], r["backend"], r["batch"]): r["ratio"]
             for r in report["ratios_to_smfp1"]}
    rows = _lookup(report["results"])
    for batch in report["batches"]:
        lines.append("")
        lines.append(f"batch {batch}")
        lines.append(f"{'policy':<9} {'steps':>5} {'mode':<10}" + "".join(f" {b:>27}" for b in backends))
        seen = []
        for r in report["results"]:
            key = (r["policy"], r["steps"], r["mode"])
            if r["batch"] != batch or key in seen:
                continue
            seen.append(key)
            cells = ""
            for b in backends:
                x = rows.get((*key, b, batch))
                if x is None:
                    cells += f" {'-':>27}"
                    continue
                rt = ratio.get((*key, b, batch))
                cells += f" {x['median_us']:>10.1f} /{x['p90_us']:>9.1f} ({rt:>5.2f}x)" if rt is not None else \
                    f" {x['median_us']:>10.1f} /{x['p90_us']:>9.1f}        "
            lines.append(f"{key[0]:<9} {key[1]:>5} {key[2]:<10}{cells}")
    tg = report["targets"]
    if tg.get("eager_smfp1_over_gaussian") is not None:
        lines.append("")
        lines.append("batch-1 targets: " + "; ".join(f"{k} = {tg[k]} (goal {g})" for k, g in tg["goals"].items()))
    return "\n".join(lines)


def main_latency(args) -> int:
    """CLI entry (``smfp bench latency``)."""
    if args.run is not None and (args.obs_dim is not None or args.act_dim is not None):
        raise ConfigError("give either --run RUN_DIR or --obs-dim/--act-dim, not both")
    if args.seconds <= 0:
        raise ConfigError(f"--seconds must be positive, got {args.seconds}")
    if args.threads <= 0:
        raise ConfigError(f"--threads must be positive, got {args.threads}")
    if args.best_of_n is not None and args.best_of_n <= 0:
        raise ConfigError(f"--best-of-n must be positive, got {args.best_of_n}")
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    report = run_latency_bench(obs_dim=args.obs_dim or 17, act_dim=args.act_dim or 6,
                               batches=tuple(parse_batches(args.batch)), run=args.run, backends=backends,
                               seconds=args.seconds, threads=args.threads, best_of_n=args.best_of_n,
                               min_rounds=args.min_rounds, clock=args.clock, log=lambda s: print(s, file=sys.stderr))
    print(json.dumps(report) if args.json else format_table(report))
    return 0


__all__ = ["BACKENDS", "CLOCKS", "format_table", "machine_description", "main_latency",
           "parse_batches", "run_latency_bench"]
