"""Philox4x32-10 in plain torch integer ops: the device-portable reference.

Every value lives in an int64 tensor holding an unsigned 32-bit word, and no
intermediate ever exceeds 2**63: the 32x32-bit products are split into 16-bit
halves of the multiplier, so the result is exact on every device torch runs on
(no reliance on signed-overflow wrapping). This is the reference the fast
paths (numba on CPU, Triton on CUDA) are tested against, bit for bit.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9  # golden ratio, key schedule
PHILOX_W1 = 0xBB67AE85  # sqrt(3) - 1, key schedule
PHILOX_ROUNDS = 10


def _mulhilo(a: torch.Tensor, multiplier: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of the 64-bit product ``a * multiplier``.

    ``a`` holds values < 2**32; splitting the constant into 16-bit halves keeps
    each partial product < 2**48, so int64 never overflows.
    """
    m_lo = multiplier & 0xFFFF
    m_hi = multiplier >> 16
    p_lo = a * m_lo  # < 2**48
    p_hi = a * m_hi  # < 2**48
    # a*M = p_hi * 2**16 + p_lo
    mid = p_hi + (p_lo >> 16)  # < 2**49
    hi = mid >> 16
    lo = ((mid & 0xFFFF) << 16) | (p_lo & 0xFFFF)
    return hi & MASK32, lo


def philox4x32_10(
    counter: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    key: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply Philox4x32-10 to broadcastable int64 counter words, one key."""
    c0, c1, c2, c3 = counter
    k0, k1 = key[0] & MASK32, key[1] & MASK32
    for round_index in range(PHILOX_ROUNDS):
        if round_index:
            k0 = (k0 + PHILOX_W0) & MASK32
            k1 = (k1 + PHILOX_W1) & MASK32
        hi0, lo0 = _mulhilo(c0, PHILOX_M0)
        hi1, lo1 = _mulhilo(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def philox_words(blocks: torch.Tensor, tensor_id: int, stream: int, key: tuple[int, int]) -> torch.Tensor:
    """Words for counters ``(block, tensor_id, stream, 0)``: int64 tensor ``[n, 4]``."""
    blocks = blocks.to(torch.int64)
    c1 = torch.full_like(blocks, tensor_id & MASK32)
    c2 = torch.full_like(blocks, stream & MASK32)
    c3 = torch.zeros_like(blocks)
    r0, r1, r2, r3 = philox4x32_10((blocks, c1, c2, c3), key)
    return torch.stack((r0, r1, r2, r3), dim=-1)
