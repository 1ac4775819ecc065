"""Typed configuration: one dataclass per concern, composed into ``TrainConfig``.

The CLI is generated from these classes (``smfp.cli.args``): every field is a flag named after
it (``md_lambda`` -> ``--md-lambda``), its help text is the field's ``doc`` metadata, and the
fully resolved config is saved as ``config.json`` in every run dir.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Literal, Optional


@dataclass(frozen=True)
class AlgoSpec:
    """What an algorithm is: its policy class (a name in ``smfp.policies.POLICY_CLASSES``), whether that
    policy is a mixture (several modes; no ``mean`` action), and whether it takes mirror-descent steps."""
    policy: str
    mixture: bool
    mirror_descent: bool
    description: str


ALGORITHMS = {
    "sac": AlgoSpec("gaussian", False, False, "Gaussian"),
    "mdpo": AlgoSpec("gaussian", False, True, "Gaussian + mirror descent"),
    "smfp": AlgoSpec("smfp", True, True, "SMFP + mirror descent"),
    "flow": AlgoSpec("flow", True, True, "flow-K multi-step baseline + mirror descent"),
}
ALGOS = tuple(ALGORITHMS)
Algo = Literal["sac", "mdpo", "smfp", "flow"]
assert ALGOS == typing.get_args(Algo), "Algo must list the ALGORITHMS"

ACT_MODES = ("sample", "best-of-n", "mean")


def resolve_act_mode(mode: str, mixture: bool, who: str) -> str:
    """The one rule for act modes: ``auto`` is ``mean`` for a single Gaussian and ``best-of-n`` for a mixture
    (whose z = 0 lands between modes, so it has no ``mean``). ``who`` names the policy in the error."""
    if mode == "auto":
        return "best-of-n" if mixture else "mean"
    if mode not in ACT_MODES:
        raise ValueError(f"unknown act mode {mode!r}; choose auto, {', '.join(ACT_MODES)}")
    if mode == "mean" and mixture:
        raise ValueError(f"mode 'mean' does not exist for the {who} policy (z = 0 lands between modes); "
                         "use best-of-n or sample")
    return mode


def doc(text: str, **kw):
    return field(metadata={"doc": text}, **kw)


def eval_mode_of(config: dict) -> str:
    """The act mode a saved run (its config dict) evaluated with, 'auto' resolved; '?' when unknown."""
    section, algo = config.get("eval"), config.get("algo")
    mode = section.get("eval_mode", "?") if isinstance(section, dict) else "?"
    if not isinstance(mode, str) or not isinstance(algo, str) or algo not in ALGORITHMS:
        return mode if isinstance(mode, str) and mode != "auto" else "?"
    try:
        return resolve_act_mode(mode, ALGORITHMS[algo].mixture, algo)
    except ValueError:
        return mode


def flatten_config(d: dict, prefix: str = "") -> dict:
    """A nested config dict as ``{"section.field": value}`` (tuples as lists, as JSON holds them)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def leaf_fields(cls=None) -> Iterator[tuple[tuple[str, ...], dataclasses.Field, typing.Any]]:
    """The one config walker: ``(path, field, type)`` of every leaf field of ``cls`` (default ``TrainConfig``),
    sections first-level only (``("update", "gamma")``). Leaf names are unique across sections. Fields marked
    ``option=False`` (``TrainConfig.given``) are not settings and are left out."""
    cls = TrainConfig if cls is None else cls
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("option", True):
            continue  # bookkeeping, not a setting (TrainConfig.given)
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            for sub_path, sub_field, sub_tp in leaf_fields(tp):
                yield (f.name, *sub_path), sub_field, sub_tp
        else:
            yield (f.name,), f, tp


def set_leaf(obj, path: tuple[str, ...], value):
    """A copy of the config ``obj`` with the leaf at ``path`` set to ``value``."""
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: value})
    return dataclasses.replace(obj, **{path[0]: set_leaf(getattr(obj, path[0]), path[1:], value)})


def apply_options(cfg, values: dict, sections: Optional[tuple[str, ...]] = None):
    """``cfg`` with each leaf field named in ``values`` (by its option name, e.g. ``hidden``; lists as tuples) set,
    only in ``sections`` if given; where the config records the settings given (``TrainConfig.given``), the fields
    set are added to it, so that a preset such as --multimodal's leaves them alone."""
    named = []
    for path, f, _ in leaf_fields(type(cfg)):
        if f.name in values and (sections is None or path[0] in sections):
            v = values[f.name]
            cfg = set_leaf(cfg, path, tuple(v) if isinstance(v, list) else v)
            named.append(".".join(path))
    if named and "given" in {f.name for f in dataclasses.fields(cfg)}:
        cfg = dataclasses.replace(cfg, given=tuple(sorted(set(cfg.given) | set(named))))
    return cfg


