"""ZO over LoRA adapters: ``peft`` adapters whose initial weights derive from the run key.

With ``lora_rank = r > 0`` every participant wraps the base model in ``peft`` LoRA adapters
on the target modules (``W x + (alpha/r) B A x``) and trains the adapters by ZO. The
adapters' initial values must be the same bits everywhere, because they are part of the model
every replica hashes, so they are not drawn from torch's global RNG (peft's default) but:

- ``A`` (r x in): Rademacher signs from the perturbation stream (spec v1), seed
  ``derive(run key, PURPOSE_LORA_INIT)`` and the tensor's own name, times ``1/sqrt(in)``
  (a power of two is not needed: ``±c`` rounds the same on every machine);
- ``B`` (out x r): zeros, so the wrapped model computes exactly the base model at step 0.

The adapters are trainable tensors like any other (``lora_A``/``lora_B`` weights, named
with peft's ``base_model.model.`` prefix); the ledger, replay and hashes work unchanged.
``fedseed export`` writes the merged weights as an ordinary checkpoint and the adapters as a
peft adapter folder (``adapter/``: ``adapter_config.json`` + ``adapter_model.safetensors``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fedseed import perturb
from fedseed.errors import ConfigError
from fedseed.seeds import PURPOSE_LORA_INIT, derive_seed, run_key

# The attention projections the LoRA paper adapts (query and value), per model family.
DEFAULT_TARGETS = {
    "smollm2": ("q_proj", "v_proj"),
    "minilm": ("query", "value"),
    "minilm-proto": ("query", "value"),
}
ADAPTER_PATTERN = r"\.lora_[AB]\."  # the adapters' parameter names (a TrainableSet pattern)


def check_settings(rank: int, alpha: int, targets: Sequence[str]) -> None:
    """One line for a bad ``lora_rank`` / ``lora_alpha`` / ``lora_targets`` (train and simulate)."""
    if not 0 <= rank <= 4096:
        raise ConfigError(f"lora_rank must be in [1, 4096] for LoRA (0 = no adapters), got {rank}")
    if targets and rank == 0:
        raise ConfigError("lora_targets is set but lora_rank is 0: set lora_rank >= 1 to train adapters")
    if not 1 <= alpha <= 1 << 16:
        raise ConfigError(f"lora_alpha must be in [1, 65536], got {alpha}")


def targets_for(model_name: str, targets: Sequence[str]) -> tuple[str, ...]:
    return tuple(targets) if targets else DEFAULT_TARGETS[model_name]


def check_targets(model: nn.Module, model_name: str, targets: Sequence[str]) -> None:
    """One line naming the targets the model lacks (and the linear layers it has)."""
    linear = sorted(
        {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    )
    missing = [t for t in targets if t not in linear]
    if missing:
        raise ConfigError(
            f"lora_targets {', '.join(missing)} are not linear layers of {model_name}; "
            f"its linear layers are named: {', '.join(linear)}"
        )


def add_adapters(
    model: nn.Module, model_name: str, rank: int, alpha: int, targets: Sequence[str], run_name: str
) -> Any:
    """``model`` wrapped in peft LoRA adapters, initialised from the run key (module docstring)."""
    from peft import LoraConfig, get_peft_model

    chosen = targets_for(model_name, targets)
    check_targets(model, model_name, chosen)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=list(chosen), lora_dropout=0.0, bias="none"
    )  # no task type: a plain PeftModel forwards every call to the model unchanged
    wrapped = get_peft_model(model, config)
    seed = derive_seed(run_key(run_name), PURPOSE_LORA_INIT)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if ".lora_A." in name:
                fan_in = param.shape[1]
                signs = perturb.signs(seed, name, param.numel()).to(torch.float32)
                param.copy_((signs * (1.0 / math.sqrt(fan_in))).view_as(param).to(param.dtype))
            elif ".lora_B." in name:
                param.zero_()
    return wrapped


def trainable_patterns(wrapped: nn.Module, patterns: Sequence[str]) -> list[str]:
    """The adapters, plus the parameters whose name *inside* the wrapper (without peft's
    ``base_model.model.`` prefix) matches one of ``patterns``: the presets keep their meaning."""
    prefix = "base_model.model."
    chosen = [ADAPTER_PATTERN]
    compiled = [re.compile(p) for p in patterns]
    for name, _ in wrapped.named_parameters():
        inner = name.removeprefix(prefix).replace(".base_layer.", ".")
        if ".lora_" not in name and any(r.search(inner) for r in compiled):
            chosen.append("^" + re.escape(name) + "$")
    return chosen


def is_adapted(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)
