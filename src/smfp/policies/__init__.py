"""Policy classes: one interface (``Policy``), several generators of actions."""

from smfp.policies.base import ACT_MODES, Policy, PolicySample
from smfp.policies.flow import FlowPolicy
from smfp.policies.gaussian import GaussianPolicy
from smfp.policies.smfp import SMFPPolicy

POLICY_CLASSES = {"gaussian": GaussianPolicy, "smfp": SMFPPolicy, "flow": FlowPolicy}


def build_policy(kind: str, **kwargs) -> Policy:
    if kind not in POLICY_CLASSES:
        raise ValueError(f"unknown policy {kind!r}; choose one of {', '.join(POLICY_CLASSES)}")
    return POLICY_CLASSES[kind](**kwargs)


__all__ = ["ACT_MODES", "FlowPolicy", "GaussianPolicy", "Policy", "PolicySample", "SMFPPolicy", "POLICY_CLASSES", "build_policy"]
