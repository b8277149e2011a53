"""A client's work in a round, the same in every running mode.

The gRPC client (through its Flower ``ClientApp``), Flower's engines and the
in-process simulator all call :meth:`LocalClient.train_round`: deterministic
minibatches (curriculum-paced when configured), the scheduled ZO steps
(:func:`fedseed.rounds.run_local_round`), one byte per step, and back to the
round's start state. Alongside the bytes it returns the start state's hash and
the client's *score* for selection: the mean loss its steps measured (free:
the forward passes it ran anyway).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fedseed import curriculum, tasks
from fedseed.data import Example
from fedseed.ledger import model_hash
from fedseed.rounds import FedKSeedRounds, run_local_round
from fedseed.seeds import PURPOSE_DATA, derive_seed
from fedseed.zo import ZOEngine

SCORE_SAMPLES = 32  # examples a client scores itself on when it joins


@dataclass(frozen=True)
class RoundResult:
    scalars: bytes  # one byte per local step
    start_hash: str  # the model state the steps started from
    score: float  # mean loss of the round's steps (float32-exact: it travels as a float)


def as_float32(x: float) -> float:
    return float(np.float32(x))


@dataclass
class LocalClient:
    """One client's data, its curriculum state and the (possibly shared) engine it trains with.

    Several LocalClients may share one engine: each round ends where it started.
    """

    name: str
    engine: ZOEngine
    task: tasks.Task
    shard: list[Example]
    rounds: FedKSeedRounds
    batch_size: int = 8
    curriculum_config: curriculum.CurriculumConfig = field(default_factory=curriculum.CurriculumConfig)
    total_rounds: int = 1  # pacing runs over the whole run
    _curriculum: curriculum.ClientCurriculum | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.shard:
            raise ValueError(f"client {self.name!r} has no data")
        seed = derive_seed(self.rounds.key, PURPOSE_DATA, zlib.crc32(self.name.encode("utf-8")))
        self._curriculum = curriculum.ClientCurriculum(self.curriculum_config, len(self.shard), seed)

    @property
    def num_samples(self) -> int:
        return len(self.shard)

    def initial_score(self, samples: int = SCORE_SAMPLES) -> float:
        """Mean loss under the current model on the first ``samples`` examples (sent at join)."""
        subset = self.shard[:samples]
        return as_float32(float(np.mean(curriculum.per_sample_losses(self.task, subset))))

    @property
    def curriculum(self) -> curriculum.ClientCurriculum:
        assert self._curriculum is not None
        return self._curriculum

    def _indices_in_use(self, round_index: int) -> np.ndarray:
        assert self._curriculum is not None
        if self.curriculum_config.ordering == "vanilla":
            return np.arange(len(self.shard))  # sampled at random below: order is irrelevant
        if self._curriculum.needs_scoring(round_index):
            scores = curriculum.difficulty(self.task, self.shard, self.curriculum_config.scoring)
            self._curriculum.rescore(scores, round_index)
        return self._curriculum.available(round_index / max(1, self.total_rounds))

    def loss_for(
        self, round_index: int, slot: int, per_example: bool = False
    ) -> Callable[[int], Callable[[], torch.Tensor]]:
        """Minibatches for (round, slot): deterministic, so every mode sends the same bytes.

        ``per_example``: each step's callable gives every example's loss (for DP), not the mean."""
        in_use = self._indices_in_use(round_index)
        rng = np.random.Generator(np.random.PCG64([round_index, slot, len(self.shard)]))

        def for_step(step: int) -> Callable[[], torch.Tensor]:
            picks = in_use[rng.choice(len(in_use), min(self.batch_size, len(in_use)), replace=False)]
            encoded = self.task.encode([self.shard[i] for i in picks])
            if per_example:
                return lambda: tasks.per_example_losses(self.task, encoded)
            return lambda: tasks.loss(self.task, encoded)

        return for_step

    def train_round(
        self, round_index: int, slot: int, sample_counts: Sequence[int], start_hash: str | None = None
    ) -> RoundResult:
        """``start_hash``: the model's hash if the caller knows it (clients sharing one model
        in a round hash it once: over a whole model it costs as much as a ZO step)."""
        plan = self.rounds.plan(round_index, tuple(sample_counts))
        start = self.engine.snapshot()
        start_hash = start_hash or model_hash(self.engine.model)
        losses: list[float] = []
        try:
            payload = run_local_round(
                self.engine,
                self.rounds,
                plan,
                slot,
                self.loss_for(round_index, slot, per_example=self.rounds.config.dp_clip > 0),
                losses,
            )
        finally:
            self.engine.restore(start)
        score = as_float32(float(np.mean(losses))) if losses else math.nan
        return RoundResult(payload, start_hash, score)
