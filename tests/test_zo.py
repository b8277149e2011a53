"""ZO steps on real models: exact restore, on-the-fly == materialised, clear errors."""

from __future__ import annotations

import copy
import logging
import math
import zlib
from typing import Any

import pytest
import torch
from torch import nn

from fedseed import perturb, tasks
from fedseed.data import Example
from fedseed.errors import DuplicateTensorIdError, UnsupportedDtypeError
from fedseed.ledger import model_hash
from fedseed.zo import MagnitudeMask, TrainableSet, ZOEngine

SENTENCES = [
    Example("A gorgeous, witty, seductive movie.", 1, 3.0),
    Example("The plot is nothing but boilerplate clichés.", 0, -2.5),
    Example("An engrossing portrait of a family.", 1, 2.1),
    Example("Tedious and bloated, it never takes off.", 0, -3.0),
]


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_bits_equal(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    for name, p in model.named_parameters():
        assert torch.equal(p.detach().view(torch.uint8), snapshot[name].view(torch.uint8)), name


@pytest.mark.slow
def test_parameters_bit_identical_after_estimate_minilm(minilm: Any) -> None:
    # Prepare: every parameter trainable, so every module's hooks run.
    model, tokenizer = minilm
    task = tasks.SequenceClassificationTask(model, tokenizer, max_length=32)
    engine = ZOEngine(model, TrainableSet.from_model(model), eps=1e-3)
    encoded = task.encode(SENTENCES)
    before = _snapshot(model)
    # Execute
    result = engine.estimate(12345, lambda: tasks.loss(task, encoded))
    # Assert
    assert result is not None and result.projected_grad != 0.0
    _assert_bits_equal(model, before)


@pytest.mark.slow
def test_parameters_bit_identical_after_estimate_smollm2(smollm2: Any) -> None:
    model, tokenizer = smollm2
    task = tasks.LabelWordTask(model, tokenizer, max_length=24)
    engine = ZOEngine(model, TrainableSet.from_model(model), eps=1e-3)
    encoded = task.encode(SENTENCES[:2])
    before = _snapshot(model)
    result = engine.estimate(7, lambda: tasks.loss(task, encoded))
    assert result is not None and math.isfinite(result.projected_grad)
    _assert_bits_equal(model, before)


def _materialised_copy(model: nn.Module, trainable: TrainableSet, seed: int, scale: float) -> nn.Module:
    """The slow, obvious way: a whole perturbed copy of the model (ties preserved)."""
    twin = copy.deepcopy(model)
    params = dict(twin.named_parameters())
    with torch.no_grad():
        for t in trainable.tensors:
            p = params[t.name]
            perturb.apply_entries(p.detach().clone(), p.data, t.tensor_id, [seed], [scale])
    return twin


@pytest.mark.slow
def test_on_the_fly_perturbation_equals_materialised_copy_with_tied_weights(smollm2: Any) -> None:
    # Prepare: SmolLM2 ties lm_head to embed_tokens; both owners must see the same z.
    model, tokenizer = smollm2
    assert model.lm_head.weight is model.model.embed_tokens.weight
    trainable = TrainableSet.from_model(model, include=["embed_tokens", r"layers\.0\.", r"norm\.weight$"])
    engine = ZOEngine(model, trainable, eps=1e-2)
    task = tasks.LabelWordTask(model, tokenizer, max_length=24)
    encoded = task.encode(SENTENCES[:2])
    # Execute
    with engine.perturbed(99, 1e-2):
        on_the_fly = task.logits(encoded)
    twin_task = tasks.LabelWordTask(_materialised_copy(model, trainable, 99, 1e-2), tokenizer, max_length=24)
    with torch.no_grad():
        materialised = twin_task.logits(encoded)
        unperturbed = task.logits(encoded)
    # Assert
    assert torch.equal(on_the_fly, materialised)
    assert not torch.equal(on_the_fly, unperturbed)


@pytest.mark.slow
def test_step_applies_minus_lr_g_along_z(minilm: Any) -> None:
    model, tokenizer = minilm
    task = tasks.SequenceClassificationTask(model, tokenizer, max_length=32)
    trainable = TrainableSet.from_model(model, include=[r"^classifier\."])
    engine = ZOEngine(model, trainable, eps=1e-3)
    encoded = task.encode(SENTENCES)
    weight = model.classifier.weight
    before = weight.detach().clone()
    result = engine.step(5, lambda: tasks.loss(task, encoded), lr=0.5)
    assert result is not None
    z = perturb.signs(5, "classifier.weight", weight.numel()).float().reshape(weight.shape)
    expected = before + torch.tensor(result.coef, dtype=torch.float32) * z
    assert torch.equal(weight.detach(), expected)
    assert result.coef == pytest.approx(-0.5 * result.projected_grad, rel=1e-6)
    with torch.no_grad():  # leave the session fixture as it was
        weight.copy_(before)


def test_non_finite_loss_skips_the_step(caplog: pytest.LogCaptureFixture) -> None:
    model = nn.Linear(4, 1)
    engine = ZOEngine(model, TrainableSet.from_model(model))
    before = _snapshot(model)
    with caplog.at_level(logging.WARNING, logger="fedseed.zo"):
        result = engine.step(1, lambda: model(torch.ones(1, 4)).sum() * float("nan"), lr=0.1)
    assert result is None
    assert "non-finite loss" in caplog.text
    _assert_bits_equal(model, before)


def test_unsupported_dtype_is_a_clear_error() -> None:
    model = nn.Linear(3, 2).double()
    with pytest.raises(UnsupportedDtypeError, match=r"'weight' has dtype torch.float64.*model.float\(\)"):
        TrainableSet.from_model(model)


def _crc32_collision() -> tuple[str, str]:
    # Two names with one crc32, found once by searching p0, p1, ... (33 s: the first repeat of
    # that family is at p32060020); the assert keeps the pair honest.
    first, second = "p29685295", "p32060020"
    assert zlib.crc32(first.encode()) == zlib.crc32(second.encode())
    return first, second


def test_two_tensors_with_one_stream_id_are_refused() -> None:
    first, second = _crc32_collision()
    model = nn.Module()
    model.register_parameter(first, nn.Parameter(torch.zeros(3)))
    model.register_parameter(second, nn.Parameter(torch.zeros(3)))
    with pytest.raises(DuplicateTensorIdError, match=f"{first}.*{second}.*share stream id"):
        TrainableSet.from_model(model)
    TrainableSet.from_model(model, exclude=[f"^{second}$"])  # excluding one is the way out


def test_empty_selection_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no trainable tensors"):
        TrainableSet.from_model(nn.Linear(2, 2), include=["nothing-matches"])


class _SneakyModel(nn.Module):
    """Uses a child's weight without calling the child: on-the-fly hooks cannot see it."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x @ self.inner.weight.T)


def test_parameters_used_outside_their_module_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    model = _SneakyModel()
    engine = ZOEngine(model, TrainableSet.from_model(model))
    with caplog.at_level(logging.WARNING, logger="fedseed.zo"):
        engine.estimate(3, lambda: model(torch.ones(2, 4)).sum())
    assert "saw no perturbation" in caplog.text and "inner.weight" in caplog.text


def test_magnitude_mask_leaves_large_weights_untouched() -> None:
    torch.manual_seed(0)
    model = nn.Linear(64, 64)
    mask_fn = MagnitudeMask(0.25)
    engine = ZOEngine(model, TrainableSet.from_model(model), mask=mask_fn)
    before = model.weight.detach().clone()
    keep = mask_fn(model.weight)
    assert keep is not None and 0.2 < keep.float().mean() < 0.3
    engine.apply([1], [0.01])
    changed = model.weight.detach() != before
    assert torch.equal(changed, keep)


def test_gaussian_option_is_exact_on_one_device_and_differs_from_rademacher() -> None:
    torch.manual_seed(0)
    model = nn.Linear(16, 1)
    x = torch.randn(8, 16)
    gauss = ZOEngine(model, TrainableSet.from_model(model), distribution="gaussian")
    before = _snapshot(model)
    r1 = gauss.estimate(4, lambda: model(x).pow(2).mean())
    _assert_bits_equal(model, before)
    r2 = gauss.estimate(4, lambda: model(x).pow(2).mean())
    rad = ZOEngine(model, TrainableSet.from_model(model)).estimate(4, lambda: model(x).pow(2).mean())
    assert r1 is not None and r2 is not None and rad is not None
    assert r1.projected_grad == r2.projected_grad != rad.projected_grad
    h = model_hash(model)
    gauss.apply([4], [0.1])
    assert model_hash(model) != h


@pytest.mark.slow
def test_embedding_rows_shortcut_equals_materialised_copy(minilm: Any) -> None:
    # MiniLM's word-embedding table is half the model; a batch needs a few rows.
    model, tokenizer = minilm
    trainable = TrainableSet.from_model(model, include=["embeddings", r"layer\.0\.", r"^classifier\."])
    engine = ZOEngine(model, trainable, eps=1e-2)
    task = tasks.SequenceClassificationTask(model, tokenizer, max_length=32)
    encoded = task.encode(SENTENCES)
    with engine.perturbed(21, 1e-2):
        on_the_fly = task.logits(encoded)
    twin = _materialised_copy(model, trainable, 21, 1e-2)
    with torch.no_grad():
        materialised = tasks.SequenceClassificationTask(twin, tokenizer, max_length=32).logits(encoded)
    assert torch.equal(on_the_fly, materialised)


class _ReturnsItsWeight(nn.Module):
    """A learned table whose forward returns a view of its own weight."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 4))

    def forward(self, n: int) -> torch.Tensor:
        return self.weight[:n]


class _UsesTheViewLater(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = _ReturnsItsWeight()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.table(x.shape[0])  # a view of the perturbed copy...
        projected = self.proj(x)  # ...must survive the next module's perturbation
        return (rows * projected).sum()


def test_an_output_aliasing_the_scratch_buffer_is_not_overwritten() -> None:
    torch.manual_seed(0)
    model = _UsesTheViewLater()
    x = torch.randn(3, 4)
    trainable = TrainableSet.from_model(model)
    engine = ZOEngine(model, trainable)
    with engine.perturbed(5, 0.1):
        on_the_fly = model(x)
    with torch.no_grad():
        materialised = _materialised_copy(model, trainable, 5, 0.1)(x)
    assert torch.equal(on_the_fly, materialised)
