"""signs() and the fused CPU path follow spec v1 bit for bit."""

from __future__ import annotations

import zlib
from typing import Any

import pytest
import torch

from fedseed import perturb
from fedseed.perturb import cpu, reference
from fedseed.perturb.philox import philox_words
from fedseed.perturb.stream import seed_key


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(
        {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[t.dtype]
    )


def test_signs_reproduce_spec_examples(kat: dict[str, Any]) -> None:
    for ex in kat["stream_v1_rademacher_examples"]:
        s = perturb.signs(ex["seed"], ex["name"], ex["numel"])
        text = "".join("+" if v > 0 else "-" for v in s.tolist())
        assert s.dtype == torch.int8
        assert text[:40] == ex["first_40_signs"]
        assert text[-10:] == ex["last_10_signs"]
        assert int(s.sum()) == ex["sum"]


def test_sign_layout_is_bit_j_of_word_w_of_block_b() -> None:
    # Prepare: an independent reading of the spec, element by element.
    seed, name, numel = 0xFEDCBA9876543210, "encoder.layer.3.output.dense.weight", 700
    tid = zlib.crc32(name.encode())
    words = philox_words(torch.arange(6), tid, 0, seed_key(seed))
    # Execute
    s = perturb.signs(seed, name, numel)
    # Assert
    for i in range(numel):
        b, w, j = i // 128, (i % 128) // 32, i % 32
        assert s[i] == (1 if (int(words[b, w]) >> j) & 1 else -1)


def test_tensor_id_is_crc32_of_the_name() -> None:
    assert perturb.tensor_id("classifier.bias") == zlib.crc32(b"classifier.bias")
    a = perturb.signs(1, "a.weight", 256)
    b = perturb.signs(1, "b.weight", 256)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("seed", [0, 1, (1 << 64) - 1])
def test_extreme_seeds_are_valid(seed: int) -> None:
    assert perturb.signs(seed, "x", 130).abs().sum() == 130


@pytest.mark.parametrize("bad", [-1, 1 << 64])
def test_out_of_range_seed_is_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="unsigned 64-bit"):
        perturb.signs(bad, "x", 10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("numel", [1, 127, 128, 129, 1000, 65_537])
@pytest.mark.parametrize("with_mask", [False, True])
def test_numba_path_equals_reference_bit_for_bit(dtype: torch.dtype, numel: int, with_mask: bool) -> None:
    # Prepare
    g = torch.Generator().manual_seed(numel)
    src = (torch.randn(numel, generator=g) * 3).to(dtype)
    mask = torch.rand(numel, generator=g) < 0.3 if with_mask else None
    seeds = [7, (1 << 64) - 2, 123456789]
    coefs = [1e-3, -2.5e-4, 0.75]
    expected, got = torch.empty_like(src), torch.empty_like(src)
    # Execute
    reference.apply_entries(src, expected, 0xABCDEF01, seeds, coefs, mask)
    cpu.apply_entries(src, got, 0xABCDEF01, seeds, coefs, mask)
    # Assert
    assert torch.equal(_bits(got), _bits(expected))
    assert not torch.equal(_bits(got), _bits(src))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_threaded_and_single_threaded_kernels_give_the_same_bits(dtype: torch.dtype) -> None:
    # Prepare: large enough for the threaded kernel when torch has more than one thread
    src = torch.randn(cpu.PARALLEL_MIN_NUMEL + 129, generator=torch.Generator().manual_seed(1)).to(dtype)
    outputs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            # Execute
            torch.set_num_threads(threads)
            assert cpu._parallel(src.numel()) is (threads > 1)
            out = torch.empty_like(src)
            cpu.apply_entries(src, out, 9, [11, 12], [1e-3, -4e-3])
            outputs.append(_bits(out))
    finally:
        torch.set_num_threads(before)
    # Assert
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_numba_rounding_handles_ties_overflow_and_nan(dtype: torch.dtype) -> None:
    # Values chosen so float32(p) + delta lands on ties, overflows, or is NaN;
    # a NaN is stored as the one canonical pattern whatever its payload was.
    values = [1.0, 3.3895e38, float("nan"), -float("nan"), -0.0, 1.0078125, float("inf")] * 30
    src = torch.tensor(values, dtype=dtype)
    for coef in (0.00390625, 1e38, 1e-3):
        a, b = torch.empty_like(src), torch.empty_like(src)
        reference.apply_entries(src, a, 5, [3], [coef])
        cpu.apply_entries(src, b, 5, [3], [coef])
        assert torch.equal(_bits(a), _bits(b))
        nan_bits = _bits(a)[torch.isnan(a)].unique().tolist()
        assert nan_bits == [reference.CANONICAL_NAN_BITS[dtype]]


def test_float16_uses_the_reference_path_and_is_exact() -> None:
    src = torch.randn(300).half()
    out = torch.empty_like(src)
    perturb.apply_entries(src, out, 9, [1], [0.01])
    z = reference.signs(1, 9, 300, torch.device("cpu")).float()
    assert torch.equal(_bits(out), _bits((src.float() + 0.01 * z).half()))


def test_in_place_update_equals_out_of_place() -> None:
    src = torch.randn(5000)
    out = torch.empty_like(src)
    perturb.apply_entries(src, out, 11, [1, 2], [0.5, -0.25])
    perturb.apply_entries(src, src, 11, [1, 2], [0.5, -0.25])
    assert torch.equal(src, out)


def test_entries_accumulate_in_float32_then_round_once() -> None:
    # Two entries applied as one ledger step differ from two separate steps
    # when rounding intervenes: the spec's order is the one we follow.
    src = torch.full((256,), 1.0)
    one_step = torch.empty_like(src)
    perturb.apply_entries(src, one_step, 1, [5, 6], [1e-8, 1e-8])
    z = reference.signs(5, 1, 256, torch.device("cpu")).float() * torch.tensor(1e-8, dtype=torch.float32)
    z += reference.signs(6, 1, 256, torch.device("cpu")).float() * torch.tensor(1e-8, dtype=torch.float32)
    assert torch.equal(one_step, src + z)


def test_unsupported_dtype_is_refused() -> None:
    x = torch.zeros(10, dtype=torch.float64)
    with pytest.raises(TypeError, match="cannot be perturbed exactly"):
        perturb.apply_entries(x, x, 1, [1], [0.1])


@pytest.mark.parametrize("dim", [384, 576, 130, 7])
@pytest.mark.parametrize("with_mask", [False, True])
def test_rows_equal_the_same_rows_of_a_whole_pass(dim: int, with_mask: bool) -> None:
    # Prepare: rows straddle 128-element blocks whenever dim is not a multiple of 128.
    g = torch.Generator().manual_seed(dim)
    src = torch.randn(300, dim, generator=g)
    mask = torch.rand(300, dim, generator=g) < 0.5 if with_mask else None
    rows = torch.tensor([0, 299, 5, 5, 128, 17])
    seeds, coefs = [3, 1 << 63], [1e-3, -0.5]
    whole = torch.empty_like(src)
    reference.apply_entries(src, whole, 42, seeds, coefs, mask)
    # Execute
    via_reference = torch.empty(len(rows), dim)
    reference.apply_entries_rows(src, rows, via_reference, 42, seeds, coefs, mask)
    via_numba = torch.empty(len(rows), dim)
    cpu.apply_entries_rows(src, rows, via_numba, 42, seeds, coefs, mask)
    # Assert
    assert torch.equal(_bits(via_reference), _bits(whole[rows]))
    assert torch.equal(_bits(via_numba), _bits(whole[rows]))


def test_signs_at_scattered_indices_match_the_dense_stream() -> None:
    dense = reference.signs(9, 1234, 5000, torch.device("cpu"))
    idx = torch.tensor([0, 1, 127, 128, 4999, 2500, 31, 32])
    assert torch.equal(reference.signs_at(9, 1234, idx), dense[idx])


@pytest.mark.parametrize("name", ["_apply_f32", "_apply_rows_f32", "_apply_bf16"])
def test_threaded_and_serial_kernels_have_their_own_cache_entries(name: str) -> None:
    # numba names a cache entry after the function, not its flags: a shared entry let
    # whichever kernel compiled first serve both (the threaded path ran on one thread).
    threaded, serial = getattr(cpu, name), getattr(cpu, f"{name}_serial")
    assert threaded.targetoptions.get("parallel") and not serial.targetoptions.get("parallel")
    index = [k._cache._cache_file._index_name for k in (threaded, serial)]
    assert index[0] != index[1]