# --multimodal: random steps before the first update, enough to visit every basin of a small task (MultiGoal).
MULTIMODAL_WARMUP = 10_000
# --multimodal with --algo smfp (--multimodal-policy heads): four heads, a sigma each, and the em update, the setting
# that followed its critic's multimodal target best on MultiGoal and the fixed-Q suite (docs/demo.md,
# docs/method.md), on a three-layer actor: the shared trunk of four heads fits each head's shape closer with the
# third layer (MultiGoal seeds 5-9: TV to the critic's target at the origin 0.20 -> 0.19, <= 0.2 on 2 -> 5 of 5
# seeds; docs/experiments.md). Applied to each field neither given (``TrainConfig.given``: every flag on the command
# line, so `--hidden 256 256` keeps two layers) nor changed from its default (a config built in Python).
MULTIMODAL_HEADS = {"policy.hidden": (256, 256, 256), "policy.heads": 4, "policy.per_head_sigma": True,
                    "update.actor_update": "em",
                    "update.em_reverse": "heads", "update.md_lambda": 0.0, "update.fit_uniform": 64,
                    "update.fit_local": 32, "update.fit_anchor": 0, "update.fit_local_scale": 3.0}

# Fields that may differ when a run is resumed or a sweep continued (they do not change the method).
RESUMABLE_CHANGES = {"total_steps", "resume", "threads", "run_dir", "label", "log.progress", "update.precision", "given",
                     "eval.eval_every", "eval.eval_episodes", "checkpoint.checkpoint_every",
                     "checkpoint.keep_checkpoints"}
RESUMABLE_PREFIXES = ("monitor.",)  # alarms watch the run; they do not change the method
# Fields added after runs were first saved, with the value that reproduces what those runs did.
ADDED_FIELDS = {"update.lambda_per_alpha": False, "update.actor_update": "reparam", "update.fit_loss": "coupled",
                "update.fit_coef": 10.0, "update.fit_anchor": 16, "update.fit_local": 8, "update.fit_uniform": 8,
                "update.fit_local_scale": 2.0, "update.hybrid_coef": 1.0, "update.hybrid_gate": True,
                "policy.noise_scale": 1.0, "policy.learn_noise_scale": False, "update.md_warmup": False,
                "update.value_backup": "policy", "update.backup_policy_samples": 8, "update.backup_uniform_samples": 32,
                "multimodal": False, "policy.q_states": 0,
                "update.fit_noises": 0, "policy.heads": 1, "update.em_per_head": 4, "update.em_bandwidth": 0.1,
                "update.em_sharpness": 1.0, "update.em_reverse": "draws", "update.em_proposal": "draws",
                "policy.per_head_sigma": False, "update.em_mass_coef": 1.0,
                "update.em_masses": "candidates",
                "update.em_reverse_logits": True, "update.em_fit_weight": "equal", "multimodal_policy": "plain",
                "policy.generator_activation": "silu", "policy.state_base": False,
                "policy.log_std_squash": "tanh", "policy.squash_log_det_eps": 0.0, "given": ()}

# The fit/hybrid/em update's settings are never read by the reparameterised update (SAC's and today's default).
INERT_UNDER_REPARAM = ("update.fit_", "update.hybrid_", "update.em_")


def changed_fields(saved: dict, cfg: "TrainConfig") -> list[str]:
    """Flattened fields in which a saved run's config (``flatten_config``-ed) differs from ``cfg``, other than
    those a resume may change; a field the saved run predates counts with its ``ADDED_FIELDS`` value."""
    old = {**ADDED_FIELDS, **saved}
    new = flatten_config(cfg.to_dict())
    inert = INERT_UNDER_REPARAM if old.get("update.actor_update") == new.get("update.actor_update") == "reparam" else ()
    if not any(c.get("multimodal") and c.get("algo") == "smfp" for c in (old, new)):
        inert += ("multimodal_policy",)  # read only by --multimodal SMFP runs
    return sorted(k for k in set(old) | set(new) if k not in RESUMABLE_CHANGES
                  and not k.startswith(RESUMABLE_PREFIXES) and not k.startswith(inert) and old.get(k) != new.get(k))


class ConfigError(ValueError):
    """A user-facing configuration mistake (reported as one line, no traceback)."""


def _apply_unless_set(cfg, values: dict, given: Iterable[str] = ()):
    """``cfg`` with each dotted field of ``values`` set, unless it is named in ``given`` or no longer holds its
    dataclass default."""
    given = set(given)
    for dotted, value in values.items():
        if dotted in given:
            continue
        path = tuple(dotted.split("."))
        parent = cfg
        for name in path[:-1]:
            parent = getattr(parent, name)
        f = next(f for f in dataclasses.fields(parent) if f.name == path[-1])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if getattr(parent, path[-1]) == default:
            cfg = set_leaf(cfg, path, value)
    return cfg


