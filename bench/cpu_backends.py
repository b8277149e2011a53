"""Why numba for the CPU path: one perturbation pass, three implementations, one run.

    .venv/bin/python bench/cpu_backends.py

Compares, on float32 tensors of MiniLM's and SmolLM2's sizes, a single-entry
pass ``dst = src + coef*z`` with:
- the torch-integer reference (``fedseed.perturb.reference``),
- the same reference code under ``torch.compile`` (inductor, C++ on CPU),
- the numba kernel (``fedseed.perturb.cpu``),
- and, for scale, MeZO's ``torch.normal`` + ``add_``.
All three stream implementations must give identical bits; that is checked here too.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedseed.perturb import cpu, reference
from fedseed.perturb.philox import philox_words
from fedseed.perturb.stream import seed_key


def compiled_pass(src: torch.Tensor, blocks: torch.Tensor, key: tuple[int, int], coef: float) -> torch.Tensor:
    words = philox_words(blocks, 77, 0, key)  # [n, 4]
    bits = (words.unsqueeze(-1) >> torch.arange(32)) & 1  # [n, 4, 32]
    z = (bits * 2 - 1).to(torch.float32).reshape(-1)[: src.numel()]
    return src + coef * z


def median_time(fn: Callable[[], object], repeats: int = 3) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def measure_size(numel: int, compiled: Callable[..., torch.Tensor]) -> str:
    src = torch.randn(numel)
    out = torch.empty_like(src)
    key = seed_key(5)
    blocks = torch.arange(-(-numel // 128))
    start = time.perf_counter()
    via_compile = compiled(src, blocks, key, 1e-3)
    compile_s = time.perf_counter() - start
    reference.apply_entries(src, out, 77, [5], [1e-3])
    assert torch.equal(via_compile, out), "torch.compile result differs from the reference"
    cpu.apply_entries(src, out, 77, [5], [1e-3])  # warm (numba cache)
    assert torch.equal(via_compile, out), "numba result differs from the reference"
    ref_s = median_time(lambda: reference.apply_entries(src, out, 77, [5], [1e-3]), 1)
    comp_s = median_time(lambda: compiled(src, blocks, key, 1e-3))
    numba_s = median_time(lambda: cpu.apply_entries(src, out, 77, [5], [1e-3]))
    gen = torch.Generator().manual_seed(0)
    mezo_s = median_time(lambda: src.add_(torch.normal(0, 1, size=src.shape, generator=gen), alpha=1e-9))
    return (
        f"| {numel / 1e6:.1f} M | {ref_s * 1e3:.0f} ms | {comp_s * 1e3:.0f} ms ({compile_s:.1f} s) "
        f"| {numba_s * 1e3:.0f} ms | {mezo_s * 1e3:.0f} ms |"
    )


def main() -> None:
    compiled = torch.compile(compiled_pass, dynamic=False)
    print("| elements | reference | torch.compile (first call incl. compile) | numba | MeZO normal+add_ |")
    print("|---|---|---|---|---|")
    for numel in (22_700_000, 134_500_000):
        print(measure_size(numel, compiled))


if __name__ == "__main__":
    main()
