"""Storage, the ground floor: atomic file writes and complete, safely loadable checkpoints."""
