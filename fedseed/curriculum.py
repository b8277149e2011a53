"""Curriculum-ordered client data (Vahidian et al., ICCV 2023, after Wu et al., ICLR 2021).

Each client scores its own samples, orders them, and at training progress
``t / T`` draws its minibatches from the first ``n(t)`` samples of that order,
where ``n(t) = clip(g(t) · N, max(1, min(min_samples, N)), N)`` and ``g`` is a
pacing function with parameters ``a`` (fraction of training after which all
data is in) and ``b`` (starting fraction). With ``x = t / (a T)``:

=============  ===================================================
linear         ``b + (1 - b) · x``
quadratic      ``b + (1 - b) · x²``
root           ``b + (1 - b) · √x``
step           ``b + ⌊x⌋``
exponential    ``b + (1 - b) · (e^{10x} - 1) / (e^{10} - 1)``
logarithmic    ``b + (1 - b) · (1 + ln(x + e^{-10}) / 10)``
=============  ===================================================

Orderings: ``curriculum`` (easiest first), ``anti`` (hardest first),
``random`` (a seeded shuffle, still paced), ``vanilla`` (a seeded shuffle, all
data from the start: the usual federated training).

Scores (higher = harder): ``loss`` (cross-entropy of each sample under the
current global model: the paper's default, one forward pass, which a ZO client
runs anyway), ``length`` (token count: free), ``loss+length`` (mean of the two
normalised ranks). Loss scores are refreshed when the client trains at least
``rescore_every`` rounds after its last scoring (0: score once).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from fedseed import tasks
from fedseed.data import Example
from fedseed.errors import ConfigError

PACINGS = ("linear", "quadratic", "root", "step", "exponential", "logarithmic")
ORDERINGS = ("curriculum", "anti", "random", "vanilla")
SCORINGS = ("loss", "length", "loss+length")


def _check_choice(kind: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {kind} {value!r}; choose one of {', '.join(choices)}")


def check_pacing(name: str, a: float, b: float) -> None:
    _check_choice("pacing", name, PACINGS)
    if not 0 < a <= 1:
        raise ConfigError(f"pacing a must be in (0, 1] (fraction of training until all data is in), got {a}")
    if not 0 <= b <= 1:
        raise ConfigError(f"pacing b must be in [0, 1] (starting fraction), got {b}")


def pacing(name: str, progress: float, a: float, b: float) -> float:
    """``g(progress)``: the fraction of the ordered data in use at ``progress = t / T``, in [b, 1]."""
    check_pacing(name, a, b)
    x = max(0.0, progress) / a
    if name == "linear":
        g = b + (1 - b) * x
    elif name == "quadratic":
        g = b + (1 - b) * x * x
    elif name == "root":
        g = b + (1 - b) * math.sqrt(x)
    elif name == "step":
        g = b + math.floor(x)
    elif name == "exponential":
        g = b + (1 - b) * math.expm1(10 * min(x, 1.0)) / math.expm1(10)
    else:  # logarithmic
        g = b + (1 - b) * (1 + math.log(x + math.exp(-10)) / 10)
    return min(1.0, max(b, g))


def paced_count(num_samples: int, fraction: float, min_samples: int) -> int:
    """How many of ``num_samples`` ordered samples are in use at pacing ``fraction``."""
    floor = max(1, min(min_samples, num_samples))
    return min(num_samples, max(floor, math.floor(fraction * num_samples)))


@dataclass(frozen=True)
class CurriculumConfig:
    ordering: str = "vanilla"  # vanilla (no order) | curriculum (easy first) | anti (hard first) | random
    scoring: str = "loss"  # difficulty: loss (under the current model) | length | loss+length
    pacing: str = "linear"  # how the usable share grows: linear|quadratic|root|step|exponential|logarithmic
    a: float = 0.8  # the paper's default: all data is in use after a share a of the rounds
    b: float = 0.2  # the share in use at the start
    min_samples: int = 32  # the paper's floor: never fewer than this (or all, if fewer)
    rescore_every: int = 0  # rounds between loss re-scorings; 0 = score once

    def __post_init__(self) -> None:
        _check_choice("ordering", self.ordering, ORDERINGS)
        _check_choice("scoring", self.scoring, SCORINGS)
        check_pacing(self.pacing, self.a, self.b)
        if self.min_samples < 1 or self.rescore_every < 0:
            raise ConfigError("min_samples must be >= 1 and rescore_every >= 0")

    @property
    def needs_scores(self) -> bool:
        return self.ordering in ("curriculum", "anti")


def per_sample_losses(task: tasks.Task, examples: Sequence[Example], batch_size: int = 32) -> np.ndarray:
    """Cross-entropy of each example under the task's model as it is now (float64)."""
    out = []
    for start in range(0, len(examples), batch_size):
        encoded = task.encode(examples[start : start + batch_size])
        with torch.no_grad():
            logits = task.logits(encoded).float()
            out.append(F.cross_entropy(logits, encoded["labels"], reduction="none").double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def token_lengths(tokenizer: object, examples: Sequence[Example]) -> np.ndarray:
    encode = getattr(tokenizer, "encode")  # noqa: B009  (any HF tokenizer)
    return np.asarray([len(encode(e.text, add_special_tokens=False)) for e in examples], dtype=np.float64)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Normalised ranks in [0, 1] (ties broken by index, so deterministic)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    return ranks / max(1, len(values) - 1)


def difficulty(task: tasks.Task, examples: Sequence[Example], scoring: str) -> np.ndarray:
    """Per-example difficulty scores (higher = harder) under ``scoring``."""
    _check_choice("scoring", scoring, SCORINGS)
    if scoring == "length":
        return token_lengths(getattr(task, "tokenizer"), examples)  # noqa: B009
    losses = per_sample_losses(task, examples)
    if scoring == "loss":
        return losses
    return (_ranks(losses) + _ranks(token_lengths(getattr(task, "tokenizer"), examples))) / 2  # noqa: B009


def order(scores: np.ndarray | None, num_samples: int, ordering: str, seed: int) -> np.ndarray:
    """Sample indices in training order (easiest first for ``curriculum``)."""
    _check_choice("ordering", ordering, ORDERINGS)
    if ordering in ("random", "vanilla"):
        return np.random.Generator(np.random.PCG64(seed)).permutation(num_samples)
    if scores is None or len(scores) != num_samples:
        raise ValueError(f"ordering {ordering!r} needs one score per sample")
    easy_first = np.argsort(scores, kind="stable")
    return easy_first if ordering == "curriculum" else easy_first[::-1].copy()


class ClientCurriculum:
    """One client's ordered data and its pacing (state: the current order and when it was scored)."""

    def __init__(self, config: CurriculumConfig, num_samples: int, seed: int) -> None:
        self.config = config
        self.num_samples = num_samples
        self.seed = seed
        self.scored_round: int | None = None
        self.order: np.ndarray | None = (
            None if config.needs_scores else order(None, num_samples, config.ordering, seed)
        )

    def needs_scoring(self, round_index: int) -> bool:
        if not self.config.needs_scores:
            return False
        if self.scored_round is None:
            return True
        every = self.config.rescore_every
        return every > 0 and round_index - self.scored_round >= every

    def rescore(self, scores: np.ndarray, round_index: int) -> None:
        self.order = order(scores, self.num_samples, self.config.ordering, self.seed)
        self.scored_round = round_index

    def state(self) -> tuple[list[int], int] | None:
        """What scoring decided (the order and its round), for a host that keeps no process."""
        if self.scored_round is None or self.order is None:
            return None
        return [int(i) for i in self.order], self.scored_round

    def restore(self, order_: Sequence[int], scored_round: int) -> None:
        if sorted(order_) != list(range(self.num_samples)):
            raise ValueError(f"a curriculum order must permute {self.num_samples} samples")
        self.order = np.asarray(order_, dtype=np.int64)
        self.scored_round = scored_round

    def available(self, progress: float) -> np.ndarray:
        """The sample indices in use at ``progress`` (a prefix of the order)."""
        if self.order is None:
            raise RuntimeError("score the client's data before asking for its curriculum")
        if self.config.ordering == "vanilla":
            return self.order
        fraction = pacing(self.config.pacing, progress, self.config.a, self.config.b)
        return self.order[: paced_count(self.num_samples, fraction, self.config.min_samples)]
