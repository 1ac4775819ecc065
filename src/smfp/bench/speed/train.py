"""``smfp bench train``: training throughput, environment steps per second with one update each.

Every run does exactly what ``smfp train`` does per step once learning has started: act with the
policy (one sample), step the real environment, add the transition to the replay buffer, sample
a batch and run one ``Learner.update``. The first ``warmup`` steps (uniform random actions, no
updates, as before ``--learning-starts``) fill the buffer and are not timed; the next ``steps``
steps are.

With ``compare_sb3`` Stable-Baselines3's SAC runs the same protocol with the same
hyperparameters (network widths, batch size, learning rates, gamma, tau, ``train_freq=1``,
``gradient_steps`` = updates per step, ``learning_starts`` = warmup, the same torch thread
count); a callback notes the time when its learning starts.

Candidates are run round-robin (a, b, c, a, b, c, ...) so that a change in machine load hits
them alike; the report gives the median of each candidate's runs and the ratios of medians.
Each run also records the process CPU time, whose rate (``cpu_steps_per_s``) is much less
sensitive to other processes sharing the cores than the wall-clock rate.

A candidate is an algorithm name, optionally followed by ``:field=value`` overrides of
``TrainConfig`` leaf fields, e.g. ``smfp:precision=bf16:components=4``; its name in the report
is the spec as given.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import statistics
import sys
import time
import typing
from concurrent.futures import ProcessPoolExecutor
from typing import Optional, TextIO

import numpy as np
import torch

from smfp.bench.sb3_reference import sb3_available, sb3_sac_kwargs
from smfp.config import ALGOS, ConfigError, TrainConfig, leaf_fields, set_leaf
from smfp.envs import quiet_native_stderr
from smfp.precision import cpu_flags, native_bf16
from smfp.provenance import machine

SB3_NAME = "sb3-sac"


# --- candidate specs ----------------------------------------------------------------------
def _leaf_types() -> dict[str, tuple[tuple[str, ...], typing.Any]]:
    """Leaf field name -> (path, type) for every ``TrainConfig`` field (names are unique)."""
    return {f.name: (path, tp) for path, f, tp in leaf_fields()}


def _parse_value(text: str, tp, name: str):
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin is typing.Union and len(args) == 1:
        if text.lower() == "none":
            return None
        return _parse_value(text, args[0], name)
    if origin is typing.Literal:
        if text not in typing.get_args(tp):
            raise ConfigError(f"candidate option {name}={text!r}: choose one of {', '.join(map(str, typing.get_args(tp)))}")
        return text
    if origin is tuple:
        return tuple(_parse_value(t, args[0], name) for t in text.replace("/", ",").split(",") if t)
    if tp is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"candidate option {name}={text!r} is not a boolean")
    try:
        return tp(text) if tp in (int, float, str) else text
    except ValueError:
        raise ConfigError(f"candidate option {name}={text!r} is not a valid {tp.__name__}") from None


def candidate_config(spec: str, env: str, seed: int, steps: int, warmup: int,
                     base: Optional[TrainConfig] = None) -> TrainConfig:
    """The resolved ``TrainConfig`` of one run of candidate ``spec`` (e.g. ``smfp:components=4``)."""
    algo, *options = spec.split(":")
    if algo not in ALGOS:
        raise ConfigError(f"unknown algorithm {algo!r} in --algos; choose from {', '.join(ALGOS)}")
    cfg = base if base is not None else TrainConfig()
    cfg = dataclasses.replace(cfg, algo=algo, seed=seed, total_steps=warmup + steps, run_dir="unused")
    cfg = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, env=env),
                              update=dataclasses.replace(cfg.update, learning_starts=warmup))
    leaves = _leaf_types()
    for opt in options:
        name, sep, text = opt.partition("=")
        name = name.replace("-", "_")
        if not sep or name not in leaves or name in ("algo", "env", "seed", "total_steps", "run_dir", "resume"):
            raise ConfigError(f"bad candidate option {opt!r} in {spec!r}; use ALGO:FIELD=VALUE with a train option")
        path, tp = leaves[name]
        cfg = set_leaf(cfg, path, _parse_value(text, tp, name))
    return cfg.resolved()


# --- one timed run ------------------------------------------------------------------------
def _rates(steps: int, wall: float, cpu: float, updates: int) -> dict:
    return {"steps_per_s": steps / max(wall, 1e-9), "cpu_steps_per_s": steps / max(cpu, 1e-9),
            "seconds": wall, "cpu_seconds": cpu, "updates": int(updates)}


def time_smfp_run(cfg: TrainConfig, steps: int, warmup: int) -> dict:
    """Run ``warmup`` untimed random steps then ``steps`` timed training steps of ``cfg``.

    The per-step work is the training loop's own (``training.collect.Collector.step`` and
    ``Learner.update``), without logging, evaluation and checkpoints, which happen at fixed intervals there.
    """
    from smfp.buffer import ReplayBuffer
    from smfp.envs import env_dims, make_env
    from smfp.training.collect import Collector
    from smfp.update import Learner

    torch.set_num_threads(cfg.threads)
    with quiet_native_stderr():
        env = make_env(cfg.env.env, seed=cfg.seed, max_episode_steps=cfg.env.max_episode_steps)
    obs_dim, act_dim = env_dims(env)
    torch.manual_seed(cfg.seed)
    learner = Learner(cfg, obs_dim, act_dim)
    buffer = ReplayBuffer(obs_dim, act_dim, min(cfg.buffer.buffer_size, warmup + steps), seed=cfg.seed)
    collector = Collector(env, buffer, learner.policy, np.random.default_rng(cfg.seed), learning_starts=warmup)
    collector.reset(seed=cfg.seed)
    batch_size, updates = cfg.update.batch_size, cfg.update.updates_per_step
    for step in range(warmup):
        collector.step(step)
    in_updates = in_updates_cpu = 0.0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for step in range(warmup, warmup + steps):  # what smfp train does per step once learning has started
        collector.step(step)
        for _ in range(updates):
            batch = buffer.sample(batch_size)
            t0, c0 = time.perf_counter(), time.process_time()
            learner.update(batch)
            in_updates += time.perf_counter() - t0
            in_updates_cpu += time.process_time() - c0
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    env.close()
    # the step without its updates: acting, the environment, storing, sampling the batches
    return {**_rates(steps, wall, cpu, learner.updates), "rest_of_step_ms": 1e3 * (wall - in_updates) / steps,
            "rest_of_step_cpu_ms": 1e3 * (cpu - in_updates_cpu) / steps}


def time_sb3_run(cfg: TrainConfig, steps: int, warmup: int) -> dict:
    """Stable-Baselines3 SAC with ``cfg``'s hyperparameters, timed from the step learning starts."""
    import gymnasium as gym
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.callbacks import BaseCallback

    class Clock(BaseCallback):
        def __init__(self):
            super().__init__()
            self.wall0 = self.cpu0 = None

        def _start(self):
            self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

        def _on_training_start(self) -> None:
            if warmup == 0:
                self._start()

        def _on_step(self) -> bool:
            if self.num_timesteps == warmup:  # the last random step; updates start after the next one
                self._start()
            return True


    torch.set_num_threads(cfg.threads)
    with quiet_native_stderr():
        env = gym.make(cfg.env.env, max_episode_steps=cfg.env.max_episode_steps)
    model = SAC("MlpPolicy", env, **sb3_sac_kwargs(cfg, buffer_size=min(cfg.buffer.buffer_size, warmup + steps),
                                                   learning_starts=warmup))
    model.set_logger(Logger(None, []))  # SB3's own default makes an empty folder in /tmp each run
    clock = Clock()
    model.learn(total_timesteps=warmup + steps, callback=clock, progress_bar=False)
    wall, cpu = time.perf_counter() - clock.wall0, time.process_time() - clock.cpu0
    env.close()
    return _rates(steps, wall, cpu, model._n_updates)


