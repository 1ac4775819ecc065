"""Replay storage."""

from smfp.buffer.replay import Batch, ReplayBuffer

__all__ = ["Batch", "ReplayBuffer"]
