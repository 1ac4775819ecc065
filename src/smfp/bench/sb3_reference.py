"""``smfp bench sb3-sac``: Stable-Baselines3's SAC with our SAC's hyperparameters, evaluated like our runs.

The yardstick for ``smfp train --algo sac``: if our SAC is a correct SAC, its returns match those of
SB3's SAC trained with the same hyperparameters on the same tasks and seeds.

Hyperparameters (``sb3_sac_kwargs``, also used by ``smfp bench train --compare-sb3``): actor and
critic widths (``--hidden``, ``--critic-hidden``), ``--num-q`` critics, one learning rate
(``--actor-lr``; SB3's SAC has one rate for actor, critic and temperature, so the three must be
equal), ``--batch-size``, ``--learning-starts`` (uniform random actions before, updates after),
replay capacity ``min(--buffer-size, --total-steps)``, ``--gamma``, ``--tau``, target entropy
``-act_dim`` (or ``--target-entropy``), the temperature tuned from ``--alpha`` (``ent_coef =
"auto_<alpha>"``; ``--no-autotune-alpha``: fixed), ``train_freq`` 1 and ``gradient_steps`` =
``--updates-per-step``, on the CPU with ``--threads`` torch threads. Both train on the same
environment as ``smfp train`` (``smfp.envs.make_env``: actions in [-1, 1], rescaled to the task's
box), reset-seeded with ``--seed``.

What stays different (SB3's own choices, not settable): its actor has separate mean and log-std
heads with the log-std clipped to [-20, 2] (ours: one output layer, log-std squashed smoothly
into [-5, 2] by default; ``--log-std-squash clip --log-std-min -20`` gives SB3's bound, and with it a
log-std of 0 where ours starts at -1.5); its squash log-det ``log(1 - tanh(x)^2 + 1e-6)`` (ours: exact;
``--squash-log-det-eps 1e-6`` gives SB3's); its temperature loss is ``-log_alpha * (log_pi + target)`` (ours: the same
gradient, set directly); network initialisation follows PyTorch's defaults in both.

Evaluation, as ``smfp train`` evaluates: every ``--eval-every`` steps (after that step's update)
and at the last step, ``--eval-episodes`` episodes on a separate environment, episode i reset
with seed ``--seed + 10000 + i``; the deterministic policy (``tanh`` of the mean, our ``mean``
mode) gives ``eval/return_mean``, a stochastic pass ``eval/return_mean_sample``. The sampling
of that pass uses its own torch generator state, so evaluating does not change training.

Run dir (read by ``smfp aggregate`` like ours): ``config.json`` (the ``TrainConfig`` of the
matching ``smfp train --algo sac`` run, ``label`` "sb3-sac", ``eval_mode`` "mean"),
``metrics.jsonl`` (one row per evaluation), ``provenance.json`` (smfp commit, library versions)
and, once finished, ``sb3_model.zip`` (SB3's ``model.save``, without the replay buffer).

Resuming: rerunning a finished run dir (its final evaluation is logged) with the same options does
nothing. An unfinished one is not continued: it starts again from scratch (SB3 runs are short
and deterministic, so only the time is lost).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Optional, TextIO

import numpy as np
import torch

from smfp import keys as K
from smfp.config import ConfigError, TrainConfig, flatten_config
from smfp.envs import quiet_native_stderr
from smfp.storage.rundir import RunDir

SB3_LABEL = "sb3-sac"
PROVENANCE_FILE = RunDir.PROVENANCE
MODEL_FILE = "sb3_model.zip"
METRICS_FILE = RunDir.METRICS
CONFIG_FILE = RunDir.CONFIG
EVAL_SEED_OFFSET = 10_000  # as smfp.training.loop: evaluation episodes reset with seed + 10000 + i
INSTALL_HINT = "smfp bench sb3-sac needs Stable-Baselines3; install it with pip install -e '.[bench]'"

# TrainConfig fields that SB3's SAC (or this command) uses; every other one keeps its default.
OPTIONS = ("env", "max_episode_steps", "seed", "total_steps", "threads", "hidden", "critic_hidden", "num_q",
           "gamma", "tau", "batch_size", "actor_lr", "critic_lr", "alpha", "autotune_alpha", "alpha_lr",
           "target_entropy", "updates_per_step", "learning_starts", "buffer_size", "eval_every", "eval_episodes")
# Fields a rerun may change without making it another run.
_FREE = ("run_dir", "threads", "log.progress", "given")


def sb3_available() -> bool:
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        return False
    return True


def sb3_sac_kwargs(cfg: TrainConfig, buffer_size: Optional[int] = None,
                   learning_starts: Optional[int] = None) -> dict:
    """Keyword arguments of ``stable_baselines3.SAC("MlpPolicy", env, ...)`` matching ``cfg`` (see the
    module doc). Replay capacity: ``min(buffer_size, total_steps)`` as in ``smfp train`` unless given."""
    u = cfg.update
    net_arch = list(cfg.policy.hidden) if cfg.policy.hidden == cfg.critic.critic_hidden else \
        dict(pi=list(cfg.policy.hidden), qf=list(cfg.critic.critic_hidden))
    return dict(
        learning_rate=u.actor_lr,
        buffer_size=min(cfg.buffer.buffer_size, max(cfg.total_steps, 1)) if buffer_size is None else buffer_size,
        learning_starts=u.learning_starts if learning_starts is None else learning_starts,
        batch_size=u.batch_size, tau=u.tau, gamma=u.gamma, train_freq=1, gradient_steps=u.updates_per_step,
        target_update_interval=1,
        ent_coef=f"auto_{u.alpha}" if u.autotune_alpha else u.alpha,
        target_entropy="auto" if u.target_entropy is None else u.target_entropy,  # auto: -act_dim
        policy_kwargs=dict(net_arch=net_arch, n_critics=cfg.critic.num_q, activation_fn=torch.nn.ReLU),
        seed=cfg.seed, device="cpu", verbose=0)


def sb3_mismatches(cfg: TrainConfig) -> list[str]:
    """Settings of ``cfg`` that SB3's SAC cannot reproduce (empty: it matches)."""
    u, out = cfg.update, []
    if cfg.algo != "sac":
        out.append(f"--algo {cfg.algo} (SB3 reference is SAC)")
    rates = {"--critic-lr": u.critic_lr, **({"--alpha-lr": u.alpha_lr} if u.autotune_alpha else {})}
    out += [f"{name} {value:g} != --actor-lr {u.actor_lr:g} (SB3's SAC has one learning rate)"
            for name, value in rates.items() if value != u.actor_lr]
    if u.grad_clip:
        out.append("--grad-clip (SB3's SAC does not clip gradients)")
    if u.precision != "fp32":
        out.append(f"--precision {u.precision}")
    return out


