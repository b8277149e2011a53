"""Perturbation stream v1: seed-addressed Rademacher signs, bit-exact everywhere.

Three implementations of one arithmetic (``docs/spec/perturbation-stream-v1.md``):

- :mod:`~fedseed.perturb.reference`: torch integer ops, any device; the yardstick.
- :mod:`~fedseed.perturb.cpu`: numba-compiled fused pass for float32/bfloat16 on CPU.
- :mod:`~fedseed.perturb.triton_kernels`: fused Triton kernels on CUDA.

:func:`apply_entries` picks the fastest one that handles the tensor.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Literal

import torch

from fedseed.perturb import reference
from fedseed.perturb.stream import STREAM_NAME, Seed, as_seed, seed_key, tensor_id

__all__ = [
    "EXACT_DTYPES",
    "STREAM_NAME",
    "Backend",
    "Seed",
    "apply_entries",
    "apply_entries_rows",
    "as_seed",
    "seed_key",
    "signs",
    "tensor_id",
]

log = logging.getLogger(__name__)

Backend = Literal["auto", "reference", "numba", "triton"]

# Storage dtypes for which float32(p) + delta, rounded back, is the spec's arithmetic.
EXACT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def signs(seed: int, name: str, numel: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The ``numel`` Rademacher signs (int8, +1/-1, flattened order) of tensor ``name``."""
    if numel < 0:
        raise ValueError(f"numel must be >= 0, got {numel}")
    return reference.signs(as_seed(seed), tensor_id(name), numel, torch.device(device))


@functools.cache
def _triton_ready() -> bool:
    try:
        from fedseed.perturb import triton_kernels  # noqa: F401  (import checks triton)
    except ImportError:
        log.info("triton is not importable; CUDA tensors use the reference path")
        return False
    return True


def resolve_backend(tensor: torch.Tensor, backend: Backend = "auto") -> Backend:
    """Which implementation :func:`apply_entries` uses for ``tensor``."""
    if backend != "auto":
        return backend
    if tensor.device.type == "cuda" and _triton_ready():
        return "triton"
    if tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.bfloat16):
        return "numba"
    return "reference"


def apply_entries(
    src: torch.Tensor,
    dst: torch.Tensor,
    tensor_id: int,
    seeds: Sequence[int],
    coefs: Sequence[float],
    mask: torch.Tensor | None = None,
    backend: Backend = "auto",
) -> None:
    """``dst <- storage(float32(src) + sum_k coef_k * z_k)`` for one tensor.

    ``z_k`` is the sign vector of ``(seeds[k], tensor_id)``; the float32 sum runs
    in entry order (one "ledger step"). ``dst`` may be ``src`` (in place).
    Elements where ``mask`` is False are left at ``src`` (``z = 0``).
    """
    if src.shape != dst.shape or src.dtype != dst.dtype or src.device != dst.device:
        raise ValueError("src and dst must share shape, dtype and device")
    if not (src.is_contiguous() and dst.is_contiguous()):
        raise ValueError("apply_entries needs contiguous tensors")
    if len(seeds) != len(coefs):
        raise ValueError(f"{len(seeds)} seeds but {len(coefs)} coefficients")
    if src.dtype not in EXACT_DTYPES:
        raise TypeError(f"dtype {src.dtype} cannot be perturbed exactly (spec v1)")
    if not seeds:
        if dst.data_ptr() != src.data_ptr():
            dst.copy_(src)
        return
    chosen = resolve_backend(src, backend)
    if chosen == "numba":
        from fedseed.perturb import cpu

        cpu.apply_entries(src, dst, tensor_id, seeds, coefs, mask)
    elif chosen == "triton":
        from fedseed.perturb import triton_kernels

        triton_kernels.apply_entries(src, dst, tensor_id, seeds, coefs, mask)
    else:
        reference.apply_entries(src, dst, tensor_id, seeds, coefs, mask)


def apply_entries_rows(
    src: torch.Tensor,
    rows: torch.Tensor,
    dst: torch.Tensor,
    tensor_id: int,
    seeds: Sequence[int],
    coefs: Sequence[float],
    mask: torch.Tensor | None = None,
    backend: Backend = "auto",
) -> None:
    """Perturbed rows ``dst[u] = storage(src[rows[u]] + Σ_k coef_k z_k[rows[u]])`` of a matrix.

    Elements keep their addresses in the whole tensor, so the rows equal those
    of :func:`apply_entries` on all of ``src``. ``dst`` is ``[len(rows), src.shape[1]]``.
    """
    if src.dim() != 2 or dst.shape != (rows.numel(), src.shape[1]) or dst.dtype != src.dtype:
        raise ValueError("apply_entries_rows needs a 2-D src and dst of shape [len(rows), src.shape[1]]")
    if src.dtype not in EXACT_DTYPES:
        raise TypeError(f"dtype {src.dtype} cannot be perturbed exactly (spec v1)")
    if resolve_backend(src, backend) == "numba" and src.dtype == torch.float32:
        from fedseed.perturb import cpu

        cpu.apply_entries_rows(src, rows, dst, tensor_id, seeds, coefs, mask)
    else:
        reference.apply_entries_rows(src, rows, dst, tensor_id, seeds, coefs, mask)
