"""Environments: any Gymnasium task with a continuous Box action space."""

from smfp.envs import multimodal  # noqa: F401  (registers the smfp/ tasks with Gymnasium on import)
from smfp.envs.make import EnvError, make_env, env_dims

__all__ = ["EnvError", "make_env", "env_dims"]