def reference_config(run_dir: str | os.PathLike, base: Optional[TrainConfig] = None) -> TrainConfig:
    """The ``TrainConfig`` an sb3-sac run records: ``base``'s options, algo sac, label sb3-sac,
    eval mode ``mean`` (SB3's deterministic action), resolved and checked."""
    cfg = base if base is not None else TrainConfig()
    if cfg.update.precision == "auto":  # SB3 computes in fp32; auto (bf16 on some CPUs) is no request for bf16
        cfg = dataclasses.replace(cfg, update=dataclasses.replace(cfg.update, precision="fp32"))
    cfg = dataclasses.replace(cfg, algo="sac", label=SB3_LABEL, run_dir=str(Path(run_dir).resolve()), resume=False,
                              eval=dataclasses.replace(cfg.eval, eval_mode="mean"),
                              log=dataclasses.replace(cfg.log, progress=False, tensorboard=False))
    cfg = cfg.resolved()
    bad = sb3_mismatches(cfg)
    if bad:
        raise ConfigError(f"smfp bench sb3-sac cannot match: {'; '.join(bad)}")
    return cfg


def _final_row(run_dir: Path, total_steps: int) -> Optional[dict]:
    """The logged evaluation at ``total_steps``, if the run got there (the finished mark)."""
    from smfp.monitor.logger import read_metrics

    path = run_dir / METRICS_FILE
    if not path.exists():
        return None
    rows = [r for r in read_metrics(path) if r.get("step") == total_steps and K.EVAL_RETURN_MEAN in r]
    return rows[-1] if rows else None


