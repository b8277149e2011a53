"""FedKSeed round logic: derivations everyone shares, exact aggregation, replicas that agree."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch

from fedseed import data, tasks
from fedseed.codec import LogCodec
from fedseed.ledger import Ledger, model_hash, replay
from fedseed.rounds import (
    EXP_TABLE,
    FedKSeedRounds,
    Importance,
    RunSettings,
    draw_index,
    finish_round,
    run_local_round,
)
from fedseed.seeds import run_key
from fedseed.zo import TrainableSet, ZOEngine


def _rounds(importance: bool = False, pool_size: int = 64, local_steps: int = 8) -> FedKSeedRounds:
    config = RunSettings(pool_size=pool_size, local_steps=local_steps, lr=1e-2, importance=importance)
    return FedKSeedRounds(config, run_key("test-run"), LogCodec())


def test_every_participant_derives_the_same_plan() -> None:
    a, b = _rounds(), _rounds()
    assert a.seeds == b.seeds and len(set(a.seeds)) == 64
    assert a.plan(3, [10, 20]) == b.plan(3, [10, 20])
    assert a.plan(3, [10, 20]).schedules[0] != a.plan(4, [10, 20]).schedules[0]
    plan = a.plan(3, [10, 20])
    assert plan.schedules[0] != plan.schedules[1]


def test_uniform_schedules_cover_the_pool_evenly() -> None:
    rounds = _rounds(pool_size=16, local_steps=4000)
    counts = np.bincount(rounds.plan(0, [1]).schedules[0], minlength=16)
    assert counts.min() > 180 and counts.max() < 320  # 250 expected each


def test_integer_draw_follows_the_weights_exactly() -> None:
    cumulative = [1, 4]  # weights 1 and 3
    assert draw_index(0, cumulative) == 0
    assert draw_index((1 << 64) // 4 - 1, cumulative) == 0
    assert draw_index((1 << 64) // 4, cumulative) == 1
    assert draw_index((1 << 64) - 1, cumulative) == 1


def test_pro_weights_are_exact_integers_with_ratio_at_most_e() -> None:
    assert EXP_TABLE[0] == 1 << 40
    assert EXP_TABLE[-1] == round(math.e * (1 << 40))
    importance = Importance(8)
    assert importance.weights() == [1] * 8  # no history yet: uniform
    for j, g in enumerate([0.0, 100.0, 500.0, 2000.0]):
        importance.record(j, g)
    weights = importance.weights()
    assert max(weights) / min(weights) <= math.e * (1 + 1e-12)  # FedKSeed-Pro: mild by design
    assert weights[3] == EXP_TABLE[-1]  # the largest mean |g| (clipped to 1000) gets e
    assert weights[2] > weights[1] > weights[0] == EXP_TABLE[0]


def test_aggregation_weights_by_samples_and_checks_replies() -> None:
    rounds = _rounds(local_steps=2)
    plan = rounds.plan(0, [1, 3])
    codec = rounds.codec
    replies = {0: bytes([codec.encode(1.0), codec.encode(-2.0)]), 1: bytes([codec.encode(0.5), 0])}
    entries = rounds.aggregate(plan, replies)
    expected: dict[int, float] = {}
    for slot, share in ((0, 0.25), (1, 0.75)):
        for j, byte in zip(plan.schedules[slot], replies[slot], strict=True):
            expected[j] = expected.get(j, 0.0) + share * codec.decode(byte)
    assert [e.seed for e in entries] == [rounds.seeds[j] for j in sorted(expected) if expected[j] != 0.0]
    assert [e.coef for e in entries] == [
        float(np.float32(-1e-2 * expected[j])) for j in sorted(expected) if expected[j] != 0.0
    ]
    with pytest.raises(ValueError, match="sent 1 bytes"):
        rounds.aggregate(plan, {0: b"\x01"})
    with pytest.raises(ValueError, match="no slot 5"):
        rounds.aggregate(plan, {5: b"\x01\x02"})


@pytest.mark.slow
def test_three_clients_and_a_late_joiner_agree_bit_for_bit(minilm: Any) -> None:
    # Prepare: three replicas of one base model, each with its own data shard.
    base, tokenizer = minilm
    include = ["LayerNorm", r"^classifier\."]
    examples = data.load_vader("movies")[:96]
    shards = [examples[i::3] for i in range(3)]
    replicas = [copy.deepcopy(base) for _ in range(3)]
    engines = [ZOEngine(m, TrainableSet.from_model(m, include=include), eps=1e-3) for m in replicas]
    client_tasks = [tasks.SequenceClassificationTask(m, tokenizer, max_length=32) for m in replicas]
    coordinator = _rounds(local_steps=3)
    client_rounds = [_rounds(local_steps=3) for _ in range(3)]
    ledger = Ledger()
    base_hash = model_hash(base)

    def loss_for(task: tasks.SequenceClassificationTask, shard: list[data.Example], round_index: int):  # type: ignore[no-untyped-def]
        def for_step(step: int):  # type: ignore[no-untyped-def]
            start = (round_index * 3 + step) * 4 % len(shard)
            encoded = task.encode(shard[start : start + 4])
            return lambda: tasks.loss(task, encoded)

        return for_step

    # Execute: three rounds; slot i is client i.
    for round_index in range(3):
        plan = coordinator.plan(round_index, [len(s) for s in shards])
        starts = [e.snapshot() for e in engines]
        replies = {}
        for i in range(3):
            assert client_rounds[i].plan(round_index, [len(s) for s in shards]) == plan
            replies[i] = run_local_round(
                engines[i], client_rounds[i], plan, i, loss_for(client_tasks[i], shards[i], round_index)
            )
        local_hashes = {model_hash(m) for m in replicas}
        entries = coordinator.aggregate(plan, replies)
        ledger.extend(entries)
        for i in range(3):
            client_rounds[i].aggregate(plan, replies)  # clients keep the same importance history
            finish_round(engines[i], starts[i], entries)
        # Assert: every replica holds the same bits after every round.
        hashes = {model_hash(m) for m in replicas}
        assert len(hashes) == 1 and hashes.isdisjoint(local_hashes)
    # A late joiner replays the ledger onto the base model.
    late = copy.deepcopy(base)
    assert model_hash(late) == base_hash
    replay(ZOEngine(late, TrainableSet.from_model(late, include=include)), ledger)
    assert model_hash(late) == model_hash(replicas[0]) != base_hash
    assert all(torch.equal(a, b) for a, b in zip(late.parameters(), replicas[1].parameters(), strict=True))


def test_momentum_carries_each_seeds_velocity_across_rounds_exactly() -> None:
    config = RunSettings(pool_size=8, local_steps=2, lr=1e-2, momentum=0.5, clip_factor=0.0)
    rounds = FedKSeedRounds(config, run_key("momentum"), LogCodec())
    codec = rounds.codec
    steps = []
    for r in range(3):
        plan = rounds.plan(r, [1])
        payload = bytes([codec.encode(1.0 + r), codec.encode(-0.5)]) if r < 2 else None
        step: dict[int, float] = {}
        if payload is not None:
            for j, byte in zip(plan.schedules[0], payload, strict=True):
                step[j] = step.get(j, 0.0) + codec.decode(byte)
        steps.append(step)
        entries = rounds.aggregate(plan, {0: payload} if payload is not None else {})
        velocity: dict[int, float] = {}
        for earlier in steps:  # v = sum_k beta^(r-k) step_k, in the same float64 order
            for j in set(velocity) | set(earlier):
                velocity[j] = 0.5 * velocity.get(j, 0.0) + earlier.get(j, 0.0)
        expected = {j: float(np.float32(-1e-2 * v)) for j, v in velocity.items() if v != 0.0}
        assert {rounds.seeds.index(e.seed): e.coef for e in entries} == expected
    assert len(entries) > 0  # round 2 had no reply, yet the velocity still moves the model
    rounds.reset()
    assert rounds.velocity == {}
