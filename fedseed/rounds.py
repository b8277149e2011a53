"""FedKSeed rounds without a transport: what the coordinator and every client compute.

A run has a pool of K candidate seeds. Each round the coordinator selects
clients into slots 0..m-1; the client in slot ``c`` runs ``local_steps`` ZO
steps, step ``t`` along pool seed ``schedule[c][t]``, and returns one byte per
step. Nothing but those bytes has to travel: every participant derives

- the pool: ``seed_j = derive(PURPOSE_POOL, j)``;
- every slot's schedule: pool indices drawn with exact integer arithmetic
  from ``derive(PURPOSE_SCHEDULE, round, slot, step)`` and the importance
  weights (uniform, or FedKSeed-Pro's, below);
- the round's ledger step: one entry per pool seed used, ``coef_s =
  float32(-lr * Σ w_c · ĝ_{c,t})`` over the (slot, step) pairs that drew ``s``,
  summed in float64 in (slot, step) order, where ``ĝ`` is the *decoded* byte
  and ``w_c = n_c / Σ n`` the slots' sample shares (FedKSeed's weighting; each ``n_c``
  capped at ``weight_cap`` x the round's median, :func:`capped_counts`).

FedKSeed-Pro importance (FedKSeed's code): per seed, the history of every
scalar recorded for it (starting with one 0.0); ``a_j = mean |clip(h, ±1000)|``;
min-max normalised to [0, 1]; ``p = softmax(a)``. Softmax needs ``exp``, whose
last bits differ between math libraries, so ``a`` is quantised to 1/1024 and
``exp`` comes from a table computed with :mod:`decimal` (software arithmetic,
the same digits everywhere): weights are exact integers on every machine.
"""

from __future__ import annotations

import bisect
import decimal
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fedseed.codec import Codec, codec_named, uniform_from_seed
from fedseed.errors import ConfigError
from fedseed.ledger import LedgerEntry
from fedseed.perturb.stream import Seed
from fedseed.privacy import private_scalar
from fedseed.seeds import PURPOSE_POOL, PURPOSE_ROUNDING, PURPOSE_SCHEDULE, derive_seed
from fedseed.settings import RunSettings
from fedseed.zo import Snapshot, ZOEngine

IMPORTANCE_LEVELS = 1024  # a in [0, 1] is quantised to 1/1024
IMPORTANCE_CLIP = 1000.0  # FedKSeed-Pro clips recorded scalars to +-1000
_WEIGHT_BITS = 40  # exp(a) as a fixed-point integer with 40 fractional bits


def _exp_table() -> tuple[int, ...]:
    """``round(2**40 * e**(q/1024))`` for q = 0..1024, with decimal's exact-digit exp."""
    context = decimal.Context(prec=40, rounding=decimal.ROUND_HALF_EVEN)
    scale = decimal.Decimal(2**_WEIGHT_BITS)
    return tuple(
        int((context.exp(decimal.Decimal(q) / IMPORTANCE_LEVELS) * scale).to_integral_value(
            rounding=decimal.ROUND_HALF_EVEN, context=context
        ))
        for q in range(IMPORTANCE_LEVELS + 1)
    )  # fmt: skip


EXP_TABLE = _exp_table()


CLIP_WINDOW = 5  # rounds (this one and the 4 before) whose |ĝ| set the clipping bound


def combine(values: Sequence[float], aggregator: str, trim: float) -> float:
    """One (schedule, step)'s value from its replicas' decoded scalars (exact, order-independent)."""
    if len(values) == 1 or aggregator == "mean":
        return math.fsum(values) / len(values)
    ordered = sorted(values)
    k = math.floor(trim * len(ordered)) if aggregator == "trimmed-mean" else 0
    if aggregator == "median" or len(ordered) - 2 * k < 1:
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    kept = ordered[k : len(ordered) - k]
    return math.fsum(kept) / len(kept)


def _median(values: Sequence[float]) -> float:
    return combine(values, "median", 0.0) if values else 0.0


@dataclass
class RoundDiagnostics:
    """What aggregation saw in one round: for logs, metrics and rejection policies."""

    clip_bound: float  # inf when clipping is off or there is no history
    clipped: dict[int, int]  # slot -> values clipped
    anomaly: dict[int, float]  # slot -> anomaly score (see FedKSeedRounds.aggregate)
    rejected: tuple[int, ...]  # slots left out of the round's step


