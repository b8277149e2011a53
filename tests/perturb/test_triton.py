"""Triton kernels == reference, bit for bit (runs only where CUDA and triton exist)."""

from __future__ import annotations

import pytest
import torch

from fedseed.perturb import reference
from tests.conftest import requires_gpu

pytestmark = [pytest.mark.gpu, requires_gpu]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("numel", [1, 127, 128, 4097, 1 << 20])
@pytest.mark.parametrize("num_entries", [0, 2, 63])  # +1 below: 1, 3, 64 entries
def test_triton_equals_reference(dtype: torch.dtype, numel: int, num_entries: int) -> None:
    from fedseed.perturb import triton_kernels

    g = torch.Generator().manual_seed(numel + num_entries)
    src = torch.randn(numel, generator=g).to(dtype)
    seeds = [int(s) for s in torch.randint(0, 1 << 62, (num_entries,), generator=g)] + [(1 << 64) - 1]
    coefs = [float(c) for c in torch.randn(num_entries + 1, generator=g) * 1e-3]
    mask = torch.rand(numel, generator=g) < 0.5
    for m in (None, mask):
        expected = torch.empty_like(src)
        reference.apply_entries(src, expected, 0x9ABCDEF0, seeds, coefs, m)
        got = torch.empty_like(src, device="cuda")
        triton_kernels.apply_entries(
            src.cuda(), got, 0x9ABCDEF0, seeds, coefs, None if m is None else m.cuda()
        )
        assert torch.equal(got.cpu().view(torch.uint8), expected.view(torch.uint8))


def test_reference_on_cuda_equals_reference_on_cpu() -> None:
    cpu_signs = reference.signs(42, 7, 100_000, torch.device("cpu"))
    gpu_signs = reference.signs(42, 7, 100_000, torch.device("cuda"))
    assert torch.equal(gpu_signs.cpu(), cpu_signs)
