"""Q-function ensembles."""

from smfp.critic.ensemble import QEnsemble

__all__ = ["QEnsemble"]