def run_state(cfg: TrainConfig) -> Optional[dict]:
    """Check ``cfg.run_dir`` before anything is written: the final metrics row of a finished identical run,
    None for a new or unfinished one; ConfigError if the folder holds anything else."""
    run_dir = Path(cfg.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file; give a folder for the run")
    saved_path = run_dir / CONFIG_FILE
    if not saved_path.exists():
        if run_dir.is_dir() and any(run_dir.iterdir()):
            raise ConfigError(f"--out {run_dir} is not empty and holds no sb3-sac run; choose a new or empty folder")
        return None
    saved = RunDir(run_dir).read_config("choose another --out")
    if saved.get("label") != SB3_LABEL:
        what = saved.get("label") or saved.get("algo")
        raise ConfigError(f"--out {run_dir} holds another run ({what!r}, not {SB3_LABEL}); choose another --out")
    old = RunDir(run_dir).read_flat_config("choose another --out")
    new = flatten_config(cfg.to_dict())
    diff = sorted(k for k in set(old) & set(new) if k not in _FREE and old[k] != new[k])
    if diff:
        shown = ", ".join(f"{k} {old[k]!r} -> {new[k]!r}" for k in diff[:4]) + (" ..." if len(diff) > 4 else "")
        raise ConfigError(f"--out {run_dir} holds an sb3-sac run with other settings ({shown}); "
                          "use the same options or choose another --out")
    return _final_row(run_dir, cfg.total_steps)


def _provenance(cfg: TrainConfig) -> dict:
    import stable_baselines3

    from smfp.provenance import git_commit, machine

    kwargs = sb3_sac_kwargs(cfg)
    policy_kwargs = kwargs.pop("policy_kwargs")
    kwargs["policy_kwargs"] = {**policy_kwargs, "activation_fn": policy_kwargs["activation_fn"].__name__}
    return {"commit": git_commit(), "started": time.time(), **machine(),
            "stable_baselines3": stable_baselines3.__version__, "sb3_kwargs": kwargs}


def run_sb3_reference(cfg: TrainConfig, log: Optional[TextIO] = None) -> dict:
    """Train and evaluate SB3's SAC for ``cfg`` (from ``reference_config``) in ``cfg.run_dir``.

    Returns ``{"run_dir", "step", "return_mean", "return_mean_sample", "already_finished"}``.
    One progress line per evaluation goes to ``log`` (None: silent; the CLI gives stderr).
    """
    from smfp.envs import make_env
    from smfp.storage.atomic import atomic_write_text

    def say(text: str) -> None:
        if log is not None:
            print(text, file=log, flush=True)

    if not sb3_available():
        raise ConfigError(INSTALL_HINT)
    run_dir = Path(cfg.run_dir)
    done = run_state(cfg)
    if done is not None:
        say(f"smfp bench sb3-sac: {run_dir} is finished (step {cfg.total_steps}); nothing to do")
        return {"run_dir": str(run_dir), "step": cfg.total_steps, "return_mean": done.get(K.EVAL_RETURN_MEAN),
                "return_mean_sample": done.get(K.EVAL_RETURN_MEAN_SAMPLE), "already_finished": True}
    with quiet_native_stderr():  # MuJoCo's compiler notices; an unknown env id is still an EnvError
        env = make_env(cfg.env.env, seed=cfg.seed, max_episode_steps=cfg.env.max_episode_steps)
        eval_env = make_env(cfg.env.env, seed=cfg.seed + EVAL_SEED_OFFSET, max_episode_steps=cfg.env.max_episode_steps)
    try:
        return _train(cfg, env, eval_env, say, atomic_write_text)
    finally:
        env.close()
        eval_env.close()


def _train(cfg: TrainConfig, env, eval_env, say, atomic_write_text) -> dict:
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.callbacks import BaseCallback

    from smfp.agent import run_episodes

    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / CONFIG_FILE).exists():
        say(f"smfp bench sb3-sac: {run_dir} holds an unfinished run; starting it again from scratch")
    for name in (METRICS_FILE, MODEL_FILE, PROVENANCE_FILE):
        (run_dir / name).unlink(missing_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, json.dumps(cfg.to_dict(), indent=2) + "\n")
    atomic_write_text(run_dir / PROVENANCE_FILE, json.dumps(_provenance(cfg), indent=2) + "\n")

    torch.set_num_threads(cfg.threads)
    model = SAC("MlpPolicy", env, **sb3_sac_kwargs(cfg))
    model.set_logger(Logger(None, []))  # SB3's own default makes an empty folder in /tmp each run
    seed, episodes, every, total = cfg.seed + EVAL_SEED_OFFSET, cfg.eval.eval_episodes, cfg.eval.eval_every, \
        cfg.total_steps
    t0 = time.perf_counter()
    state = {"last": -1, "final": None}

    def returns(deterministic: bool) -> np.ndarray:
        eps = run_episodes(lambda obs: model.predict(obs, deterministic=deterministic)[0], eval_env, episodes, seed)
        return np.array([e["return"] for e in eps], dtype=np.float64)

    def evaluate(step: int) -> None:
        mean_r = returns(True)
        with torch.random.fork_rng(devices=[]):  # the stochastic pass leaves training's random stream alone
            torch.manual_seed(seed + step)
            sample_r = returns(False)
        row = {"step": int(step), K.EVAL_RETURN_MEAN: float(mean_r.mean()), K.EVAL_RETURN_STD: float(mean_r.std()),
               K.EVAL_RETURN_MEAN_SAMPLE: float(sample_r.mean()), K.EVAL_RETURN_STD_SAMPLE: float(sample_r.std()),
               K.UPDATES: int(model._n_updates)}
        if model.log_ent_coef is not None:
            row[K.ALPHA] = float(torch.exp(model.log_ent_coef.detach()).item())
        if step == total:
            model.save(run_dir / MODEL_FILE)  # before the final row, which marks the run finished
        with open(run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")
        state["last"], state["final"] = step, row
        elapsed = time.perf_counter() - t0
        say(f"smfp bench sb3-sac: {cfg.env.env} seed {cfg.seed} step {step}/{total}: return "
            f"{row[K.EVAL_RETURN_MEAN]:.1f} (mean), {row[K.EVAL_RETURN_MEAN_SAMPLE]:.1f} (sample); "
            f"{step / max(elapsed, 1e-9):.0f} steps/s, {elapsed:.0f}s")

    class Evaluator(BaseCallback):
        # At the start of a rollout the previous step's update is done: the same point as smfp train's eval.
        def _on_rollout_start(self) -> None:
            n = self.model.num_timesteps
            if every and 0 < n < total and n % every == 0 and n != state["last"]:
                evaluate(n)

        def _on_step(self) -> bool:
            return True

        def _on_training_end(self) -> None:
            if self.model.num_timesteps >= total and state["last"] != self.model.num_timesteps:
                evaluate(self.model.num_timesteps)

    model.learn(total_timesteps=total, callback=Evaluator(), progress_bar=False)
    final = state["final"] or {}
    return {"run_dir": str(run_dir), "step": int(model.num_timesteps), "return_mean": final.get(K.EVAL_RETURN_MEAN),
            "return_mean_sample": final.get(K.EVAL_RETURN_MEAN_SAMPLE), "already_finished": False}


__all__ = ["SB3_LABEL", "sb3_sac_kwargs", "sb3_mismatches", "reference_config", "run_state", "run_sb3_reference",
           "OPTIONS"]
