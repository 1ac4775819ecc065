"""The update rule: soft critic regression and the entropic mirror-descent actor step."""

from smfp.update.learner import Learner
from smfp.update.losses import actor_loss, critic_loss, soft_target

__all__ = ["Learner", "actor_loss", "critic_loss", "soft_target"]
