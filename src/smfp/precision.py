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
import os
from typing import Iterator, Optional

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
# CPU features that run bfloat16 products natively (AMX tiles; AVX-512 BF16 dot products); elsewhere bfloat16 is
# emulated and slower than float32.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")

# Narrower layers (e.g. SMFP's 64-wide sigma net) gain less from bfloat16 than the casts cost.
MIN_REDUCED_WIDTH = 128

_matmul_dtype: Optional[torch.dtype] = None


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty where it cannot be read)."""
    from smfp.provenance import cpuinfo

    return frozenset(cpuinfo().get("flags", "").split())


# Overrides the CPU's flags: 0 (fp32 under auto) or 1 (bf16 under auto), e.g. for a test suite whose numbers must
# not depend on the machine, or a virtual machine whose flags promise what its host does not run.
NATIVE_BF16_ENV = "SMFP_NATIVE_BF16"


def native_bf16() -> bool:
    """True when this CPU computes bfloat16 products natively (``NATIVE_BF16_FLAGS``; ``SMFP_NATIVE_BF16=0/1``
    overrides)."""
    forced = os.environ.get(NATIVE_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


def resolve_precision(name: str) -> str:
    """``auto`` -> ``bf16`` on a CPU with native bfloat16, else ``fp32``; ``fp32`` / ``bf16`` unchanged."""
    if name == "auto":
        return "bf16" if native_bf16() else "fp32"
    return name


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
