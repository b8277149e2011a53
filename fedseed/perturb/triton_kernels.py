"""Fused CUDA kernels for stream v1, in Triton.

One kernel serves both uses:

- a perturbation pass: ``dst = storage(src + eps * z)`` into a temporary (one entry);
- a multi-entry replay: ``p = storage(p + Σ_k coef_k z_k)`` in place, many
  ``(seed, coef)`` entries in one pass over memory. Each program owns
  ``TILE_BLOCKS`` whole 128-element blocks, runs one Philox call per block per
  entry (128 signs each), accumulates ``delta`` in float32 registers in entry
  order, and reads and writes the tensor once.

The arithmetic is the reference's (plain float32 adds, no multiply, so no
FMA contraction; round-to-nearest-even on the store; bfloat16 widened and
rounded in integer arithmetic), so the bits match
:mod:`fedseed.perturb.reference`. ``tests/perturb/test_triton.py`` checks that
compiled on a GPU, and in Triton's CPU interpreter everywhere else (CI).
Importing this module needs triton.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from fedseed.perturb.reference import CANONICAL_NAN_BITS
from fedseed.perturb.stream import BLOCK, STREAM_PERTURB, seed_key

TILE_BLOCKS = 16  # 2,048 elements per program
_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@triton.jit
def _philox(c0, c1, c2, c3, k0, k1):
    # Philox4x32-10 on uint32 lanes (Salmon et al.; same rounds as the reference).
    for _ in tl.static_range(10):
        _c0 = c0
        _c2 = c2
        c0 = tl.umulhi(0xCD9E8D57, _c2) ^ c1 ^ k0
        c2 = tl.umulhi(0xD2511F53, _c0) ^ c3 ^ k1
        c1 = 0xCD9E8D57 * _c2
        c3 = 0xD2511F53 * _c0
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


# Scalars that change every call must not be specialised on (1, multiples of 16):
# that would compile new variants at run time, and turn a key word into a constexpr.
@triton.jit(do_not_specialize=["k0_single", "k1_single", "coef_single", "tensor_id", "stream"])
def _apply_kernel(
    src_ptr,  # src; viewed as int16 for bfloat16
    dst_bits_ptr,  # dst viewed as int32 (float32) or int16 (bfloat16, float16)
    mask_ptr,
    words_ptr,  # int64 [num_entries, 2]: key words k0, k1 (each < 2**32); unused if SINGLE
    coefs_ptr,  # float32 [num_entries]; unused if SINGLE
    k0_single,  # the one entry's key words and coefficient when SINGLE
    k1_single,
    coef_single,
    tensor_id,
    stream,
    n_elements,
    num_entries,
    SINGLE: tl.constexpr,
    HAS_MASK: tl.constexpr,
    TILE: tl.constexpr,
    STORE_DTYPE: tl.constexpr,
    BFLOAT16: tl.constexpr,  # STORE_DTYPE is bfloat16: widen and round in integer arithmetic
    CANONICAL_NAN: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    blocks = pid * TILE + tl.arange(0, TILE).to(tl.int64)  # [TILE] block indices
    cols = tl.arange(0, 128)  # element within the block
    offsets = blocks[:, None] * 128 + cols[None, :]  # [TILE, 128], int64
    in_bounds = offsets < n_elements
    word_index = cols // 32
    bit = (cols % 32).to(tl.uint32)

    c0 = blocks.to(tl.uint32)
    c1 = tl.zeros([TILE], dtype=tl.uint32) + tensor_id.to(tl.uint32)
    c2 = tl.zeros([TILE], dtype=tl.uint32) + stream.to(tl.uint32)
    c3 = tl.zeros([TILE], dtype=tl.uint32)

    delta = tl.zeros([TILE, 128], dtype=tl.float32)
    for k in range(num_entries):
        if SINGLE:
            k0 = k0_single.to(tl.uint32)
            k1 = k1_single.to(tl.uint32)
            # tl.full, not .to(): the interpreter passes a float argument as a Python float.
            coef = tl.full([], coef_single, tl.float32)
        else:
            k0 = tl.load(words_ptr + 2 * k).to(tl.uint32)
            k1 = tl.load(words_ptr + 2 * k + 1).to(tl.uint32)
            coef = tl.load(coefs_ptr + k)
        r0, r1, r2, r3 = _philox(c0, c1, c2, c3, k0, k1)
        w = tl.where(
            word_index[None, :] == 0,
            r0[:, None],
            tl.where(word_index[None, :] == 1, r1[:, None],
                     tl.where(word_index[None, :] == 2, r2[:, None], r3[:, None])),
        )  # fmt: skip
        positive = ((w >> bit[None, :]) & 1) == 1
        delta += tl.where(positive, coef, -coef)

    if HAS_MASK:
        keep = tl.load(mask_ptr + offsets, mask=in_bounds, other=0)
        delta = tl.where(keep != 0, delta, 0.0)
    if BFLOAT16:
        # src comes as int16 bits: widening is a 16-bit shift, exact for every
        # value (the CPU interpreter's bfloat16 -> float32 mishandles subnormals).
        src_bits = tl.load(src_ptr + offsets, mask=in_bounds, other=0).to(tl.uint16, bitcast=True)
        x = (src_bits.to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        x = tl.load(src_ptr + offsets, mask=in_bounds, other=0.0).to(tl.float32)
    y = x + delta
    # Store through an integer view so a NaN gets exactly the canonical pattern.
    if BFLOAT16:
        # Round to nearest even in integer arithmetic: the spec's rounding, spelled
        # out, so it does not depend on the conversion instruction (Triton's CPU
        # interpreter truncates float32 -> bfloat16). bfloat16 keeps float32's
        # exponent, so the carry handles subnormals and overflow to inf alike.
        y_bits = y.to(tl.uint32, bitcast=True)
        rounded = (y_bits + 0x7FFF + ((y_bits >> 16) & 1)) >> 16
        bits = rounded.to(tl.uint16).to(dst_bits_ptr.dtype.element_ty, bitcast=True)
    else:
        bits = y.to(STORE_DTYPE).to(dst_bits_ptr.dtype.element_ty, bitcast=True)
    bits = tl.where(y != y, CANONICAL_NAN, bits)
    tl.store(dst_bits_ptr + offsets, bits, mask=in_bounds)


def apply_entries(
    src: torch.Tensor,
    dst: torch.Tensor,
    tensor_id: int,
    seeds: Sequence[int],
    coefs: Sequence[float],
    mask: torch.Tensor | None = None,
) -> None:
    """Same contract as :func:`fedseed.perturb.reference.apply_entries`, on CUDA.

    No host-to-device copy per call for one entry (the perturbation pass): the
    key words and coefficient go as kernel arguments. A copy from pageable host
    memory blocks the host until the stream drains, which made a pass over
    OPT-1.3B's ~390 tensors 4x slower than MeZO's (measured on an H200). Several
    entries (a ledger step) go as device arrays, built once per step and reused
    for every tensor of it.
    """
    n = src.numel()
    mask_arg = mask.reshape(-1).view(torch.uint8) if mask is not None else src  # unused without mask
    int_dtype = torch.int32 if dst.dtype == torch.float32 else torch.int16
    src_arg = src.reshape(-1).view(torch.int16) if src.dtype == torch.bfloat16 else src.reshape(-1)
    grid = (triton.cdiv(triton.cdiv(n, BLOCK), TILE_BLOCKS),)
    single = len(seeds) == 1
    if single:
        k0, k1 = seed_key(seeds[0])
        words, coef32 = src, src  # unused
        coef_single = float(coefs[0])
    else:
        words, coef32 = _entry_arrays(src.device, tuple(seeds), tuple(float(c) for c in coefs))
        k0, k1, coef_single = 0, 0, 0.0
    _apply_kernel[grid](
        src_arg, dst.reshape(-1).view(int_dtype), mask_arg, words, coef32,
        k0, k1, coef_single, tensor_id, STREAM_PERTURB, n, len(seeds),
        SINGLE=single, HAS_MASK=mask is not None, TILE=TILE_BLOCKS, STORE_DTYPE=_TL_DTYPES[dst.dtype],
        BFLOAT16=dst.dtype == torch.bfloat16,
        CANONICAL_NAN=CANONICAL_NAN_BITS[dst.dtype],
    )  # fmt: skip


@functools.lru_cache(maxsize=4)
def _entry_arrays(
    device: torch.device, seeds: tuple[int, ...], coefs: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    words = torch.tensor([list(seed_key(s)) for s in seeds], dtype=torch.int64, device=device)
    return words, torch.tensor(coefs, dtype=torch.float32, device=device)
