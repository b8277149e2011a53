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
        return on_model_device(enc, self.model)

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
        return on_model_device(enc, self.model)

    def logits(self, encoded: Encoded) -> torch.Tensor:
        out = self.model(
            input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"], logits_to_keep=1
        )
        last = out.logits[:, -1, :]  # left padding: the last position is the prompt's end
        return last[:, self.label_token_ids.to(last.device)]  # [batch, num_labels]


class PrototypeTask:
    """Zero-shot classification with a sentence encoder: cosine similarity to class prototypes.

    A class's prototype is the encoder's own mean-pooled, L2-normalised embedding of a few
    short descriptions of it (averaged), recomputed with the current weights at every forward:
    step 0 already separates the classes (no new head), and ZO refines the encoder, and the
    prototypes with it. ``logits[c] = cos(embed(x), prototype_c) / temperature``.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        descriptions: Sequence[Sequence[str]],
        temperature: float = 0.05,
        max_length: int = 64,
    ) -> None:
        if len(descriptions) < 2 or any(not d for d in descriptions):
            raise ConfigError("a prototype task needs at least one description for each of 2+ classes")
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.temperature = temperature
        self.descriptions = [list(d) for d in descriptions]
        flat = [text for d in self.descriptions for text in d]
        self._prompts = dict(
            tokenizer(flat, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        )

    @property
    def encoder(self) -> nn.Module:
        return getattr(self.model, "bert", self.model)  # a *ForSequenceClassification: its encoder

    def _embed(self, inputs: Encoded) -> torch.Tensor:
        hidden = self.encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                              token_type_ids=inputs.get("token_type_ids")).last_hidden_state  # fmt: skip
        mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # mean pooling (sentence-transformers)
        return F.normalize(pooled.float(), dim=-1)

    def encode(self, batch: Sequence[Example]) -> Encoded:
        enc = dict(
            self.tokenizer(
                [e.text for e in batch], padding=True, truncation=True, max_length=self.max_length,
                return_tensors="pt",
            )
        )  # fmt: skip
        enc["labels"] = torch.tensor([e.label for e in batch])
        return on_model_device(enc, self.model)

    def logits(self, encoded: Encoded) -> torch.Tensor:
        # One forward for the batch and the descriptions together: both see the same weights,
        # also inside a perturbed evaluation.
        n = encoded["input_ids"].shape[0]
        width = max(encoded["input_ids"].shape[1], self._prompts["input_ids"].shape[1])
        device = encoded["input_ids"].device
        joined: Encoded = {
            key: torch.cat([_pad(encoded[key], width), _pad(self._prompts[key].to(device), width)])
            for key in ("input_ids", "attention_mask", "token_type_ids")
            if key in encoded
        }
        embedded = self._embed(joined)
        texts, prompts = embedded[:n], embedded[n:]
        sizes = [len(d) for d in self.descriptions]
        prototypes = F.normalize(
            torch.stack([chunk.mean(0) for chunk in torch.split(prompts, sizes)]), dim=-1
        )
        return texts @ prototypes.T / self.temperature  # [batch, classes]


def on_model_device(encoded: Encoded, model: nn.Module) -> Encoded:
    """The batch's tensors where the model's parameters are (a ``device = "cuda"`` run)."""
    device = next(model.parameters()).device
    if device.type == "cpu":
        return encoded
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in encoded.items()}


def _pad(t: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(t, (0, width - t.shape[1]))  # right padding with 0 (BERT's [PAD], mask 0)


# Class descriptions of the prototype task (fedseed.tasks.PrototypeTask), per label set.
SENTIMENT_DESCRIPTIONS = (
    ("It was terrible.", "A bad, boring movie.", "I hated it."),
    ("It was great.", "A good, enjoyable movie.", "I loved it."),
)
TOPIC_DESCRIPTIONS = (
    ("Business news about companies, markets and the economy.",),
    ("Entertainment news about films, music and celebrities.",),
    ("Political news about government, elections and parties.",),
    ("Sports news about matches, teams and players.",),
    ("Technology news about computers, software and the internet.",),
)

# What a run's manifest calls each built-in model's task.
TASK_IDS = {
    "minilm": "vader-movies/minilm-seqcls",
    "minilm-proto": "vader-movies/minilm-prototypes",
    "smollm2": "vader-movies/smollm2-label-word",
}


def for_model(
    model_name: str, model: nn.Module, tokenizer: Any, max_length: int, num_labels: int = 2
) -> Task:
    """The built-in task of a built-in model (fedseed.models.MODEL_NAMES)."""
    if model_name == "smollm2":
        return LabelWordTask(model, tokenizer, max_length=max_length)
    if model_name == "minilm":
        return SequenceClassificationTask(model, tokenizer, max_length=max_length)
    if model_name == "minilm-proto":
        descriptions = TOPIC_DESCRIPTIONS if num_labels == len(TOPIC_DESCRIPTIONS) else SENTIMENT_DESCRIPTIONS
        if num_labels != len(descriptions):
            raise ConfigError(f"no class descriptions for {num_labels} labels (have 2: sentiment, 5: topics)")
        return PrototypeTask(model, tokenizer, descriptions, max_length=max_length)
    raise ConfigError(f"no built-in task for model {model_name!r}")
