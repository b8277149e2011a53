"""Fast CPU path: the spec v1 stream fused with the update, compiled by numba.

One pass over memory per call: each parallel task owns whole 128-element
blocks, runs one Philox call per entry per block, accumulates the float32
``delta`` for its block in entry order, then writes ``src + delta`` rounded to
the storage dtype. The arithmetic is the reference's, so the bits are too
(tests compare them). float32 and bfloat16 storage are compiled here;
bfloat16 is handled as its raw 16-bit pattern, widened by a shift and
narrowed with round-to-nearest-even exactly as torch does.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Any

import numba
import numpy as np
import torch
from numba import njit, prange, uint32, uint64

from fedseed.perturb.stream import BLOCK, STREAM_PERTURB, seed_key

_M0 = uint64(0xD2511F53)
_M1 = uint64(0xCD9E8D57)
_W0 = uint64(0x9E3779B9)
_W1 = uint64(0xBB67AE85)
_MASK32 = uint64(0xFFFFFFFF)
_F32_NAN = np.array([0x7FC00000], dtype=np.uint32).view(np.float32)[0]

# Blocks per parallel task. A task allocates its scratch once, not once per 128-element
# block: numba's allocator serialises the threads, and with one allocation per block the
# threaded kernel ran no faster on 2 threads than on 1 (0.29 vs 0.28 Gelem/s; 64 blocks
# per task: 0.67 on 2 threads, 0.38 on 1; measured on the 2-core CI machine).
TASK_BLOCKS = 64


@njit(inline="always", cache=True)
def _philox(
    c0: np.uint64, c1: np.uint64, c2: np.uint64, c3: np.uint64, k0: np.uint64, k1: np.uint64
) -> tuple[np.uint64, np.uint64, np.uint64, np.uint64]:  # pragma: no cover - compiled
    for r in range(10):
        if r:
            k0 = (k0 + _W0) & _MASK32
            k1 = (k1 + _W1) & _MASK32
        p0 = _M0 * c0  # < 2**64: exact in uint64
        p1 = _M1 * c2
        n0 = ((p1 >> uint64(32)) ^ c1 ^ k0) & _MASK32
        n2 = ((p0 >> uint64(32)) ^ c3 ^ k1) & _MASK32
        c0, c1, c2, c3 = n0, p1 & _MASK32, n2, p0 & _MASK32
    return c0, c1, c2, c3


@njit(inline="always", cache=True)
def _block_delta(
    block: int,
    tensor_id: np.uint64,
    stream: np.uint64,
    keys0: np.ndarray,
    keys1: np.ndarray,
    coefs: np.ndarray,
    delta: np.ndarray,
) -> None:  # pragma: no cover - compiled
    for i in range(BLOCK):
        delta[i] = np.float32(0.0)
    for k in range(coefs.shape[0]):
        r0, r1, r2, r3 = _philox(
            uint64(block), tensor_id, stream, uint64(0), uint64(keys0[k]), uint64(keys1[k])
        )
        c = coefs[k]
        for w in range(4):
            word = r0 if w == 0 else (r1 if w == 1 else (r2 if w == 2 else r3))
            for j in range(32):
                if (word >> uint64(j)) & uint64(1):
                    delta[32 * w + j] += c
                else:
                    delta[32 * w + j] -= c


@njit(parallel=True, cache=True)
def _apply_f32(
    src: np.ndarray,
    dst: np.ndarray,
    mask: np.ndarray,
    tensor_id: int,
    keys0: np.ndarray,
    keys1: np.ndarray,
    coefs: np.ndarray,
) -> None:  # pragma: no cover - compiled
    n = src.shape[0]
    use_mask = mask.shape[0] == n
    num_blocks = (n + BLOCK - 1) // BLOCK
    for chunk in prange((num_blocks + TASK_BLOCKS - 1) // TASK_BLOCKS):
        delta = np.empty(BLOCK, dtype=np.float32)  # once per task: see TASK_BLOCKS
        for b in range(chunk * TASK_BLOCKS, min(num_blocks, (chunk + 1) * TASK_BLOCKS)):
            _block_delta(b, uint64(tensor_id), uint64(STREAM_PERTURB), keys0, keys1, coefs, delta)
            start = b * BLOCK
            stop = min(n, start + BLOCK)
            for i in range(start, stop):
                d = delta[i - start]
                if use_mask and not mask[i]:
                    d = np.float32(0.0)
                y = src[i] + d
                dst[i] = y if y == y else _F32_NAN  # canonical NaN (reference.CANONICAL_NAN_BITS)


@njit(parallel=True, cache=True)
def _apply_rows_f32(
    src: np.ndarray,
    rows: np.ndarray,
    dst: np.ndarray,
    mask: np.ndarray,
    tensor_id: int,
    keys0: np.ndarray,
    keys1: np.ndarray,
    coefs: np.ndarray,
) -> None:  # pragma: no cover - compiled
    dim = src.shape[1]
    use_mask = mask.shape[0] == src.shape[0]
    for u in prange(rows.shape[0]):
        delta = np.empty(BLOCK, dtype=np.float32)
        r = rows[u]
        first = r * dim
        for b in range(first // BLOCK, (first + dim - 1) // BLOCK + 1):
            _block_delta(b, uint64(tensor_id), uint64(STREAM_PERTURB), keys0, keys1, coefs, delta)
            lo = max(first, b * BLOCK)
            hi = min(first + dim, (b + 1) * BLOCK)
            for i in range(lo, hi):
                c = i - first
                d = delta[i - b * BLOCK]
                if use_mask and not mask[r, c]:
                    d = np.float32(0.0)
                y = src[r, c] + d
                dst[u, c] = y if y == y else _F32_NAN


@njit(parallel=True, cache=True)
def _apply_bf16(
    src: np.ndarray,
    dst: np.ndarray,
    mask: np.ndarray,
    tensor_id: int,
    keys0: np.ndarray,
    keys1: np.ndarray,
    coefs: np.ndarray,
) -> None:  # pragma: no cover - compiled
    n = src.shape[0]
    use_mask = mask.shape[0] == n
    num_blocks = (n + BLOCK - 1) // BLOCK
    for chunk in prange((num_blocks + TASK_BLOCKS - 1) // TASK_BLOCKS):
        delta = np.empty(BLOCK, dtype=np.float32)  # once per task: see TASK_BLOCKS
        widened = np.empty(BLOCK, dtype=np.uint32)
        values = widened.view(np.float32)
        for b in range(chunk * TASK_BLOCKS, min(num_blocks, (chunk + 1) * TASK_BLOCKS)):
            _block_delta(b, uint64(tensor_id), uint64(STREAM_PERTURB), keys0, keys1, coefs, delta)
            start = b * BLOCK
            stop = min(n, start + BLOCK)
            for i in range(start, stop):
                widened[i - start] = uint32(src[i]) << uint32(16)
            for i in range(start, stop):
                d = delta[i - start]
                if use_mask and not mask[i]:
                    d = np.float32(0.0)
                values[i - start] = values[i - start] + d
            for i in range(start, stop):
                bits = widened[i - start]
                if (bits & uint32(0x7FFFFFFF)) > uint32(0x7F800000):  # NaN: the canonical one
                    dst[i] = np.uint16(0x7FC0)
                else:  # round to nearest even, as c10::BFloat16 does
                    rounding = uint32(0x7FFF) + ((bits >> uint32(16)) & uint32(1))
                    dst[i] = np.uint16((bits + rounding) >> uint32(16))


_EMPTY_MASK = np.zeros(0, dtype=np.bool_)

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)
_EMPTY_MASK_2D = np.zeros((0, 0), dtype=np.bool_)


# Below this many elements a tensor is done on the calling thread: a parallel region costs more
# than it saves, and every region wakes numba's OpenMP team (below).
PARALLEL_MIN_NUMEL = 1 << 16


def _serial_twin(kernel: Any) -> Any:
    """``kernel`` compiled without threads (prange runs as range): identical arithmetic and bits.

    The twin is cached under its own name. numba names a cache entry after the function's
    qualified name and line, not its flags: ``njit(cache=True)(kernel.py_func)`` shared the
    threaded kernel's entry, so whichever compiled first served both. The threaded path ran
    on one thread (MiniLM's perturbation pass 21.7 -> 38 ms), or the serial one started
    numba's thread team (the contention between processes it exists to avoid).
    """
    fn = kernel.py_func
    twin = types.FunctionType(fn.__code__, fn.__globals__, f"{fn.__name__}_serial", fn.__defaults__)
    twin.__qualname__ = f"{fn.__qualname__}_serial"
    return njit(cache=True)(twin)


_apply_f32_serial = _serial_twin(_apply_f32)
_apply_rows_f32_serial = _serial_twin(_apply_rows_f32)
_apply_bf16_serial = _serial_twin(_apply_bf16)


def _parallel(numel: int) -> bool:
    """Whether to use the threaded kernel; sizes numba's team to torch's thread count.

    numba starts one OpenMP thread per core whatever ``torch.set_num_threads`` says, and its
    idle threads spin: two single-threaded fedseed processes on a 2-core machine ran their
    ZO steps 12x slower (0.17 s -> 2.3 s per MiniLM step, measured), their plain forwards
    3x slower too. With torch on one thread, numba's team is never started.
    """
    threads = torch.get_num_threads()
    if threads == 1 or numel < PARALLEL_MIN_NUMEL:
        return False
    wanted = min(threads, numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    if numba.get_num_threads() != wanted:
        numba.set_num_threads(wanted)
    return True


def _keys(seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    keys = [seed_key(s) for s in seeds]
    return (
        np.array([k[0] for k in keys], dtype=np.uint32),
        np.array([k[1] for k in keys], dtype=np.uint32),
    )


def apply_entries_rows(
    src: torch.Tensor,
    rows: torch.Tensor,
    dst: torch.Tensor,
    tensor_id: int,
    seeds: Sequence[int],
    coefs: Sequence[float],
    mask: torch.Tensor | None = None,
) -> None:
    """Same contract as :func:`fedseed.perturb.reference.apply_entries_rows` (float32 only)."""
    if src.dtype != torch.float32:
        raise TypeError("the numba row path handles float32")
    keys0, keys1 = _keys(seeds)
    mask_np = _EMPTY_MASK_2D if mask is None else mask.detach().numpy()
    kernel = _apply_rows_f32 if _parallel(rows.numel() * src.shape[-1]) else _apply_rows_f32_serial
    kernel(
        src.detach().numpy(), rows.to(torch.int64).numpy(), dst.detach().numpy(), mask_np,
        tensor_id, keys0, keys1, np.asarray(coefs, dtype=np.float32),
    )  # fmt: skip


def apply_entries(
    src: torch.Tensor,
    dst: torch.Tensor,
    tensor_id: int,
    seeds: Sequence[int],
    coefs: Sequence[float],
    mask: torch.Tensor | None = None,
) -> None:
    """Same contract as :func:`fedseed.perturb.reference.apply_entries`, on CPU."""
    keys0, keys1 = _keys(seeds)
    coef32 = np.asarray(coefs, dtype=np.float32)
    mask_np = _EMPTY_MASK if mask is None else mask.detach().reshape(-1).numpy()
    src, dst = src.detach(), dst.detach()  # numpy views share memory; no autograd here
    if src.dtype == torch.float32:
        kernel = _apply_f32 if _parallel(src.numel()) else _apply_f32_serial
        kernel(src.reshape(-1).numpy(), dst.reshape(-1).numpy(), mask_np, tensor_id, keys0, keys1, coef32)
    elif src.dtype == torch.bfloat16:
        kernel_bf16 = _apply_bf16 if _parallel(src.numel()) else _apply_bf16_serial
        kernel_bf16(
            src.reshape(-1).view(torch.int16).numpy().view(np.uint16),
            dst.reshape(-1).view(torch.int16).numpy().view(np.uint16),
            mask_np,
            tensor_id,
            keys0,
            keys1,
            coef32,
        )
    else:
        raise TypeError(f"the numba path handles {SUPPORTED_DTYPES}, not {src.dtype}")
