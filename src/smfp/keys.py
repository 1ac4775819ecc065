"""Metric keys: one vocabulary for the code that writes metrics rows and the code that reads them.

Producers (the learner, the training loop, the health probe) and consumers (alarms, ``smfp report``,
``smfp aggregate``) import these names instead of spelling the strings, so renaming a key cannot
silently switch off an alarm. Prefixes: ``losses/`` (optimised quantities), ``train/`` (update and
rollout diagnostics), ``health/`` (probe-state measures), ``eval/`` (evaluation returns).
"""

LOSS_CRITIC = "losses/critic"
LOSS_ACTOR = "losses/actor"
LOSS_MEANFLOW = "losses/meanflow"
LOSS_COVER = "losses/cover"

ALPHA = "train/alpha"
LAMBDA = "train/lambda"
ENTROPY = "train/entropy"
ENTROPY_M1 = "train/entropy_m1"
ENTROPY_LARGE_M = "train/entropy_large_m"
ENTROPY_GAP = "train/entropy_gap"
KL_ANCHOR = "train/kl_anchor"
KL_ANCHOR_AT_REFRESH = "train/kl_anchor_at_refresh"
SIGMA_MEAN = "train/sigma_mean"
LOG_SIGMA_STATE_SD = "train/log_sigma_state_sd"  # spread over states of the mean output log-std
SATURATION = "train/saturation"
Q_MEAN, Q_MIN, Q_MAX = "train/q_mean", "train/q_min", "train/q_max"
TD_ERROR = "train/td_error"
GRAD_NORM_ACTOR = "train/grad_norm_actor"
GRAD_NORM_CRITIC = "train/grad_norm_critic"
SKIPPED_UPDATES = "train/skipped_updates"
COVER_ESS = "train/cover_ess"
HEADS_EFFECTIVE = "train/heads_effective"  # em update: exp(entropy) of the target's mean head masses
FIT_ESS = "train/fit_ess"  # effective sample size of the fit update's weighted candidates (fraction of them)
RECOVERIES = "train/recoveries"
KAPPA_MEAN = "train/kappa_mean"
SPS = "train/sps"
UPDATES = "train/updates"
EPISODE_RETURN = "train/episode_return"
EPISODE_LENGTH = "train/episode_length"

HEALTH_MODES = "health/modes"
HEALTH_MODES_MAX = "health/modes_max"
HEALTH_MULTISTEP_GAP = "health/multistep_gap"

EVAL_RETURN_MEAN = "eval/return_mean"
EVAL_RETURN_STD = "eval/return_std"
EVAL_RETURN_MEAN_SAMPLE = "eval/return_mean_sample"
EVAL_RETURN_STD_SAMPLE = "eval/return_std_sample"
