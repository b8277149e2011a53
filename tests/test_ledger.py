"""The ledger: exact storage, ordering, crash evidence, and bit-exact replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedseed import models, tasks
from fedseed.errors import LedgerError
from fedseed.ledger import Ledger, LedgerEntry, model_hash, replay
from fedseed.zo import TrainableSet, ZOEngine
from tests.test_zo import SENTENCES


def test_coefficients_round_trip_exactly_through_a_file(tmp_path: Path) -> None:
    # Prepare: float32 values of every kind, subnormals and extremes included.
    rng = np.random.Generator(np.random.PCG64(3))
    values = list(rng.standard_normal(200).astype(np.float32) * 1e-4)
    values += [np.float32(1.4e-45), np.float32(-3.4028235e38), np.float32(1 / 3), np.float32(0.0)]
    ledger = Ledger(LedgerEntry.make(0, i, i + 1, float(v)) for i, v in enumerate(values))
    # Execute
    ledger.save(tmp_path / "l.jsonl")
    loaded = Ledger.load(tmp_path / "l.jsonl")
    # Assert
    assert loaded.entries == ledger.entries
    assert [np.float32(e.coef) for e in loaded] == values


def test_appends_reach_the_file_before_returning(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    with Ledger(path=path) as ledger:
        ledger.append(LedgerEntry.make(0, 0, 1, 0.5))
        assert Ledger.load(path).entries == ledger.entries  # read by another handle, mid-run


def test_a_corrupt_line_is_reported_with_its_line_number(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.jsonl"
    Ledger([LedgerEntry.make(0, 0, 1, 0.5), LedgerEntry.make(0, 1, 2, 0.25)]).save(path)
    with open(path, "a") as f:
        f.write('{"round": 0, "step": 2, "se\n{"round": 0, "step": 3, "seed": 4, "coef": 0.5}\n')
    with pytest.raises(LedgerError, match=r"corrupt.jsonl:3: not a ledger entry"):
        Ledger.load(path)


def test_entries_only_move_forward() -> None:
    ledger = Ledger([LedgerEntry.make(1, 5, 1, 0.1)])
    ledger.append(LedgerEntry.make(1, 5, 2, 0.1))  # same step: applied together
    with pytest.raises(LedgerError, match="only grows forward"):
        ledger.append(LedgerEntry.make(1, 4, 3, 0.1))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e39])
def test_non_finite_coefficients_never_enter(bad: float) -> None:
    with pytest.raises(LedgerError, match="non-finite"):
        LedgerEntry.make(0, 0, 1, bad)


def test_steps_group_entries_of_one_ledger_step() -> None:
    entries = [LedgerEntry.make(0, 0, 1, 0.1), LedgerEntry.make(0, 0, 2, 0.2), LedgerEntry.make(0, 1, 3, 0.3)]
    groups = [(r, s, [e.seed for e in g]) for r, s, g in Ledger(entries).steps()]
    assert groups == [(0, 0, [1, 2]), (0, 1, [3])]


def test_model_hash_sees_every_bit() -> None:
    model = nn.Linear(8, 2)
    h = model_hash(model)
    assert h.startswith("sha256:") and model_hash(model) == h
    with torch.no_grad():
        model.bias.view(torch.int32)[0] ^= 1  # flip the lowest mantissa bit
    assert model_hash(model) != h


@pytest.mark.slow
def test_replaying_a_clients_ledger_rebuilds_its_model_bit_for_bit(tmp_path: Path) -> None:
    # Prepare: a client trains on a real model, big tensors included, logging every step.
    client, tokenizer = models.load_sequence_classifier(num_labels=2, init_seed=1)
    include = ["bias$", "LayerNorm", r"^classifier\.", r"layer\.5\.output\.dense\.weight", "word_embeddings"]
    engine = ZOEngine(client, TrainableSet.from_model(client, include=include), eps=1e-3)
    task = tasks.SequenceClassificationTask(client, tokenizer, max_length=32)
    encoded = task.encode(SENTENCES)
    base_hash = model_hash(client)
    path = tmp_path / "ledger.jsonl"
    with Ledger(path=path) as ledger:
        for step in range(4):
            result = engine.step(1000 + step, lambda: tasks.loss(task, encoded), lr=1e-2)
            assert result is not None
            ledger.append(LedgerEntry.make(0, step, result.seed, result.coef))
        # a federated-style step: several entries applied with one rounding
        coefs = [3e-4, -1e-4, 2e-4]
        engine.apply([7, 8, 9], coefs)
        ledger.extend([LedgerEntry.make(1, 0, s, c) for s, c in zip([7, 8, 9], coefs, strict=True)])
    # Execute: a fresh replica of the base model replays the file.
    replica, _ = models.load_sequence_classifier(num_labels=2, init_seed=1)
    assert model_hash(replica) == base_hash
    replica_engine = ZOEngine(replica, TrainableSet.from_model(replica, include=include))
    steps = replay(replica_engine, Ledger.load(path))
    # Assert
    assert steps == 5
    assert model_hash(replica) == model_hash(client) != base_hash
    for (name, a), (_, b) in zip(client.named_parameters(), replica.named_parameters(), strict=True):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), name


def test_a_torn_last_line_is_dropped_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    entries = [LedgerEntry.make(0, s, 100 + s, 0.5) for s in range(3)]
    Ledger(entries).save(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(entries[-1].to_json()[:20])  # a crash in the middle of the next append
    assert Ledger.load(path).entries == tuple(entries)