def check_choices(values, allowed, what: str) -> None:
    """A ``ConfigError`` naming the first of ``values`` not in ``allowed`` (e.g. what="algo")."""
    for v in values:
        if v not in allowed:
            raise ConfigError(f"unknown {what} {v!r}; choose from {', '.join(allowed)}")


@dataclass
class EnvConfig:
    env: str = doc("Gymnasium id with a continuous Box action space; 'module:Env-vN' imports module first",
                   default="Hopper-v5")
    max_episode_steps: Optional[int] = doc("override the task's time limit (none: the task's own)", default=None)


@dataclass
class PolicyConfig:
    hidden: tuple[int, ...] = doc("actor hidden layer widths", default=(256, 256))
    sigma_hidden: tuple[int, ...] = doc("SMFP/flow output-noise network widths (sigma(s))", default=(64, 64))
    log_std_min: float = doc("lower bound of the output log-std", default=-5.0)
    log_std_max: float = doc("upper bound of the output log-std", default=2.0)
    squash_log_det_eps: float = doc(
        "the tanh squash's log-det in the training log-densities: 0 is exact; eps > 0 is Stable-Baselines3's "
        "log(1 - tanh(x)^2 + eps) (SB3: 1e-6), floored at log(eps) for saturated actions", default=0.0)
    log_std_squash: Literal["tanh", "clip"] = doc(
        "how the network's raw output is bounded into [--log-std-min, --log-std-max]: tanh (smooth; raw 0 is the "
        "middle: CleanRL's SAC) or clip (clamped; raw 0 is log-std 0: Stable-Baselines3's SAC, with --log-std-min -20)",
        default="tanh")
    components: int = doc("M, mixture components of the semi-implicit log-density surrogate (1 = conditional)",
                          default=8)
    actor_states: int = doc("states per actor update (each with M actions); 0: batch_size // M", default=0)
    q_states: int = doc("states whose one fresh action carries the actor's Q term (the entropy and KL terms stay on "
                        "--actor-states x M); 0: the Q term on the --actor-states x M actions", default=0)
    target_components: int = doc("M used for the entropy term of the critic target; 0: same as --components",
                                 default=0)
    meanflow_coef: float = doc("weight of the MeanFlow self-consistency loss (0 disables it)", default=1.0)
    meanflow_every: int = doc("apply the MeanFlow loss every N updates", default=2)
    meanflow_batch: int = doc("states per MeanFlow loss evaluation", default=64)
    meanflow_r_neq_t: float = doc("fraction of MeanFlow samples with r != t", default=0.5)
    meanflow_weight_power: float = doc("adaptive weight 1/(|delta|^2 + 1e-3)^p of the MeanFlow loss; p = 1 (the "
                                       "MeanFlow paper's) made its gradient ~10x the RL gradient on MuJoCo, so "
                                       "the default is plain MSE (p = 0)", default=0.0)
    flow_steps: int = doc("K, Euler steps of the flow-K policy (--algo flow)", default=20)
    noise_scale: float = doc("kappa, the SMFP noise prior z ~ N(0, kappa^2 I) (its initial value with "
                             "--learn-noise-scale); 0: the policy is a Gaussian on SMFP's own networks", default=1.0)
    learn_noise_scale: bool = doc("learn kappa per action dimension with the actor (logged as train/kappa_mean)",
                                  default=False)
    heads: int = doc("K, heads of the SMFP policy: a discrete latent c ~ p(c|s) beside the noise z, so that a mode's "
                     "mass is a learned probability, not a share of a connected noise space (1: none; K > 1 needs "
                     "--actor-update em); see docs/method.md", default=1)
    generator_activation: Literal["silu", "relu"] = doc(
        "activation of the SMFP generator network u(s, z, t, h) (the sigma network uses ReLU, as SAC's actor does)",
        default="silu")
    state_base: bool = doc(
        "SMFP: the state-only (sigma) network also gives a shift mu(s) of every component, mean(s, z) = mu(s) + T(s, z), "
        "so the state-dependent centre is learnt as a Gaussian actor learns its mean (give the network SAC's width: "
        "--sigma-hidden 256 256); one-head policies only; see docs/method.md", default=False)
    per_head_sigma: bool = doc("with --heads K: an output sigma per head (K log-stds from the sigma network) instead "
                               "of one shared by every head, so that one head can cover a broad background while "
                               "another sits on a narrow peak", default=False)


@dataclass
class CriticConfig:
    critic_hidden: tuple[int, ...] = doc("critic hidden layer widths", default=(256, 256))
    num_q: int = doc("critics in the ensemble (min over them)", default=2)


