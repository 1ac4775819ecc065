"""Training-health alarms (stability monitoring; the README lists what each alarm means).

Each alarm watches metrics rows as they are logged. It fires when its condition becomes true
(printed once, appended to ``alerts.jsonl``) and re-arms only after the condition has been false
again, so a persisting problem is reported once, not every row. Thresholds are fields of
``AlarmConfig`` (``smfp train --help`` lists them with their defaults). A resumed run replays its
kept training rows silently first, so the alarms carry on as if the run had not stopped (no
alert repeated for a condition that already held, no count restarted at 0).

| alarm | condition on a metrics row |
|---|---|
| ``mode_collapse`` | the policy showed >= 2 modes at the probe states before, now 1, and the entropy gap ``train/entropy - train/entropy_m1`` is below ``--mode-gap-min``; it re-arms only once the gap exceeds twice that or the modes are back to >= 2 |
| ``entropy_collapse`` | ``train/entropy`` below target entropy minus ``--entropy-collapse-margin`` for ``--entropy-collapse-window`` consecutive rows |
| ``exploding_gradients`` | an actor or critic gradient norm (before clipping) above ``--grad-norm-max`` |
| ``saturation`` | ``train/saturation`` (fraction of ``|pre-tanh| > 3``) above ``--saturation-max`` |
| ``kl_too_large`` | ``train/kl_anchor`` above ``--kl-factor`` x the reference KL (``--target-kl``, or 1 nat per action dimension with ``--lambda-per-alpha``): mirror-descent step too large; not watched during the first anchor period after learning starts, whose step is from the random initialisation |
| ``nonfinite_updates`` | updates skipped because a loss or gradient was not finite (``train/skipped_updates`` grew) |
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

from smfp import keys as K
from smfp.monitor.logger import read_metrics
from smfp.storage.userfiles import alert_rows, numeric_rows
from smfp.storage.atomic import atomic_write_text
from smfp.storage.rundir import RunDir


@dataclass
class Alert:
    step: int
    alarm: str
    message: str
    value: float


def _num(row: dict, key: str) -> Optional[float]:
    v = row.get(key)
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):  # non-finite values are logged as strings ("nan", "inf")
        return float("nan")
    return None


def kl_watch(update, act_dim: int) -> tuple[float, int]:
    """(reference KL, first watched step) of the ``kl_too_large`` alarm for an ``UpdateConfig``.

    With ``lambda = c * alpha`` no KL target is set; the reference is then 1 nat per action
    dimension (healthy HalfCheetah runs peaked at 17 nats for 6 dimensions, then 1-3). The first
    anchor period after learning starts is not watched: its KL is the step away from the random
    initialisation, not a trust region.
    """
    reference = float(act_dim) if update.lambda_per_alpha else update.target_kl
    first_period = round(1.0 / update.anchor_tau) if update.anchor_tau > 0 else update.anchor_period
    # + 1: the row of step learning_starts + period holds the KL of the period's last update, whose
    # anchor is still the initialisation (the refresh follows that update)
    return reference, update.learning_starts + first_period + 1


# What keeps the mode-collapse alarm active: a gap up to this multiple of --mode-gap-min (hysteresis,
# so a gap oscillating around the threshold is one collapse, not one alert per crossing).
MODE_GAP_REARM = 2.0
# Update rows seen before an alarm whose metric never appeared is reported as off.
MISSING_KEY_ROWS = 3
# The rows the training loop passes to ``observe`` (evaluation and recovery rows are not observed).
OBSERVED_KEY = K.SPS


class AlarmMonitor:
    def __init__(self, cfg, run_dir: Path, target_entropy: float, target_kl: float, uses_md: bool,
                 emit: Callable[[str], None] = print, start_step: int = 0, kl_from_step: int = 0,
                 probing: bool = False):
        self.cfg = cfg
        # Each alarm and the keys it needs; an alarm whose key never appears warns once (it would be off).
        self.watched = {"entropy_collapse": (K.ENTROPY,), "exploding_gradients": (K.GRAD_NORM_ACTOR, K.GRAD_NORM_CRITIC),
                        "saturation": (K.SATURATION,), "nonfinite_updates": (K.SKIPPED_UPDATES,)}
        if uses_md:
            self.watched["kl_too_large"] = (K.KL_ANCHOR,)
        if probing:
            self.watched["mode_collapse"] = (K.HEALTH_MODES, K.ENTROPY, K.ENTROPY_M1)
        self.seen_keys: set[str] = set()
        self.update_rows = 0
        self.missing_checked = False
        self.target_entropy = target_entropy
        self.target_kl = target_kl
        self.uses_md = uses_md
        self.kl_from_step = kl_from_step
        self.emit = emit
        run_dir = RunDir(run_dir)
        self.path = run_dir.alerts
        previous = alert_rows(read_metrics(self.path))  # a damaged line is skipped, not a crash on resume
        if start_step > 0 or previous:
            kept = [r for r in previous if r["step"] <= start_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
            previous = kept
        self.alerts: list[Alert] = [Alert(r["step"], r["alarm"], r["message"], r.get("value", float("nan")))
                                    for r in previous]
        self.active: set[str] = set()
        self.low_entropy_rows = 0
        self.max_modes = 0.0
        self.skipped = 0.0
        if start_step > 0:  # metrics.jsonl has been cut back to the checkpoint's step by the logger
            for row in numeric_rows(read_metrics(run_dir.metrics)):
                if row["step"] <= start_step and OBSERVED_KEY in row:
                    self._update(row["step"], row)

    def _conditions(self, step: int, row: dict) -> dict[str, tuple[bool, float, str]]:
        c = self.cfg
        out: dict[str, tuple[bool, float, str]] = {}
        entropy, entropy_m1 = _num(row, K.ENTROPY), _num(row, K.ENTROPY_M1)
        modes = _num(row, K.HEALTH_MODES)
        if modes is not None and math.isfinite(modes):
            self.max_modes = max(self.max_modes, modes)
            gap = (entropy - entropy_m1) if entropy is not None and entropy_m1 is not None else 0.0
            if "mode_collapse" in self.active:  # hysteresis: collapsed until the gap is clearly back (NaN: still)
                collapsed = modes <= 1 and not gap > MODE_GAP_REARM * c.mode_gap_min
            else:
                collapsed = self.max_modes >= 2 and modes <= 1 and gap < c.mode_gap_min
            out["mode_collapse"] = (collapsed, modes, f"mode count at the probe states fell to {modes:g} (had "
                                    f"{self.max_modes:g}) and the entropy gap is {gap:.3g} nats")
        if entropy is not None:
            low = not math.isfinite(entropy) or entropy < self.target_entropy - c.entropy_collapse_margin
            self.low_entropy_rows = self.low_entropy_rows + 1 if low else 0
            out["entropy_collapse"] = (self.low_entropy_rows >= c.entropy_collapse_window, entropy,
                                       f"entropy {entropy:.3g} has stayed more than {c.entropy_collapse_margin:g} "
                                       f"nats below its target {self.target_entropy:g} for "
                                       f"{self.low_entropy_rows} log intervals")
        norms = [v for v in (_num(row, K.GRAD_NORM_ACTOR), _num(row, K.GRAD_NORM_CRITIC)) if v is not None]
        if norms:
            worst = max(norms, key=lambda v: v if math.isfinite(v) else math.inf)
            out["exploding_gradients"] = (not math.isfinite(worst) or worst > c.grad_norm_max, worst,
                                          f"gradient norm {worst:.3g} exceeds {c.grad_norm_max:g}")
        sat = _num(row, K.SATURATION)
        if sat is not None:
            out["saturation"] = (sat > c.saturation_max, sat, f"{100 * sat:.1f}% of pre-tanh actions beyond |x| > 3 "
                                 f"(limit {100 * c.saturation_max:.0f}%): actions pinned at the bounds")
        kl = _num(row, K.KL_ANCHOR)
        if kl is not None and self.uses_md and step >= self.kl_from_step:
            limit = c.kl_factor * self.target_kl
            out["kl_too_large"] = (not math.isfinite(kl) or kl > limit, kl,
                                   f"KL to the anchor {kl:.3g} exceeds {limit:.3g} ({c.kl_factor:g} x reference): "
                                   "mirror-descent step too large (raise --md-lambda or shorten --anchor-period)")
        skipped = _num(row, K.SKIPPED_UPDATES)
        if skipped is not None:
            grew = skipped > self.skipped
            out["nonfinite_updates"] = (grew, skipped, f"{skipped - self.skipped:g} updates skipped for non-finite "
                                        f"losses or gradients ({skipped:g} in all)")
            self.skipped = skipped
        return out

    def _update(self, step: int, row: dict) -> list[tuple[str, float, str]]:
        """Advance the alarms' state by one row; the (name, value, message) of those that fire."""
        fired = []
        for name, (on, value, message) in self._conditions(step, row).items():
            if on and name not in self.active:
                self.active.add(name)
                fired.append((name, value, message))
            elif not on:
                self.active.discard(name)
        return fired

    def _check_watched_keys(self, row: dict) -> None:
        """After a few update rows, warn once for every alarm whose metric has never been logged."""
        self.seen_keys.update(row)
        if self.missing_checked or K.LOSS_CRITIC not in row:
            return
        self.update_rows += 1
        if self.update_rows < MISSING_KEY_ROWS:
            return
        self.missing_checked = True
        for alarm, keys in self.watched.items():
            missing = [k for k in keys if k not in self.seen_keys]
            if missing:
                self.emit(f"smfp: WARNING alarm {alarm} is off: its metric {', '.join(missing)} was never logged")

    def on_row(self, step: int, row: dict) -> None:
        """As a logger subscriber: the alarms watch the training rows (the ones with ``train/sps``)."""
        if OBSERVED_KEY in row:
            self.observe(step, row)

    def observe(self, step: int, row: dict) -> list[Alert]:
        self._check_watched_keys(row)
        fired = []
        for name, value, message in self._update(step, row):
            alert = Alert(int(step), name, message, float(value))
            fired.append(alert)
            self.alerts.append(alert)
            self.emit(f"smfp: ALERT {name} at step {step}: {message}")
            with open(self.path, "a") as f:
                f.write(json.dumps({**asdict(alert), "value": value if math.isfinite(value) else str(value)}) + "\n")
        return fired

    def summary(self) -> str:
        if not self.alerts:
            return "no alarms"
        counts: dict[str, list[int]] = {}
        for a in self.alerts:
            counts.setdefault(a.alarm, []).append(a.step)
        return "; ".join(f"{name} x{len(steps)} (first at step {steps[0]})" for name, steps in counts.items())
