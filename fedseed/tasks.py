"""Tasks: what a batch of examples means as a loss and as predictions.

- :class:`SequenceClassificationTask`: an encoder with a classification head
  (cross-entropy over the head's logits).
- :class:`LabelWordTask`: prompt-based classification with a causal LM, as in
  MeZO's prompt setting: the prompt ends where the label word would follow and
  the loss is cross-entropy over the label words' next-token logits.

A batch is tokenised once (:meth:`encode`) and reused for both SPSA
evaluations, which must see identical inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn import functional as F

from fedseed.data import Example
from fedseed.errors import ConfigError

Encoded = dict[str, torch.Tensor]


class Task(Protocol):
    model: nn.Module
    tokenizer: Any

    def encode(self, batch: Sequence[Example]) -> Encoded: ...

    def logits(self, encoded: Encoded) -> torch.Tensor: ...


def loss(task: Task, encoded: Encoded) -> torch.Tensor:
    """Mean cross-entropy of the batch (a float tensor with no graph)."""
    with torch.no_grad():
        return F.cross_entropy(task.logits(encoded).float(), encoded["labels"])


def per_example_losses(task: Task, encoded: Encoded) -> torch.Tensor:
    """Each example's cross-entropy (differential privacy clips them one by one)."""
    with torch.no_grad():
        return F.cross_entropy(task.logits(encoded).float(), encoded["labels"], reduction="none")


def accuracy(task: Task, examples: Sequence[Example], batch_size: int = 32) -> float:
    """Fraction of ``examples`` whose argmax class is the label."""
    correct = 0
    for start in range(0, len(examples), batch_size):
        encoded = task.encode(examples[start : start + batch_size])
        with torch.no_grad():
            predicted = task.logits(encoded).argmax(dim=-1)
        correct += int((predicted == encoded["labels"]).sum())
    return correct / max(1, len(examples))


class SequenceClassificationTask:
    def __init__(self, model: nn.Module, tokenizer: Any, max_length: int = 64) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length

    def encode(self, batch: Sequence[Example]) -> Encoded:
        enc = self.tokenizer(
            [e.text for e in batch], padding=True, truncation=True,
            max_length=self.max_length, return_tensors="pt",
        )  # fmt: skip
        enc = dict(enc)
        enc["labels"] = torch.tensor([e.label for e in batch])
        return enc

    def logits(self, encoded: Encoded) -> torch.Tensor:
        inputs = {k: v for k, v in encoded.items() if k != "labels"}
        return self.model(**inputs).logits  # [batch, num_labels]


class LabelWordTask:
    """``template`` has one ``{text}`` slot; ``label_words[i]`` stands for class ``i``."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        # Of four prompts tried on 128 held-out movie snippets, this one had the
        # best separation (0.74 at the best threshold; 0.58 at zero).
        template: str = "{text} It was",
        label_words: Sequence[str] = (" bad", " good"),
        max_length: int = 64,
    ) -> None:
        if "{text}" not in template:
            raise ConfigError("the prompt template needs a {text} slot")
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        ids = [tokenizer.encode(w, add_special_tokens=False) for w in label_words]
        if any(len(i) != 1 for i in ids):
            raise ConfigError(
                f"each label word must be one token; got {dict(zip(label_words, ids, strict=True))}"
            )
        self.label_token_ids = torch.tensor([i[0] for i in ids])

    def encode(self, batch: Sequence[Example]) -> Encoded:
        # Truncate the review, never the prompt's tail: the label is read there.
        budget = self.max_length - len(
            self.tokenizer.encode(self.template.format(text=""), add_special_tokens=False)
        )
        texts = []
        for e in batch:
            ids = self.tokenizer.encode(e.text, add_special_tokens=False)[: max(1, budget)]
            texts.append(self.template.format(text=self.tokenizer.decode(ids)))
        enc = dict(self.tokenizer(texts, padding=True, return_tensors="pt"))
        enc["labels"] = torch.tensor([e.label for e in batch])
        return enc

    def logits(self, encoded: Encoded) -> torch.Tensor:
        out = self.model(
            input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"], logits_to_keep=1
        )
        last = out.logits[:, -1, :]  # left padding: the last position is the prompt's end
        return last[:, self.label_token_ids]  # [batch, num_labels]


# What a run's manifest calls each built-in model's task.
TASK_IDS = {"minilm": "vader-movies/minilm-seqcls", "smollm2": "vader-movies/smollm2-label-word"}


def for_model(model_name: str, model: nn.Module, tokenizer: Any, max_length: int) -> Task:
    """The built-in task of a built-in model (fedseed.models.MODEL_NAMES)."""
    if model_name == "smollm2":
        return LabelWordTask(model, tokenizer, max_length=max_length)
    if model_name == "minilm":
        return SequenceClassificationTask(model, tokenizer, max_length=max_length)
    raise ConfigError(f"no built-in task for model {model_name!r}")