@dataclass
class UpdateConfig:
    gamma: float = doc("discount", default=0.99)
    tau: float = doc("Polyak rate of the target critics", default=0.005)
    batch_size: int = doc("replay batch per update", default=256)
    actor_lr: float = doc("actor Adam learning rate", default=3e-4)
    critic_lr: float = doc("critic Adam learning rate", default=3e-4)
    alpha: float = doc("initial (or fixed) entropy temperature", default=1.0)
    autotune_alpha: bool = doc("tune alpha toward --target-entropy", default=True)
    alpha_lr: float = doc("temperature learning rate", default=3e-4)
    entropy_gap_every: int = doc("measure the entropy surrogate's bias (256 vs M components, 16 states) every N updates "
                                 "(mixture policies; 0: off); logged as train/entropy_gap", default=1000)
    entropy_correction: bool = doc("tune alpha on the M-component entropy plus its measured bias (mixture policies)",
                                   default=False)
    target_entropy: Optional[float] = doc("entropy target (none: -action_dim)", default=None)
    md_lambda: Optional[float] = doc("mirror-descent KL weight lambda, or its multiple of alpha with --lambda-per-alpha "
                                     "(none: 0 for sac, 1 otherwise)", default=None)
    lambda_per_alpha: Optional[bool] = doc(
        "read --md-lambda as a multiple c of alpha (lambda = c * alpha): each step then moves pi to "
        "pi_k^(c/(1+c)) * exp(Q/alpha)^(1/(1+c)), whatever the reward scale (none: on for mdpo/smfp/flow unless "
        "--autotune-lambda; --no-lambda-per-alpha: lambda is --md-lambda itself; see docs/results.md)", default=None)
    autotune_lambda: bool = doc("tune lambda by dual ascent toward --target-kl", default=False)
    target_kl: float = doc("target KL to the anchor (with --autotune-lambda)", default=0.05)
    lambda_lr: float = doc("lambda dual-ascent learning rate", default=3e-4)
    cover_coef: float = doc("weight of the mass-covering term of smfp: the MeanFlow loss on samples of the mirror-descent "
                            "step's closed-form target (importance-resampled), 0: off; see docs/method.md", default=0.0)
    cover_per_state: int = doc("target samples per state kept by the mass-covering term", default=4)
    cover_uniform: int = doc("uniform proposals per state of the mass-covering term (beside one per anchor component)",
                             default=8)
    actor_update: Literal["reparam", "fit", "hybrid", "em"] = doc(
        "actor update: reparam (the reparameterised mirror-descent loss), fit (fit the one-step map to the "
        "mirror-descent step's closed-form target pi_k^(lambda/(alpha+lambda)) exp(Q/(alpha+lambda)) by a "
        "mass-covering loss on importance-weighted candidate actions; mixture policies), hybrid (the fit plus "
        "--hybrid-coef x the reverse KL to that target), em (an EM step toward that target for a --heads policy: "
        "head masses from the candidates' responsibilities, each head's map by the coupled regression, sigma by "
        "--hybrid-coef x the reverse KL); see docs/method.md", default="reparam")
    fit_loss: Literal["coupled", "energy"] = doc(
        "loss of the fit/hybrid update: coupled (regress the pre-squash map onto importance-resampled targets "
        "paired with its noises by a per-state optimal-transport assignment; sigma by the energy score) or "
        "energy (weighted energy score of the policy's samples against the weighted candidates)",
        default="coupled")
    fit_coef: float = doc("fit/hybrid update: weight of the fit loss in the actor loss", default=10.0)
    fit_noises: int = doc("fit/hybrid update: fresh noises per state for the fit loss (map passes, no critic rows; the "
                          "reverse-KL gate is off with them); 0: the fit uses the M samples", default=0)
    fit_anchor: int = doc("fit/hybrid update: candidates per state drawn from the anchor's components", default=16)
    fit_local: int = doc("fit/hybrid update: candidates per state drawn around the policy's own components (std "
                         "widened by --fit-local-scale)", default=8)
    fit_uniform: int = doc("fit/hybrid update: candidates per state uniform on the action box", default=8)
    fit_local_scale: float = doc("fit/hybrid update: std of the local candidates as a multiple of the policy's "
                                 "sigma", default=2.0)
    hybrid_coef: float = doc("hybrid update: weight of the reverse KL to the step's target (the reparameterised "
                             "loss divided by alpha + lambda) beside the fit loss", default=1.0)
    em_per_head: int = doc("em update: noises per head for each state's fit (map passes only, no critic rows)",
                           default=4)
    em_bandwidth: float = doc("em update: kernel width (pre-squash units) of the heads' responsibilities for the "
                              "candidates; narrower than the modes' spacing, so that heads specialise", default=0.1)
    em_reverse: Literal["draws", "heads"] = doc(
        "em update: the samples of its reverse KL (sigma's fit): draws (the M samples, heads drawn from p(c|s)) or "
        "heads (--em-per-head noises of every head weighted by p(c|s); the heads' probabilities then also follow "
        "the reverse KL's gradient beside their fit; K x --em-per-head critic rows per state)", default="draws")
    em_proposal: Literal["draws", "heads"] = doc(
        "em update: the centres of its local candidates: draws (the M samples, heads drawn from p(c|s)) or heads "
        "(the --em-per-head noises of every head, so that a head of small probability still gets candidates "
        "around it and its mode cannot starve)", default="draws")
    em_sharpness: float = doc("em update: power on the heads' posterior odds in the responsibilities (1: the "
                              "posterior; > 1 sharper, inf: each candidate to its most likely head), so that a head "
                              "straddling two modes gives up the one other heads hold", default=1.0)
    em_mass_coef: float = doc("em update: weight of the cross-entropy of the heads' probabilities to the target's "
                              "importance-weighted masses (at a low effective sample size those masses follow the "
                              "current probabilities, so a mode with fewer candidates loses mass; 0 leaves the "
                              "probabilities to the reverse KL of --em-reverse heads)", default=1.0)
    em_masses: Literal["candidates", "heads"] = doc(
        "em update: the target masses of the heads' probabilities: candidates (the importance-weighted candidates' "
        "shares) or heads (each head's own reverse-KL draws: m_c ~ p_c x the mean of p*/pi over them, the EM step "
        "for mixture weights, which does not follow the current p(c|s); no extra critic rows; needs --em-reverse "
        "heads)", default="candidates")
    em_fit_weight: Literal["equal", "mass"] = doc(
        "em update: weight of each head's map regression at a state: equal (every head's fit counts the same, "
        "whatever its share of the target there) or mass (K x the head's target mass there, so that a head with no "
        "target mass at a state does not pull the shared network toward the candidates left in its cell)",
        default="equal")
    em_reverse_logits: bool = doc("em update with --em-reverse heads: the reverse KL's gradient also reaches the "
                                  "heads' probabilities (off: they follow their masses' cross-entropy alone)",
                                  default=True)
    hybrid_gate: bool = doc("hybrid update with the coupled loss: drop the reverse KL's gradient at a sample whose "
                            "descent direction points away from the sample's coupled target", default=True)
    value_backup: Literal["policy", "soft-optimal"] = doc(
        "critic target's next-state value: policy (E_pi[min Qbar - alpha log pi], SAC's) or soft-optimal "
        "(alpha log of the integral of exp(min Qbar / alpha) over the action box, by importance sampling from "
        "the policy and the box: Soft Q-Learning's; the value of every good action, not only those the policy "
        "has found); see docs/method.md", default="policy")
    backup_policy_samples: int = doc("soft-optimal backup: candidates per next state from the policy", default=8)
    backup_uniform_samples: int = doc("soft-optimal backup: candidates per next state uniform on the action box",
                                      default=32)
    md_warmup: bool = doc("mirror-descent warm-up: lambda = 0 until the policy's entropy first reaches its target, "
                          "then the anchor starts from the policy as it is", default=False)
    anchor_period: int = doc("copy the actor into the anchor every N updates", default=1000)
    anchor_tau: float = doc("if > 0, track the anchor by Polyak averaging at this rate instead of copies",
                            default=0.0)
    grad_clip: float = doc("clip gradient norms at this value (0: off; norms are logged either way)", default=0.0)
    updates_per_step: int = doc("gradient updates per environment step", default=1)
    learning_starts: int = doc("environment steps of uniform random actions before updates start", default=5000)
    precision: Literal["fp32", "bf16", "auto"] = doc(
        "matmul precision of the hidden-to-hidden layers in updates: fp32, bf16 (fp32 master weights, "
        "first/last layers, losses and optimiser; pays on CPUs with AMX/avx512_bf16), or auto (bf16 where the CPU "
        "has AMX or avx512_bf16, else fp32; the run's config records which, and a resumed run keeps it); see "
        "docs/performance.md",
        default="auto")


