"""Triton kernels == reference, bit for bit.

On a CUDA machine the kernels run compiled. Everywhere else, if triton is
installed (it is in the dev extra), they run in Triton's CPU interpreter on CPU
tensors: the same kernel source, the same integer Philox, the same float32 sums
and the same rounding code, so CI checks the kernels' arithmetic without a GPU.

What only a GPU checks (``bench/gpu_check.sh`` runs this file there):
- the compiled code: the interpreter executes the kernel with NumPy, so it
  cannot show that the compiler kept the adds unfused (no FMA contraction) or
  that ``cvt.rn.f16.f32`` rounds as NumPy does;
- large tensors (over a million elements, 64 entries): the interpreter runs
  each program as NumPy calls and would take minutes;
- launch behaviour (argument specialisation, device-side entry arrays).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest
import torch

from fedseed.perturb import reference
from tests.conftest import cuda_ready

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False

ON_GPU = cuda_ready()
DEVICE = "cuda" if ON_GPU else "cpu"
pytestmark = [
    pytest.mark.skipif(not HAS_TRITON, reason="needs triton (the dev extra installs it)"),
    # NumPy's overflow warnings for the infinities test_rounding_ties_and_specials feeds in
    pytest.mark.filterwarnings("ignore::RuntimeWarning:triton.runtime.interpreter"),
]


@pytest.fixture(scope="module")
def kernels() -> ModuleType:
    """The kernel module: compiled on CUDA, in Triton's interpreter elsewhere (tests/conftest.py)."""
    module = importlib.import_module("fedseed.perturb.triton_kernels")
    if not ON_GPU and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no CUDA and TRITON_INTERPRET is not 1")
    return module


def _check(
    kernels: ModuleType,
    src: torch.Tensor,
    seeds: list[int],
    coefs: list[float],
    mask: torch.Tensor | None,
) -> None:
    expected = torch.empty_like(src)
    reference.apply_entries(src, expected, 0x9ABCDEF0, seeds, coefs, mask)
    got = torch.empty_like(src, device=DEVICE)
    kernels.apply_entries(
        src.to(DEVICE), got, 0x9ABCDEF0, seeds, coefs, None if mask is None else mask.to(DEVICE)
    )
    assert torch.equal(got.cpu().view(torch.uint8), expected.view(torch.uint8))


SIZES = [1, 127, 128, 4097] + ([1 << 20] if ON_GPU else [])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("numel", SIZES)
@pytest.mark.parametrize("num_entries", [1, 3, 64])
def test_triton_equals_reference(
    kernels: ModuleType, dtype: torch.dtype, numel: int, num_entries: int
) -> None:
    g = torch.Generator().manual_seed(numel + num_entries)
    src = torch.randn(numel, generator=g).to(dtype)
    # The last seed is the largest key (all ones): the key words' top bits matter.
    seeds = [int(s) for s in torch.randint(0, 1 << 62, (num_entries - 1,), generator=g)] + [(1 << 64) - 1]
    coefs = [float(c) for c in torch.randn(num_entries, generator=g) * 1e-3]
    mask = torch.rand(numel, generator=g) < 0.5
    for m in (None, mask):
        _check(kernels, src, seeds, coefs, m)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rounding_ties_and_specials(kernels: ModuleType, dtype: torch.dtype) -> None:
    """Every sum a tie, plus overflow, infinities, NaN and subnormals: round to nearest even."""
    ulp = 2.0 ** -(7 if dtype == torch.bfloat16 else 10)
    ties = 1.0 + torch.arange(128, dtype=torch.float32) * ulp  # x + or - ulp/2 is exactly halfway
    big = torch.finfo(dtype).max
    tiny = torch.finfo(dtype).smallest_normal
    specials = torch.tensor(
        [big, -big, float("inf"), float("-inf"), float("nan"), tiny, tiny / 4, -tiny / 2, 0.0, -0.0]
    )
    for values, coef in ((ties, ulp / 2), (specials, big / 2), (specials, tiny / 8)):
        src = values.to(dtype)
        _check(kernels, src, [12345], [coef], None)
        _check(kernels, src, [12345, 67890, (1 << 64) - 1], [coef, coef, -coef], None)


def test_reference_on_cuda_equals_reference_on_cpu() -> None:
    if not ON_GPU:
        pytest.skip("needs CUDA")
    cpu_signs = reference.signs(42, 7, 100_000, torch.device("cpu"))
    gpu_signs = reference.signs(42, 7, 100_000, torch.device("cuda"))
    assert torch.equal(gpu_signs.cpu(), cpu_signs)
