"""The ZO engine on CUDA (triton backend) against the CPU reference, bit for bit.

Random-initialised small transformers (no download on a GPU machine): a Llama
shape with tied embeddings and a BERT shape. Skipped where CUDA/triton is absent.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fedseed import perturb
from fedseed.ledger import model_hash
from fedseed.zo import TrainableSet, ZOEngine
from tests.conftest import requires_gpu

pytestmark = [pytest.mark.gpu, requires_gpu]


def _tiny_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def _tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
    )
    return BertForSequenceClassification(config).eval()


@pytest.mark.parametrize("make", [_tiny_llama, _tiny_bert])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_ledger_steps_equal_cpu_reference(make: object, dtype: torch.dtype) -> None:
    # Prepare: one model on CPU (reference backend), the same bits on CUDA (triton).
    assert callable(make)
    cpu_model = make().to(dtype)
    gpu_model = copy.deepcopy(cpu_model).cuda()
    cpu_engine = ZOEngine(cpu_model, TrainableSet.from_model(cpu_model), backend="reference")
    gpu_engine = ZOEngine(gpu_model, TrainableSet.from_model(gpu_model))
    assert perturb.resolve_backend(next(gpu_model.parameters())) == "triton"
    assert model_hash(cpu_model) == model_hash(gpu_model)
    # Execute: three ledger steps, one with several entries.
    for seeds, coefs in [([11], [1e-3]), ([12, 13, 2**64 - 1], [-2e-3, 5e-4, 1e-3]), ([14], [-7e-4])]:
        cpu_engine.apply(seeds, coefs)
        gpu_engine.apply(seeds, coefs)
    # Assert
    assert model_hash(cpu_model) == model_hash(gpu_model)


def test_cuda_on_the_fly_forward_equals_materialised_copy() -> None:
    # Tied weights, embedding-row lookups and the scratch buffer all run on CUDA.
    model = _tiny_llama().cuda()
    trainable = TrainableSet.from_model(model)
    engine = ZOEngine(model, trainable, eps=1e-2)
    ids = torch.randint(0, 512, (4, 16), generator=torch.Generator().manual_seed(1)).cuda()
    with engine.perturbed(99, 1e-2):
        on_the_fly = model(input_ids=ids).logits
    twin = copy.deepcopy(model)
    params = dict(twin.named_parameters())
    with torch.no_grad():
        for t in trainable.tensors:
            p = params[t.name]
            perturb.apply_entries(p.detach().clone(), p.data, t.tensor_id, [99], [1e-2], backend="reference")
        materialised = twin(input_ids=ids).logits
        unperturbed = model(input_ids=ids).logits
    assert torch.equal(on_the_fly, materialised)
    assert not torch.equal(on_the_fly, unperturbed)


def test_cuda_estimate_leaves_parameters_bit_identical() -> None:
    model = _tiny_bert().cuda()
    engine = ZOEngine(model, TrainableSet.from_model(model), eps=1e-3)
    ids = torch.randint(0, 512, (4, 16), generator=torch.Generator().manual_seed(2)).cuda()
    labels = torch.tensor([0, 1, 1, 0]).cuda()
    before = model_hash(model)
    result = engine.estimate(5, lambda: model(input_ids=ids, labels=labels).loss)
    assert result is not None and result.projected_grad != 0.0
    assert model_hash(model) == before