@dataclass
class BufferConfig:
    buffer_size: int = doc("replay buffer capacity (transitions)", default=1_000_000)
    save_buffer: bool = doc("save the replay buffer with checkpoints (needed for an exact resume)", default=True)


@dataclass
class EvalConfig:
    eval_every: int = doc("evaluate every N environment steps (0: only at the end)", default=10_000)
    eval_episodes: int = doc("episodes per evaluation", default=10)
    eval_mode: str = doc("act mode for evaluation: auto (mean for a Gaussian, best-of-n for a mixture policy), "
                         "sample, best-of-n, mean", default="auto")
    best_of_n: int = doc("candidates for best-of-n acting", default=16)


@dataclass
class LogConfig:
    log_every: int = doc("write training metrics every N environment steps", default=1000)
    progress: bool = doc("show a progress bar (off automatically when output is not a terminal)", default=True)
    tensorboard: bool = doc("write TensorBoard event files", default=True)


@dataclass
class CheckpointConfig:
    checkpoint_every: int = doc("checkpoint every N environment steps (0: only at the end)", default=50_000)
    keep_checkpoints: int = doc("checkpoints kept on disk (oldest removed)", default=2)


@dataclass
class AlarmConfig:
    alarms: bool = doc("watch training health and raise alarms (alerts.jsonl)", default=True)
    probe_every: int = doc("count modes at fixed probe states every N steps (0: off)", default=10_000)
    probe_states: int = doc("probe states drawn from the replay buffer when probing starts", default=8)
    probe_samples: int = doc("actions sampled per probe state", default=256)
    mode_gap_min: float = doc("mode collapse: entropy gap (surrogate - conditional) below this, nats",
                              default=0.05)
    entropy_collapse_margin: float = doc("entropy collapse: nats below the target entropy", default=5.0)
    entropy_collapse_window: int = doc("entropy collapse: consecutive log intervals", default=5)
    grad_norm_max: float = doc("exploding gradients: norm (before clipping) above this", default=1e4)
    saturation_max: float = doc("saturation: fraction of |pre-tanh| > 3 above this", default=0.5)
    kl_factor: float = doc("KL too large: KL to the anchor above this multiple of the reference KL: --target-kl, or "
                           "1 nat per action dimension with --lambda-per-alpha (which sets no KL target)",
                           default=10.0)
    max_nonfinite: int = doc("consecutive non-finite updates before restoring the last good checkpoint",
                             default=20)
    recovery_lr_factor: float = doc("learning-rate factor applied after such a restore", default=0.5)


