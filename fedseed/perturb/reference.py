"""Spec v1 perturbations in plain torch ops: portable, exact, and the yardstick.

Any device torch supports runs this code and gets the same bits; the fast
paths in :mod:`fedseed.perturb.cpu` and :mod:`fedseed.perturb.triton_kernels`
must agree with it exactly (tests compare them). Work proceeds in chunks of
blocks so that temporaries stay small whatever the tensor size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedseed.perturb.philox import philox_words
from fedseed.perturb.stream import BLOCK, STREAM_PERTURB, seed_key

CHUNK_BLOCKS = 8192  # 1 Mi elements per chunk: bounded temporaries

# Bit patterns (as signed ints of the storage width) of the one NaN every backend stores.
CANONICAL_NAN_BITS = {torch.float32: 0x7FC00000, torch.bfloat16: 0x7FC0, torch.float16: 0x7E00}


def _bit_shifts(device: torch.device) -> torch.Tensor:
    return torch.arange(32, dtype=torch.int64, device=device)


def block_signs(
    seed: int, tensor_id: int, first_block: int, num_blocks: int, device: torch.device
) -> torch.Tensor:
    """Signs of ``num_blocks`` whole blocks from ``first_block``: int8 ``[num_blocks*128]``."""
    blocks = torch.arange(first_block, first_block + num_blocks, dtype=torch.int64, device=device)
    words = philox_words(blocks, tensor_id, STREAM_PERTURB, seed_key(seed))  # [n, 4]
    bits = (words.unsqueeze(-1) >> _bit_shifts(device)) & 1  # [n, 4, 32]: element 128b+32w+j
    return (bits * 2 - 1).to(torch.int8).reshape(-1)


def signs_at(seed: int, tensor_id: int, indices: torch.Tensor) -> torch.Tensor:
    """Signs of arbitrary flat element ``indices`` (int64): int8, same shape.

    One Philox call per element rather than per block: meant for small,
    scattered sets such as the embedding rows a batch looks up.
    """
    idx = indices.to(torch.int64)
    words = philox_words(idx >> 7, tensor_id, STREAM_PERTURB, seed_key(seed))  # [..., 4]
    word = words.gather(-1, ((idx & 127) >> 5).unsqueeze(-1)).squeeze(-1)
    return (((word >> (idx & 31)) & 1) * 2 - 1).to(torch.int8)


def apply_entries_rows(
    src: torch.Tensor,
    rows: torch.Tensor,
    dst: torch.Tensor,
    tensor_id: int,
    seeds: Sequence[int],
    coefs: Sequence[float],
    mask: torch.Tensor | None = None,
) -> None:
    """``dst[u] <- storage(float32(src[rows[u]]) + Σ_k coef_k z_k[rows[u]])`` for a 2-D ``src``.

    The perturbed rows of a matrix, addressed as in the whole tensor: an
    embedding lookup needs only the rows of the tokens in the batch.
    """
    dim = src.shape[1]
    indices = rows.to(torch.int64).unsqueeze(1) * dim + torch.arange(dim, device=src.device)  # [U, dim]
    coef32 = torch.tensor(list(coefs), dtype=torch.float32, device=src.device)
    delta = torch.zeros(indices.shape, dtype=torch.float32, device=src.device)
    for k, seed in enumerate(seeds):
        delta += coef32[k] * signs_at(seed, tensor_id, indices).to(torch.float32)
    if mask is not None:
        delta = torch.where(mask[rows], delta, torch.zeros_like(delta))
    dst.copy_(canonical_nan((src[rows].to(torch.float32) + delta).to(dst.dtype)))


def signs(seed: int, tensor_id: int, numel: int, device: torch.device) -> torch.Tensor:
    """All ``numel`` Rademacher signs of one tensor, int8 +1/-1 in flattened order."""
    out = torch.empty(numel, dtype=torch.int8, device=device)
    num_blocks = -(-numel // BLOCK)
    for first in range(0, num_blocks, CHUNK_BLOCKS):
        n = min(CHUNK_BLOCKS, num_blocks - first)
        chunk = block_signs(seed, tensor_id, first, n, device)
        start = first * BLOCK
        stop = min(numel, start + n * BLOCK)
        out[start:stop] = chunk[: stop - start]
    return out


def apply_entries(
    src: torch.Tensor,
    dst: torch.Tensor,
    tensor_id: int,
    seeds: Sequence[int],
    coefs: Sequence[float],
    mask: torch.Tensor | None = None,
) -> None:
    """``dst <- storage(float32(src) + sum_k coef_k * z_k)``, the spec's update arithmetic.

    ``src`` and ``dst`` are contiguous tensors of the same shape and dtype; they
    may be the same tensor (an in-place update). ``coefs`` are rounded to
    float32 first; the sum runs in float32 in entry order. Elements where
    ``mask`` is False get ``z = 0``.
    """
    flat_src = src.reshape(-1)
    flat_dst = dst.reshape(-1)
    flat_mask = None if mask is None else mask.reshape(-1)
    numel = flat_src.numel()
    coef32 = torch.tensor(list(coefs), dtype=torch.float32, device=src.device)
    num_blocks = -(-numel // BLOCK)
    for first in range(0, num_blocks, CHUNK_BLOCKS):
        n = min(CHUNK_BLOCKS, num_blocks - first)
        start = first * BLOCK
        stop = min(numel, start + n * BLOCK)
        delta = torch.zeros(stop - start, dtype=torch.float32, device=src.device)
        for k, seed in enumerate(seeds):
            z = block_signs(seed, tensor_id, first, n, src.device)[: stop - start]
            delta += coef32[k] * z.to(torch.float32)  # coef * (+-1) is exact
        if flat_mask is not None:
            delta = torch.where(flat_mask[start:stop], delta, torch.zeros_like(delta))
        updated = flat_src[start:stop].to(torch.float32) + delta
        flat_dst[start:stop] = canonical_nan(updated.to(flat_dst.dtype))  # round to nearest even


def canonical_nan(values: torch.Tensor) -> torch.Tensor:
    """Replace every NaN by the dtype's one canonical quiet NaN (see CANONICAL_NAN_BITS).

    IEEE leaves NaN payloads to the implementation (torch's own CPU bfloat16
    conversion yields 0x7FC0 or 0xFFFF depending on the code path), so a NaN,
    should one ever arise, is pinned to one bit pattern for all backends.
    """
    nan = torch.isnan(values)
    if not bool(nan.any()):
        return values
    int_dtype = torch.int32 if values.dtype == torch.float32 else torch.int16
    bits = values.view(int_dtype)
    canonical = torch.tensor(CANONICAL_NAN_BITS[values.dtype], dtype=int_dtype, device=values.device)
    return torch.where(nan, canonical, bits).view(values.dtype)