@dataclass
class Importance:
    """Per-seed history of |scalar| for FedKSeed-Pro, as exact running sums."""

    pool_size: int
    abs_sums: list[float] = field(default_factory=list)  # float64, summed in record order
    counts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.abs_sums:
            self.abs_sums = [0.0] * self.pool_size  # the history starts with one 0.0 each
            self.counts = [1] * self.pool_size

    def record(self, pool_index: int, scalar: float) -> None:
        self.abs_sums[pool_index] += abs(max(-IMPORTANCE_CLIP, min(IMPORTANCE_CLIP, scalar)))
        self.counts[pool_index] += 1

    def weights(self) -> list[int]:
        """Integer sampling weights ``∝ softmax(minmax(a))`` (exact everywhere)."""
        means = [s / n for s, n in zip(self.abs_sums, self.counts, strict=True)]
        low, high = min(means), max(means)
        if high == low:
            return [1] * self.pool_size
        span = high - low
        return [EXP_TABLE[math.floor((m - low) / span * IMPORTANCE_LEVELS)] for m in means]


def pool_seeds(key: bytes, pool_size: int) -> list[Seed]:
    return [derive_seed(key, PURPOSE_POOL, j) for j in range(pool_size)]


def draw_index(draw: int, cumulative: Sequence[int]) -> int:
    """Index ``i`` with probability ``w_i / W`` from a uniform 64-bit ``draw``, in integers."""
    target = (draw * cumulative[-1]) >> 64  # in [0, W)
    return bisect.bisect_right(cumulative, target)


def schedule(key: bytes, round_index: int, slot: int, local_steps: int, weights: Sequence[int]) -> list[int]:
    """Pool indices slot ``slot`` uses in round ``round_index``, one per local step."""
    cumulative = list(np.cumsum(np.asarray(weights, dtype=object)))
    return [
        draw_index(derive_seed(key, PURPOSE_SCHEDULE, round_index, slot, step), cumulative)
        for step in range(local_steps)
    ]


@dataclass(frozen=True)
class RoundPlan:
    """Everything about a round that all participants derive identically."""

    round_index: int
    schedules: tuple[tuple[int, ...], ...]  # per slot: pool index of each local step
    sample_counts: tuple[int, ...]  # per slot: n_c, for the aggregation weights


@dataclass(frozen=True)
class ClosedRound:
    """A closed round as it travels: the bytes that define its ledger step."""

    round_index: int
    sample_counts: tuple[int, ...]  # per slot of the plan
    replied_slots: tuple[int, ...]  # ascending
    scalars: bytes  # scalars_per_reply bytes per replied slot, in replied_slots order
    start_hash: str  # model hash the replies started from (every replica's state before the round)

    def replies(self, per_reply: int) -> dict[int, bytes]:
        """Each replied slot's bytes (``per_reply`` = the run's ``scalars_per_reply``)."""
        if len(self.scalars) != per_reply * len(self.replied_slots):
            raise ValueError(
                f"round {self.round_index}: {len(self.scalars)} bytes for "
                f"{len(self.replied_slots)} slots of {per_reply} scalars"
            )
        return {
            slot: self.scalars[i * per_reply : (i + 1) * per_reply]
            for i, slot in enumerate(self.replied_slots)
        }


