"""Environments: any Gymnasium task with a continuous Box action space."""

from smfp.envs import multimodal  # noqa: F401  (registers the smfp/ tasks with Gymnasium on import)
from smfp.envs.make import EnvError, env_dims, make_env, quiet_native_stderr

__all__ = ["EnvError", "env_dims", "make_env", "quiet_native_stderr"]
