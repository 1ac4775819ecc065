"""Non-finite updates: the learner skips them; after ``--max-nonfinite`` in a row, the last good checkpoint
is restored and the learning rates are set to the configured ones x factor^recoveries (never below
``MIN_RECOVERY_LR_FRACTION`` of them)."""

from __future__ import annotations

from typing import Callable

from smfp import keys as K
from smfp.config import TrainConfig
from smfp.storage.checkpoint import latest_checkpoint
from smfp.storage.rundir import RunDir
from smfp.training.collect import TrainingDiverged
from smfp.update import Learner

MIN_RECOVERY_LR_FRACTION = 1e-3


def recovery_lr_factor(cfg: TrainConfig, recoveries: int) -> float:
    """The learning rates after ``recoveries`` non-finite recoveries, as a fraction of the configured ones."""
    return max(cfg.monitor.recovery_lr_factor ** recoveries, MIN_RECOVERY_LR_FRACTION)


class Recovery:
    """Watches the learner's run of non-finite updates; ``count`` is saved in checkpoints."""

    def __init__(self, cfg: TrainConfig, run_dir: RunDir, learner: Learner, log: Callable[[int, dict], object],
                 message: Callable[[str], None], count: int = 0):
        self.cfg, self.run_dir, self.learner = cfg, run_dir, learner
        self.log, self.message = log, message
        self.count = count

    def check(self, step: int) -> None:
        if self.learner.consecutive_nonfinite >= self.cfg.monitor.max_nonfinite:
            self.recover(step)

    def recover(self, step: int) -> None:
        """Reload the last good checkpoint and set the lr to the configured one x factor^recoveries (the
        checkpoint's own lr may already be lowered)."""
        good = latest_checkpoint(self.run_dir.path)
        if good is None:
            raise TrainingDiverged(f"training diverged at step {step} ({self.learner.consecutive_nonfinite} "
                                   "non-finite updates in a row) before any checkpoint was written; lower the "
                                   "learning rates or use --grad-clip")
        skipped = self.learner.skipped_updates
        self.learner.load_state_dict(good["learner"])
        self.learner.skipped_updates = skipped
        self.count += 1
        factor = recovery_lr_factor(self.cfg, self.count)
        self.learner.set_learning_rate_factor(factor)
        self.message(f"smfp: {self.cfg.monitor.max_nonfinite} non-finite updates in a row at step {step}: restored "
                     f"the checkpoint of step {good['step']} and set the learning rates to {factor:g} x the "
                     f"configured ones (recovery {self.count})")
        self.log(step, {K.RECOVERIES: 1.0, K.SKIPPED_UPDATES: float(skipped)})


__all__ = ["MIN_RECOVERY_LR_FRACTION", "Recovery", "recovery_lr_factor"]
