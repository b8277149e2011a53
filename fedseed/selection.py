"""Which clients train in a round: coordinator side, from client-reported numbers only.

The coordinator (or the simulator) knows each available client's name, sample
count and the last *score* it reported: the mean loss it measured under the
global model (one float per round, piggybacked on its reply; the first at
join). Selection needs no data and no model. Every draw is derived from the
run key and the round (:mod:`fedseed.seeds`), so a restarted coordinator, the
simulator and Flower's engine all select the same clients.

Policies (:data:`POLICIES`):

- ``uniform``: ``m`` clients without replacement (Flower's and FedML's only policy).
- ``power-of-choice`` (Cho et al., 2022): ``d`` candidates drawn without
  replacement in proportion to their sample counts, then the ``m`` with the
  highest score (loss); a client that has never reported counts as hardest, so
  it is explored.
- ``disparity`` (the client curriculum of Vahidian et al., ICCV 2023): clients
  sorted by score, easiest first; the eligible pool is the easiest
  ``ceil(g(t) · N)`` (at least ``m``) with ``g`` a pacing function over the run's
  rounds (:mod:`fedseed.curriculum`); the pool is shuffled once per sweep and
  swept in groups of ``m`` (a sweep is ``ceil(pool / m)`` rounds), so every
  eligible client trains once per sweep. Scores refresh as clients report.

More policies: implement :class:`Policy` (a pure function of its arguments)
and add it to :func:`make_policy`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from fedseed import curriculum
from fedseed.errors import ConfigError
from fedseed.seeds import PURPOSE_SELECTION, derive_seed

POLICIES = ("uniform", "power-of-choice", "disparity")
_SWEEP = 1 << 32  # a sub-purpose for sweep shuffles, apart from per-round picks


@dataclass(frozen=True)
class Candidate:
    name: str
    num_samples: int
    score: float | None = None  # last reported mean loss; None = never reported


class Policy(Protocol):
    def select(
        self, key: bytes, round_index: int, total_rounds: int, candidates: Sequence[Candidate], m: int
    ) -> list[str]:
        """Names of ``m`` distinct available candidates, in slot order."""
        ...


def _pick_without_replacement(
    key: bytes, ids: tuple[int, ...], pool: list[Candidate], count: int, weighted: bool = False
) -> list[Candidate]:
    """``count`` of ``pool`` from derived 64-bit draws (weights: sample counts), exact integers."""
    pool = list(pool)
    chosen = []
    for pick in range(count):
        draw = derive_seed(key, PURPOSE_SELECTION, *ids, pick)
        if weighted:
            total = sum(c.num_samples for c in pool)
            target, acc, index = (draw * total) >> 64, 0, 0
            for index, c in enumerate(pool):  # noqa: B007
                acc += c.num_samples
                if target < acc:
                    break
        else:
            index = (draw * len(pool)) >> 64
        chosen.append(pool.pop(index))
    return chosen


def _by_name(candidates: Sequence[Candidate]) -> list[Candidate]:
    # Ordered by name, never by join order (which races between processes).
    return sorted(candidates, key=lambda c: c.name)


@dataclass(frozen=True)
class Uniform:
    def select(
        self, key: bytes, round_index: int, total_rounds: int, candidates: Sequence[Candidate], m: int
    ) -> list[str]:
        return [c.name for c in _pick_without_replacement(key, (round_index,), _by_name(candidates), m)]


def _hardness(c: Candidate) -> float:
    return math.inf if c.score is None or math.isnan(c.score) else c.score


@dataclass(frozen=True)
class PowerOfChoice:
    candidates: int = 0  # d; 0 = 2m

    def select(
        self, key: bytes, round_index: int, total_rounds: int, candidates: Sequence[Candidate], m: int
    ) -> list[str]:
        d = min(len(candidates), max(m, self.candidates or 2 * m))
        drawn = _pick_without_replacement(key, (round_index,), _by_name(candidates), d, weighted=True)
        drawn.sort(key=lambda c: (-_hardness(c), c.name))
        return [c.name for c in drawn[:m]]


@dataclass(frozen=True)
class Disparity:
    pacing: str = "linear"
    a: float = 0.8
    b: float = 0.2

    def __post_init__(self) -> None:
        curriculum.check_pacing(self.pacing, self.a, self.b)

    def pool(
        self, round_index: int, total_rounds: int, candidates: Sequence[Candidate], m: int
    ) -> list[Candidate]:
        """The eligible clients at this round, easiest first."""
        ranked = sorted(candidates, key=lambda c: (_hardness(c), c.name))
        fraction = curriculum.pacing(self.pacing, round_index / max(1, total_rounds), self.a, self.b)
        return ranked[: min(len(ranked), max(m, math.ceil(fraction * len(ranked))))]

    def select(
        self, key: bytes, round_index: int, total_rounds: int, candidates: Sequence[Candidate], m: int
    ) -> list[str]:
        eligible = self.pool(round_index, total_rounds, candidates, m)
        sweep_rounds = math.ceil(len(eligible) / m)
        sweep, position = divmod(round_index, sweep_rounds)
        shuffled = _pick_without_replacement(key, (_SWEEP, sweep), _by_name(eligible), len(eligible))
        group = shuffled[position * m : (position + 1) * m]
        if len(group) < m:  # the last group of a sweep: top up from the rest of the pool
            rest = [c for c in shuffled if c not in group]
            group += rest[: m - len(group)]
        return [c.name for c in group]


@dataclass(frozen=True)
class SelectionConfig:
    policy: str = "uniform"  # uniform | power-of-choice (highest loss of d candidates) | disparity
    candidates: int = 0  # power-of-choice: d (0 = 2m)
    pacing: str = "linear"  # disparity: how the eligible pool grows (curriculum pacing functions)
    a: float = 0.8  # disparity: every client is eligible after a share a of the rounds
    b: float = 0.2  # disparity: the share of clients eligible at the start (easiest first)

    def __post_init__(self) -> None:
        make_policy(self)  # validates


def make_policy(config: SelectionConfig) -> Policy:
    if config.policy == "uniform":
        return Uniform()
    if config.policy == "power-of-choice":
        if config.candidates < 0:
            raise ConfigError(f"power-of-choice candidates must be >= 0, got {config.candidates}")
        return PowerOfChoice(config.candidates)
    if config.policy == "disparity":
        return Disparity(config.pacing, config.a, config.b)
    raise ConfigError(f"unknown selection policy {config.policy!r}; choose one of {', '.join(POLICIES)}")


def select(
    config: SelectionConfig,
    key: bytes,
    round_index: int,
    total_rounds: int,
    candidates: Sequence[Candidate],
    m: int,
) -> list[str]:
    """Checks the request, then asks the policy."""
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ValueError("candidate names must be unique")
    if m < 1 or m > len(candidates):
        raise ConfigError(f"cannot select {m} clients from {len(candidates)} available")
    chosen = make_policy(config).select(key, round_index, total_rounds, candidates, m)
    assert len(set(chosen)) == m and set(chosen) <= set(names), "a policy must pick m distinct candidates"
    return chosen