class FedKSeedRounds:
    """The transport-free round logic of one run (coordinator and clients alike)."""

    def __init__(self, config: RunSettings, key: bytes, codec: Codec | None = None) -> None:
        self.config = config
        self.key = key
        self.codec = codec or codec_named(config.codec)
        self.seeds = pool_seeds(key, config.pool_size)
        self.reset()

    def reset(self) -> None:
        """The state before round 0 (what rounds have taught Pro and the clipping window is forgotten)."""
        self.importance = Importance(self.config.pool_size)
        self.recent_magnitudes: deque[list[float]] = deque(maxlen=CLIP_WINDOW - 1)  # earlier rounds' |ĝ|
        self.velocity: dict[int, float] = {}  # momentum: pool index -> float64 velocity
        self.last = RoundDiagnostics(math.inf, {}, {}, ())

    def weights(self) -> list[int]:
        return self.importance.weights() if self.config.importance else [1] * self.config.pool_size

    def plan(self, round_index: int, sample_counts: Sequence[int]) -> RoundPlan:
        if not sample_counts or any(n < 1 for n in sample_counts):
            raise ConfigError("every selected client needs at least one sample")
        weights = self.weights()
        # Slots in groups of `replicas` share one schedule (group = slot // replicas).
        groups = {
            group: tuple(schedule(self.key, round_index, group, self.config.scalars_per_reply, weights))
            for group in range((len(sample_counts) - 1) // self.config.replicas + 1)
        }
        schedules = tuple(groups[slot // self.config.replicas] for slot in range(len(sample_counts)))
        return RoundPlan(round_index, schedules, tuple(sample_counts))

    def aggregate(self, plan: RoundPlan, replies: Mapping[int, bytes]) -> list[LedgerEntry]:
        """The round's ledger step from the slots that replied (stragglers simply absent).

        1. Decode every byte; clip |ĝ| to ``clip_factor`` x the median nonzero |ĝ| of this
           round and the previous ones in the window (a bound the honest majority sets).
        2. Score each slot: with replicas, the mean distance of its values from its group's
           per-step median, over the round's median such distance (about 1 for an honest
           client; a sign-flipper or noise scores far higher); without, the share of its
           values that were clipped. Slots scoring above ``reject_anomaly`` are left out.
        3. Per group and step, combine the members' values (mean, median or trimmed mean);
           weight each group by its members' share of the samples; one entry per pool seed,
           summed in (group, step) order. Pro's importance history records the combined values.
        """
        config = self.config
        for slot, payload in replies.items():
            if not 0 <= slot < len(plan.schedules):
                raise ValueError(f"no slot {slot} in round {plan.round_index}")
            if len(payload) != config.scalars_per_reply:
                raise ValueError(
                    f"slot {slot} sent {len(payload)} bytes, round {plan.round_index} needs "
                    f"{config.scalars_per_reply}"
                )
        slots = sorted(replies)
        decoded = {slot: [self.codec.decode(b) for b in replies[slot]] for slot in slots}
        magnitudes = [abs(g) for slot in slots for g in decoded[slot] if g != 0.0]
        bound = math.inf
        if config.clip_factor > 0:
            window = [m for earlier in self.recent_magnitudes for m in earlier] + magnitudes
            if window:
                bound = config.clip_factor * _median(window)
        self.recent_magnitudes.append(magnitudes)
        values = {
            slot: [applied_value(max(-bound, min(bound, g)), config) for g in decoded[slot]] for slot in slots
        }
        clipped = {slot: sum(abs(g) > bound for g in decoded[slot]) for slot in slots}
        groups: dict[int, list[int]] = {}
        for slot in slots:
            groups.setdefault(slot // config.replicas, []).append(slot)
        anomaly = self._anomaly(groups, values, clipped)
        rejected = tuple(s for s in slots if config.reject_anomaly > 0 and anomaly[s] > config.reject_anomaly)
        self.last = RoundDiagnostics(bound, clipped, anomaly, rejected)
        kept = {g: [s for s in members if s not in rejected] for g, members in groups.items()}
        counts = capped_counts(plan.sample_counts, config.weight_cap)
        total_samples = sum(counts[s] for members in kept.values() for s in members)
        totals: dict[int, float] = {}
        for group in sorted(kept):
            members = kept[group]
            if not members:
                continue
            # A step's q directions each apply 1/q of their value (the step's mean).
            share = sum(counts[s] for s in members) / total_samples / config.directions
            for step, pool_index in enumerate(plan.schedules[members[0]]):
                value = combine([values[s][step] for s in members], config.aggregator, config.trim)
                totals[pool_index] = totals.get(pool_index, 0.0) + share * value
                self.importance.record(pool_index, value)
        if config.momentum > 0:  # v_j <- beta v_j + step_j for every seed; the round applies v
            for j in sorted(set(self.velocity) | set(totals)):
                self.velocity[j] = config.momentum * self.velocity.get(j, 0.0) + totals.get(j, 0.0)
            totals = self.velocity
        return [
            LedgerEntry.make(plan.round_index, 0, self.seeds[j], float(np.float32(-config.lr * totals[j])))
            for j in sorted(totals)
            if totals[j] != 0.0
        ]

    def _anomaly(
        self, groups: Mapping[int, list[int]], values: Mapping[int, list[float]], clipped: Mapping[int, int]
    ) -> dict[int, float]:
        steps = self.config.scalars_per_reply
        distances: dict[int, list[float]] = {}
        for members in groups.values():
            if len(members) < 2:
                continue
            for step in range(steps):
                center = _median([values[s][step] for s in members])
                for s in members:
                    distances.setdefault(s, []).append(abs(values[s][step] - center))
        scale = _median([d for ds in distances.values() for d in ds])
        scores = {}
        for members in groups.values():
            for s in members:
                if s in distances:
                    scores[s] = math.fsum(distances[s]) / steps / scale if scale > 0 else 0.0
                else:
                    scores[s] = clipped[s] / steps
        return scores


def capped_counts(sample_counts: Sequence[int], cap: float) -> list[float]:
    """The slots' aggregation weights: ``n_c``, at most ``cap`` x the plan's median ``n`` (0: no cap).

    A client's ``num_samples`` is its own claim; without a cap one client claiming a million
    samples would outweigh every other reply. The median over the round's selected slots is
    a bound the honest majority sets, and every participant derives it from the plan.
    """
    if cap <= 0:
        return [float(n) for n in sample_counts]
    bound = cap * _median([float(n) for n in sample_counts])
    return [min(float(n), bound) for n in sample_counts]


def run_local_round(
    engine: ZOEngine,
    rounds: FedKSeedRounds,
    plan: RoundPlan,
    slot: int,
    loss_for_step: Callable[[int], Callable[[], torch.Tensor]],
    losses: list[float] | None = None,
) -> bytes:
    """A selected client's work: its local ZO steps, one byte per (step, direction).

    With ``dp_clip`` set, ``loss_for_step`` must give per-example losses and each step's
    scalar is clipped and noised (:func:`fedseed.privacy.private_scalar`); no loss is reported.

    Each step estimates ``g`` along its scheduled pool seed, encodes it (the
    stochastic-rounding draw derived from (round, slot, step)), and applies
    the *decoded* value locally, as everyone else will. A step whose loss is
    not finite sends byte 0 (zero: applies nothing). ``losses``, if given,
    receives each finite step's mean of the two evaluations. The model ends away from
    the round's start; :func:`finish_round` puts it where everyone agrees.
    """
    codec, lr, config = rounds.codec, rounds.config.lr, rounds.config
    q = config.directions
    payload = bytearray()
    for step in range(config.local_steps):
        # All q directions are estimated at the step's start point on the step's one minibatch
        # (loss_for_step draws a new batch per call); the step applies their mean.
        loss = loss_for_step(step)
        seeds, coefs = [], []
        step_seeds = [rounds.seeds[plan.schedules[slot][step * q + d]] for d in range(q)]
        normalised = fzoo_scalars(engine, step_seeds, loss, losses) if config.estimator == "fzoo" else None
        for direction in range(q):
            index = step * q + direction  # the scalar's position in the reply and the schedule
            seed = step_seeds[direction]
            g: float | None
            if normalised is not None:
                g = normalised[direction]
            elif config.estimator == "fzoo":
                g = None  # a non-finite loss or no spread: the step sends zeros
            elif config.dp_clip > 0:  # loss_for_step gives per-example losses (fedseed.privacy)
                g = private_scalar(engine, seed, loss, config.dp_clip, config.dp_noise)
            else:
                result = engine.estimate(seed, loss)
                g = None if result is None else result.projected_grad
                if result is not None and losses is not None:
                    losses.append(result.loss)
            if g is None:
                payload.append(0)
                continue
            draw = uniform_from_seed(derive_seed(rounds.key, PURPOSE_ROUNDING, plan.round_index, slot, index))
            byte = codec.encode(g, draw)
            payload.append(byte)
            seeds.append(seed)
            coefs.append(float(np.float32(-lr * applied_value(codec.decode(byte), config) / q)))
        if seeds:
            engine.apply(seeds, coefs)
    return bytes(payload)


def fzoo_scalars(
    engine: ZOEngine, seeds: Sequence[int], loss: Callable[[], torch.Tensor], losses: list[float] | None
) -> list[float] | None:
    """FZOO's step scalars (Dang et al., 2025): ``(f(θ + εz_i) − f(θ)) / σ`` for the q directions,
    with ``σ`` the (population) std of the q perturbed losses: q + 1 forwards instead of 2q.

    The values are unitless (about a standard normal's size whatever the loss scale), so ``lr``
    is the step per direction; what travels is each value's byte, so replicas never need the
    losses. None (the step sends zeros) if a loss is not finite or the losses do not spread."""
    with torch.no_grad():
        base = float(loss())
    perturbed = []
    for seed in seeds:
        with engine.perturbed(seed, engine.eps):
            perturbed.append(float(loss()))
    spread = float(np.std(perturbed))
    if not (math.isfinite(base) and all(math.isfinite(f) for f in perturbed) and spread > 0):
        return None
    if losses is not None:
        losses.append(base)
    return [(f - base) / spread for f in perturbed]


def applied_value(decoded: float, config: RunSettings) -> float:
    """What a decoded scalar contributes to an update under the run's estimator."""
    if config.estimator == "sign":
        return float(np.sign(decoded))
    return decoded


def finish_round(engine: ZOEngine, start: Snapshot, entries: Sequence[LedgerEntry]) -> None:
    """Back to the round's start state, then the round's agreed ledger step."""
    engine.restore(start)
    if entries:
        engine.apply([e.seed for e in entries], [e.coef for e in entries])
