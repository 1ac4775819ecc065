"""Matmul precision of the networks' hidden-to-hidden layers (``--precision``).

Inside ``matmul_precision(torch.bfloat16)`` the policy MLPs and the critic ensemble compute
their hidden-to-hidden layers (the 256 x 256 matmuls that dominate an update; layers narrower
than ``MIN_REDUCED_WIDTH`` excepted) in bfloat16:
on CPUs with AMX/avx512_bf16 such a matmul is several times faster than in float32. The
first layer (raw observations, actions, noise, times), the last layer (means, log-stds,
Q-values), the losses, the weights the optimisers hold and everything outside the context
(acting, evaluation, export) stay in float32. Outside the context nothing changes.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator, Optional

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}

# Narrower layers (e.g. SMFP's 64-wide sigma net) gain less from bfloat16 than the casts cost.
MIN_REDUCED_WIDTH = 128

_matmul_dtype: Optional[torch.dtype] = None


def matmul_dtype() -> Optional[torch.dtype]:
    """The reduced dtype of hidden-to-hidden layers, or None for float32 throughout."""
    return _matmul_dtype


@contextlib.contextmanager
def matmul_precision(dtype: Optional[torch.dtype]) -> Iterator[None]:
    """Run hidden-to-hidden layers in ``dtype`` (None: float32) inside the block."""
    global _matmul_dtype
    previous, _matmul_dtype = _matmul_dtype, dtype
    try:
        yield
    finally:
        _matmul_dtype = previous


def float32_matmuls(fn):
    """Decorator: ``fn`` always runs in float32 (e.g. a JVP that must not see bfloat16)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matmul_precision(None):
            return fn(*args, **kwargs)

    return wrapper