def _one_run(kind: str, cfg: dict, steps: int, warmup: int) -> dict:
    """Entry point of an isolated run (picklable: a config dict in, a result dict out)."""
    config = TrainConfig.from_dict(cfg)
    return (time_sb3_run if kind == SB3_NAME else time_smfp_run)(config, steps, warmup)


def _run(kind: str, cfg: TrainConfig, steps: int, warmup: int, isolate: bool) -> dict:
    if not isolate:
        return _one_run(kind, cfg.to_dict(), steps, warmup)
    # A fresh interpreter per run: no allocator state, caches or settings leak between candidates.
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_one_run, kind, cfg.to_dict(), steps, warmup).result()


# --- the benchmark ------------------------------------------------------------------------
def machine_info(threads: int) -> dict:
    """``smfp.provenance.machine()`` (the CPU, the ISA PyTorch dispatches to, library versions) plus bfloat16 support
    and the torch threads each timed run uses."""
    flags = cpu_flags()  # smfp.precision's reading of /proc/cpuinfo
    info = {**machine(), "threads": threads, "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "native_bf16": native_bf16()}
    try:
        info["load_avg_1min_start"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def _ratio(a: float, b: float) -> Optional[float]:
    return a / b if b > 0 else None


def ceiling_over(reference_step_ms: float, rest_of_step_ms: float, floor_ms: float) -> dict:
    """The most a candidate could gain on this machine without doing fewer products: its step with the update at
    its matmul floor and the rest of the step (acting, the environment, storing, sampling) as measured in its
    runs, against a reference step (Stable-Baselines3's, whole)."""
    return {"rest_of_step_ms": rest_of_step_ms, "step_at_floor_ms": floor_ms + rest_of_step_ms,
            "at_most": reference_step_ms / (floor_ms + rest_of_step_ms)}


def run_train_bench(env: str = "HalfCheetah-v5", algos: typing.Sequence[str] = ("sac", "smfp"), steps: int = 1000,
                    repeats: int = 3, compare_sb3: bool = False, warmup: int = 1000,
                    overrides: Optional[TrainConfig] = None, log: Optional[TextIO] = sys.stderr,
                    isolate: bool = True, floor: bool = True) -> dict:
    """Time each candidate ``repeats`` times, round-robin; return the report (see the module doc).

    ``overrides`` supplies every other training option (threads, widths, batch size, M, ...);
    its ``env``, ``algo``, ``seed``, ``total_steps`` and ``learning_starts`` are set here.
    One progress line per run goes to ``log`` (None: silent); ``format_table(report)`` renders the result.
    ``isolate``: each run in a fresh process (default), so no run inherits another's heap,
    caches or process-wide settings. ``floor``: also measure each candidate's update time against the
    matmuls it dispatches, timed alone (``bench.speed.floor``).
    """
    if steps <= 0:
        raise ConfigError(f"--steps must be positive, got {steps}")
    if repeats <= 0:
        raise ConfigError(f"--repeats must be positive, got {repeats}")
    if warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {warmup}")
    specs = list(dict.fromkeys(algos))
    if not specs and not compare_sb3:
        raise ConfigError("nothing to time: give --algos and/or --compare-sb3")
    if compare_sb3 and not sb3_available():
        raise ConfigError("--compare-sb3 needs Stable-Baselines3; install it with pip install -e '.[bench]'")
    base = overrides if overrides is not None else TrainConfig()
    # Check every candidate (and the environment) before the first timed run.
    for spec in specs:
        candidate_config(spec, env, 0, steps, warmup, base)
    from smfp.envs import make_env
    with quiet_native_stderr():
        make_env(env, seed=0).close()
    sb3_cfg = candidate_config("sac", env, 0, steps, warmup, base) if compare_sb3 else None

    names = specs + ([SB3_NAME] if compare_sb3 else [])
    runs: dict[str, list[dict]] = {n: [] for n in names}
    machine = machine_info(base.threads)
    total = len(names) * repeats
    for r in range(repeats):
        for name in names:
            if name == SB3_NAME:
                result = _run(SB3_NAME, dataclasses.replace(sb3_cfg, seed=r), steps, warmup, isolate)
            else:
                result = _run("smfp", candidate_config(name, env, r, steps, warmup, base), steps, warmup, isolate)
            result["seed"] = r
            runs[name].append(result)
            if log is not None:
                done = r * len(names) + names.index(name) + 1
                print(f"smfp bench: run {done}/{total}: {name} seed {r}: {result['steps_per_s']:.1f} steps/s "
                      f"({result['cpu_steps_per_s']:.1f} per CPU-second)", file=log, flush=True)
    try:
        machine["load_avg_1min_end"] = os.getloadavg()[0]
    except OSError:
        pass

    results = []
    for name in names:
        precision = "fp32" if name == SB3_NAME else candidate_config(name, env, 0, steps, warmup, base).update.precision
        results.append({"name": name, "precision": precision,  # what ran (auto resolved)
                        "steps_per_s": statistics.median(x["steps_per_s"] for x in runs[name]),
                        "cpu_steps_per_s": statistics.median(x["cpu_steps_per_s"] for x in runs[name]),
                        "runs": runs[name]})
        if name != SB3_NAME and floor:  # the update's time against the GEMMs it must run (bench/speed/floor.py)
            from smfp.bench.speed.floor import update_floor
            from smfp.envs import env_dims, make_env

            with quiet_native_stderr():
                probe_env = make_env(env, seed=0)
            dims = env_dims(probe_env)
            probe_env.close()
            results[-1]["floor"] = update_floor(candidate_config(name, env, 0, steps, warmup, base), *dims)
    med = {x["name"]: x["steps_per_s"] for x in results}
    cpu_med = {x["name"]: x["cpu_steps_per_s"] for x in results}
    if compare_sb3:
        for x in results:
            if x.get("floor"):  # on the floor's clock: CPU time with one thread (load-independent), else wall-clock
                cpu_clock = x["floor"]["clock"] == "thread CPU time"
                rest = statistics.median(r["rest_of_step_cpu_ms" if cpu_clock else "rest_of_step_ms"] for r in x["runs"])
                sb3_step = 1e3 / (cpu_med if cpu_clock else med)[SB3_NAME]
                x["floor"]["ceiling_vs_sb3"] = ceiling_over(sb3_step, rest, x["floor"]["matmul_floor_ms"])
    ratios, cpu_ratios = {}, {}
    pairs = [(a, SB3_NAME) for a in specs if compare_sb3] + [(a, "sac") for a in specs if "sac" in specs and a != "sac"]
    for a in specs:  # also against SAC with the same options, e.g. smfp:precision=bf16 / sac:precision=bf16
        algo, _, options = a.partition(":")
        twin = f"sac:{options}"
        if algo != "sac" and options and twin in specs:
            pairs.append((a, twin))
    for a, b in pairs:
        ratios[f"{a} / {b}"] = _ratio(med[a], med[b])
        cpu_ratios[f"{a} / {b}"] = _ratio(cpu_med[a], cpu_med[b])
    report = {
        "env": env, "results": results, "ratios": ratios, "cpu_ratios": cpu_ratios,
        "settings": {"steps": steps, "warmup": warmup, "repeats": repeats, "threads": base.threads,
                     "batch_size": base.update.batch_size, "updates_per_step": base.update.updates_per_step,
                     "hidden": list(base.policy.hidden), "critic_hidden": list(base.critic.critic_hidden),
                     "order": "round-robin", "isolated_processes": isolate},
        "machine": machine,
    }
    return report


def format_table(report: dict) -> str:
    s = report["settings"]
    w = max([9] + [len(x["name"]) for x in report["results"]])
    lines = [f"{report['env']}: {s['steps']} timed steps (1 env step + {s['updates_per_step']} update each) after "
             f"{s['warmup']} random steps; {s['repeats']} round-robin runs per candidate; {s['threads']} torch thread(s)",
             f"{'candidate':<{w}} {'precision':>9} {'steps/s median':>15} {'per CPU-s':>10}   runs (steps/s)"]
    for x in report["results"]:
        runs = " ".join(f"{r['steps_per_s']:.1f}" for r in x["runs"])
        lines.append(f"{x['name']:<{w}} {x.get('precision', '?'):>9} {x['steps_per_s']:>15.1f} "
                     f"{x['cpu_steps_per_s']:>10.1f}   {runs}")
    wr = max([10] + [len(k) for k in report["ratios"]])
    for key, value in report["ratios"].items():
        cpu = report["cpu_ratios"].get(key)
        lines.append(f"ratio {key:<{wr}} {value:6.2f}x  (per CPU-second {cpu:.2f}x)")
    for x in report["results"]:
        f = x.get("floor")
        if f:
            lines.append(f"{x['name']:<{w}} update {f['update_ms']:.2f} ms = {f['update_over_floor']:.2f}x its matmul "
                         f"floor ({f['matmul_floor_ms']:.2f} ms: {f['gemms_per_update']} GEMMs timed alone; "
                         f"{f.get('clock', 'wall-clock time')})")
    for x in report["results"]:
        c = (x.get("floor") or {}).get("ceiling_vs_sb3")
        if c:
            lines.append(f"{x['name']:<{w}} with its update at the floor and the rest of its step as measured "
                         f"({c['rest_of_step_ms']:.2f} ms): at most {c['at_most']:.2f}x {SB3_NAME} on this machine")
    m = report["machine"]
    lines.append(f"machine: {m.get('cpu')} ({m.get('cpu_id', '?')}), ISA {m.get('isa')}, {m.get('cpu_count')} CPUs, "
                 f"torch {m.get('torch')}, "
                 f"load average {m.get('load_avg_1min_start', float('nan')):.2f} -> {m.get('load_avg_1min_end', float('nan')):.2f}")
    return "\n".join(lines)