@dataclass
class TrainConfig:
    algo: Algo = doc("algorithm: " + ", ".join(f"{name} ({spec.description})" for name, spec in ALGORITHMS.items()),
                     default="sac")
    total_steps: int = doc("environment steps to train for", default=100_000)
    seed: int = doc("random seed", default=0)
    run_dir: Optional[str] = doc("where the run is written (none: runs/ALGO-ENV-sSEED)", default=None)
    resume: bool = doc("continue the run in --run-dir from its latest checkpoint", default=False)
    threads: int = doc("torch CPU threads (1 is fastest for these network sizes)", default=1)
    label: Optional[str] = doc("name of this variant in `smfp aggregate` tables and curves, e.g. smfp-lam0 for an "
                               "ablation (none: the algo)", default=None)
    multimodal: bool = doc("settings for tasks whose critic targets have several modes (`smfp inspect` says so): "
                           "the temperature fixed at --alpha (not tuned), the soft-optimal value backup, and at "
                           f"least {MULTIMODAL_WARMUP} steps of random actions first; with --algo smfp also the "
                           "--multimodal-policy; see docs/demo.md", default=False)
    multimodal_policy: Literal["heads", "plain"] = doc(
        "with --multimodal and --algo smfp: heads (four heads with a sigma each and the em update: --heads 4 "
        "--per-head-sigma --actor-update em --em-reverse heads --md-lambda 0 --fit-uniform 64 --fit-local 32 "
        "--fit-anchor 0 --fit-local-scale 3, each unless given) or plain (the policy and update as without "
        "--multimodal)", default="heads")
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    monitor: AlarmConfig = field(default_factory=AlarmConfig)
    # The settings given explicitly (dotted names; the command line records every flag it was given). Presets such
    # as --multimodal's leave these as given even where the value repeats the default. Not a setting: resuming may
    # change it, and it is no command-line option.
    given: tuple[str, ...] = field(default=(), metadata={"option": False})

    @property
    def spec(self) -> AlgoSpec:
        return ALGORITHMS[self.algo]

    @property
    def policy_kind(self) -> str:
        return self.spec.policy

    def resolved(self) -> "TrainConfig":
        """A copy with every 'none/auto' default made explicit and every value checked."""
        cfg = dataclasses.replace(self, update=dataclasses.replace(self.update))
        if cfg.algo not in ALGOS:
            raise ConfigError(f"unknown --algo {cfg.algo!r}; choose one of {', '.join(ALGOS)}")
        if cfg.multimodal and cfg.algo == "smfp" and cfg.multimodal_policy == "heads":
            cfg = _apply_unless_set(cfg, MULTIMODAL_HEADS, cfg.given)  # first: md_lambda's default is resolved below
        u = cfg.update
        md = cfg.spec.mirror_descent
        from smfp.precision import resolve_precision  # torch-free until a config is resolved

        u.precision = resolve_precision(u.precision)  # auto: what this CPU runs, recorded in config.json
        if u.md_lambda is None:
            u.md_lambda = 1.0 if md else 0.0
        if u.lambda_per_alpha is None:
            u.lambda_per_alpha = md and not u.autotune_lambda
        if u.lambda_per_alpha and u.autotune_lambda:
            raise ConfigError("--lambda-per-alpha and --autotune-lambda both set lambda; choose one")
        if not md and (u.md_lambda != 0.0 or u.autotune_lambda):
            raise ConfigError(f"--algo {cfg.algo} has no mirror-descent term; use --algo mdpo to set --md-lambda")
        if cfg.multimodal:
            u.autotune_alpha = False
            u.value_backup = "soft-optimal"
            u.learning_starts = max(u.learning_starts, MULTIMODAL_WARMUP)
        if u.value_backup == "soft-optimal" and (u.backup_policy_samples < 1 or u.backup_uniform_samples < 0):
            raise ConfigError("the soft-optimal backup needs --backup-policy-samples >= 1 and "
                              f"--backup-uniform-samples >= 0, got {u.backup_policy_samples} and "
                              f"{u.backup_uniform_samples}")
        if cfg.run_dir is None:
            cfg.run_dir = f"runs/{cfg.algo}-{cfg.env.env.replace('/', '_').replace(':', '_')}-s{cfg.seed}"
        cfg.validate()
        return cfg

    def validate(self) -> None:
        positive = {
            "--total-steps": self.total_steps, "--batch-size": self.update.batch_size,
            "--buffer-size": self.buffer.buffer_size, "--eval-episodes": self.eval.eval_episodes,
            "--log-every": self.log.log_every, "--components": self.policy.components,
            "--threads": self.threads, "--anchor-period": self.update.anchor_period,
            "--updates-per-step": self.update.updates_per_step, "--num-q": self.critic.num_q,
            "--best-of-n": self.eval.best_of_n, "--keep-checkpoints": self.checkpoint.keep_checkpoints,
            "--meanflow-every": self.policy.meanflow_every, "--cover-per-state": self.update.cover_per_state, "--meanflow-batch": self.policy.meanflow_batch,
            "--flow-steps": self.policy.flow_steps,
            "--probe-states": self.monitor.probe_states, "--probe-samples": self.monitor.probe_samples,
            "--entropy-collapse-window": self.monitor.entropy_collapse_window,
            "--max-nonfinite": self.monitor.max_nonfinite,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        non_negative = {
            "--learning-starts": self.update.learning_starts, "--eval-every": self.eval.eval_every,
            "--checkpoint-every": self.checkpoint.checkpoint_every, "--actor-states": self.policy.actor_states,
            "--q-states": self.policy.q_states, "--squash-log-det-eps": self.policy.squash_log_det_eps, "--target-components": self.policy.target_components, "--grad-clip": self.update.grad_clip,
            "--meanflow-coef": self.policy.meanflow_coef, "--entropy-gap-every": self.update.entropy_gap_every, "--cover-coef": self.update.cover_coef,
            "--cover-uniform": self.update.cover_uniform, "--md-lambda": self.update.md_lambda or 0.0,
            "--alpha": self.update.alpha, "--anchor-tau": self.update.anchor_tau,
            "--probe-every": self.monitor.probe_every,
            "--seed": self.seed, "--actor-lr": self.update.actor_lr, "--critic-lr": self.update.critic_lr,
            "--alpha-lr": self.update.alpha_lr, "--lambda-lr": self.update.lambda_lr,
        }
        for name, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if self.policy.q_states and self.update.actor_update != "reparam":
            raise ConfigError("--q-states applies to --actor-update reparam; the fit/hybrid update scores its own "
                              "candidates")
        if self.policy.heads < 1:
            raise ConfigError(f"--heads must be >= 1, got {self.policy.heads}")
        if self.policy.heads > 1 and self.spec.policy != "smfp":
            raise ConfigError(f"--heads applies to --algo smfp (the {self.spec.policy} policy has no heads); drop it")
        if self.policy.generator_activation != "silu" and self.spec.policy != "smfp":
            raise ConfigError(f"--generator-activation applies to --algo smfp (the {self.spec.policy} policy keeps "
                              f"its own); drop it")
        if self.policy.state_base and self.spec.policy != "smfp":
            raise ConfigError(f"--state-base applies to --algo smfp (the {self.spec.policy} policy has its own mean); "
                              f"drop it")
        if self.policy.state_base and self.policy.heads > 1:
            raise ConfigError("--state-base is for one-head policies; drop it or --heads")
        if self.policy.per_head_sigma and self.policy.heads < 2:
            raise ConfigError("--per-head-sigma needs --heads K with K > 1 (a sigma per head); add --heads or drop it")
        if self.policy.heads > 1 and self.update.actor_update != "em":
            raise ConfigError(f"--heads {self.policy.heads} needs --actor-update em (the only update that learns the "
                              f"heads' probabilities)")
        if self.update.actor_update == "em" and (self.update.em_per_head < 1 or not self.update.em_bandwidth > 0
                                                 or not self.update.em_sharpness > 0):
            raise ConfigError(f"--em-per-head must be >= 1, --em-bandwidth and --em-sharpness positive, got "
                              f"{self.update.em_per_head}, {self.update.em_bandwidth} and {self.update.em_sharpness}")
        if self.update.actor_update == "em" and self.update.em_masses == "heads" and (
                self.update.em_reverse != "heads" or not self.update.hybrid_coef > 0):
            raise ConfigError("--em-masses heads reads each head's reverse-KL draws: add --em-reverse heads and keep "
                              "--hybrid-coef above 0")
        if self.update.actor_update == "em" and not self.update.em_mass_coef >= 0:
            raise ConfigError(f"--em-mass-coef must be >= 0 (0: the probabilities follow the reverse KL alone), got "
                              f"{self.update.em_mass_coef}")
        if self.update.actor_update != "reparam":
            self._validate_fit()
        if self.policy.q_states > self.update.batch_size:
            raise ConfigError(f"--q-states ({self.policy.q_states}) must not exceed --batch-size "
                              f"({self.update.batch_size}): the Q term's states come from the batch")
        if self.seed >= 2**32:  # numpy, torch and gymnasium all accept seeds below 2**32
            raise ConfigError(f"--seed must be below 2**32, got {self.seed}")
        for name, value in {"--gamma": self.update.gamma, "--tau": self.update.tau,
                            "--meanflow-r-neq-t": self.policy.meanflow_r_neq_t,
                            "--anchor-tau": self.update.anchor_tau,
                            "--recovery-lr-factor": self.monitor.recovery_lr_factor}.items():
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value}")
        for name, widths in {"--hidden": self.policy.hidden, "--critic-hidden": self.critic.critic_hidden,
                             "--sigma-hidden": self.policy.sigma_hidden}.items():
            if not widths or any(w <= 0 for w in widths):
                raise ConfigError(f"{name} needs one or more positive widths, got {widths}")
        if not (self.policy.noise_scale >= 0 and self.policy.noise_scale < float("inf")):
            raise ConfigError(f"--noise-scale must be a finite number >= 0, got {self.policy.noise_scale}")
        if self.policy.learn_noise_scale and self.policy.noise_scale <= 0:
            raise ConfigError("--learn-noise-scale needs a positive --noise-scale (its initial value)")
        if self.policy.log_std_min >= self.policy.log_std_max:
            raise ConfigError("--log-std-min must be below --log-std-max")
        try:
            resolve_act_mode(self.eval.eval_mode, self.spec.mixture, self.algo)
        except ValueError as exc:
            raise ConfigError(f"--eval-mode: {exc}") from None
        if self.env.max_episode_steps is not None and self.env.max_episode_steps <= 0:
            raise ConfigError("--max-episode-steps must be positive")
        if self.run_dir is not None and not self.run_dir.strip():
            raise ConfigError("--run-dir is empty; give a folder such as runs/my-run")
        if not self.env.env.strip():
            raise ConfigError("--env is empty; give a Gymnasium id such as Hopper-v5")

    def _validate_fit(self) -> None:
        """The fit/hybrid/em update's settings make sense for this algorithm's policy."""
        u = self.update
        if u.actor_update not in ("fit", "hybrid", "em"):
            raise ConfigError(f"unknown --actor-update {u.actor_update!r}; choose reparam, fit, hybrid or em")
        if not self.spec.mixture:
            raise ConfigError(f"--actor-update {u.actor_update} fits a mixture policy (smfp, flow); "
                              f"the {self.spec.policy} policy takes --actor-update reparam")
        counts = {"--fit-anchor": u.fit_anchor, "--fit-local": u.fit_local, "--fit-uniform": u.fit_uniform}
        if any(v < 0 for v in counts.values()) or sum(counts.values()) == 0:
            raise ConfigError(f"--fit-anchor, --fit-local and --fit-uniform must be >= 0 and not all 0, got {counts}")
        if u.fit_noises < 0 or u.fit_noises == 1:
            raise ConfigError(f"--fit-noises must be 0 (the M samples) or at least 2, got {u.fit_noises}")
        if not u.fit_local_scale > 0:
            raise ConfigError(f"--fit-local-scale must be positive, got {u.fit_local_scale}")
        if u.fit_coef < 0 or u.hybrid_coef < 0:
            raise ConfigError("--fit-coef and --hybrid-coef must be >= 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Rebuild from ``to_dict`` output (e.g. a run's config.json); unknown keys are an error."""
        kwargs = {}
        nested = typing.get_type_hints(cls)
        sub_types = {name: tp for name, tp in nested.items() if dataclasses.is_dataclass(tp)}
        for key, value in data.items():
            if key not in nested:
                raise ConfigError(f"unknown config key {key!r}")
            if key in sub_types:
                sub = sub_types[key]
                names = {f.name for f in dataclasses.fields(sub)}
                if not isinstance(value, dict) or set(value) - names:
                    raise ConfigError(f"config section {key!r} is malformed or has unknown keys")
                value = sub(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
            elif key == "given":
                if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                    raise ConfigError("config key 'given' must be a list of option names")
                value = tuple(value)
            kwargs[key] = value
        return cls(**kwargs)
