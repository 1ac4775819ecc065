"""Policy classes: one interface (``Policy``), several generators of actions."""

from smfp.config import ACT_MODES
from smfp.policies.base import Policy, PolicySample, TransportPolicy
from smfp.policies.flow import FlowPolicy
from smfp.policies.gaussian import GaussianPolicy
from smfp.policies.smfp import SMFPPolicy

POLICY_CLASSES = {"gaussian": GaussianPolicy, "smfp": SMFPPolicy, "flow": FlowPolicy}


def policy_from_config(kind: str, obs_dim: int, act_dim: int, cfg) -> Policy:
    """The ``kind`` policy a ``PolicyConfig`` describes, exactly as ``smfp train`` builds it."""
    if kind not in POLICY_CLASSES:
        raise ValueError(f"unknown policy {kind!r}; choose one of {', '.join(POLICY_CLASSES)}")
    policy = POLICY_CLASSES[kind].from_config(obs_dim, act_dim, cfg)
    policy.log_det_eps = float(getattr(cfg, "squash_log_det_eps", 0.0))  # a training setting: not a constructor one
    return policy


def build_policy(kind: str, **kwargs) -> Policy:
    if kind not in POLICY_CLASSES:
        raise ValueError(f"unknown policy {kind!r}; choose one of {', '.join(POLICY_CLASSES)}")
    return POLICY_CLASSES[kind](**kwargs)


__all__ = ["ACT_MODES", "FlowPolicy", "GaussianPolicy", "Policy", "PolicySample", "SMFPPolicy", "POLICY_CLASSES", "TransportPolicy", "build_policy",
           "policy_from_config"]
