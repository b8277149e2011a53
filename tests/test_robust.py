"""Robust aggregation: clipping, per-seed votes among replicas, anomaly scores, rejection.

Every rule works on the round's bytes alone, so all participants agree on its outcome.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedseed import serde, simulate
from fedseed.codec import LogCodec
from fedseed.errors import ConfigError
from fedseed.ledger import Ledger
from fedseed.rounds import FedKSeedRounds, capped_counts, combine
from fedseed.seeds import run_key
from fedseed.settings import RunParams, RunSettings

CODEC = LogCodec()
STEPS = 8


def _rounds(**robust: object) -> FedKSeedRounds:
    config = RunSettings(pool_size=64, local_steps=STEPS, lr=0.01, eps=1e-3, **robust)  # type: ignore[arg-type]
    return FedKSeedRounds(config, run_key("robust"), CODEC)


def _honest(rng: np.random.Generator, n: int = STEPS, center: np.ndarray | None = None) -> bytes:
    values = (center if center is not None else 0) + rng.normal(0, 1, n)
    return bytes(CODEC.encode(float(v), 0.5) for v in values)


def test_combine_rules() -> None:
    assert combine([3.0], "median", 0.25) == 3.0
    assert combine([1.0, 100.0, 2.0], "median", 0.0) == 2.0
    assert combine([1.0, 2.0, 4.0, 100.0], "median", 0.0) == 3.0
    assert combine([-100.0, 1.0, 2.0, 3.0, 100.0], "trimmed-mean", 0.2) == 2.0
    assert combine([1.0, 2.0], "trimmed-mean", 0.49) == 1.5  # nothing left to trim: the mean of 2
    assert combine([1.0, 2.0, 6.0], "mean", 0.0) == 3.0


@pytest.mark.parametrize(
    ("settings", "match"),
    [({"clip_factor": -1.0}, "clip_factor"), ({"replicas": 0}, "replicas"),
     ({"aggregator": "krum"}, "unknown aggregator 'krum'"), ({"trim": 0.5}, "trim"),
     ({"reject_anomaly": math.inf}, "reject_anomaly"), ({"weight_cap": 0.5}, "weight_cap"),
     ({"weight_cap": math.nan}, "weight_cap")],
)  # fmt: skip
def test_bad_settings_are_named(settings: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        _rounds(**settings)


def test_honest_rounds_are_unchanged_by_the_default_clip() -> None:
    rng = np.random.default_rng(0)
    replies = [{s: _honest(rng) for s in range(4)} for _ in range(3)]
    clipped, plain = _rounds(), _rounds(clip_factor=0.0)
    for r, reply in enumerate(replies):
        a = clipped.aggregate(clipped.plan(r, [10] * 4), reply)
        b = plain.aggregate(plain.plan(r, [10] * 4), reply)
        assert a == b and clipped.last.clipped == {s: 0 for s in range(4)}


def test_capped_counts() -> None:
    assert capped_counts([10, 10, 1_000_000], 2.0) == [10.0, 10.0, 20.0]
    assert capped_counts([10, 20, 30, 40], 0.0) == [10.0, 20.0, 30.0, 40.0]  # 0 = off
    assert capped_counts([5, 7, 9], 2.0) == [5.0, 7.0, 9.0]  # honest spreads are untouched


def test_a_client_claiming_a_million_samples_cannot_claim_the_round() -> None:
    # Three honest clients (10 samples each) push every seed one way; the claimer pushes the
    # other way. Uncapped, its 1,000,000 samples decide the round; capped at the default 2x
    # the median (20 samples against the others' 30), the honest majority's direction wins.
    honest = bytes(CODEC.encode(1.0, 0.5) for _ in range(STEPS))
    claimer = bytes(CODEC.encode(-1.0, 0.5) for _ in range(STEPS))
    replies = {0: honest, 1: honest, 2: honest, 3: claimer}
    counts = [10, 10, 10, 1_000_000]
    for cap, honest_wins in [(RunSettings().weight_cap, True), (0.0, False)]:
        config = RunSettings(pool_size=1, local_steps=STEPS, lr=0.01, eps=1e-3, weight_cap=cap)
        rounds = FedKSeedRounds(config, run_key("robust"), CODEC)  # one seed: every slot moves it
        [entry] = rounds.aggregate(rounds.plan(0, counts), replies)
        assert (entry.coef < 0) == honest_wins, cap


def test_a_maximal_scalar_is_clipped_to_the_honest_scale() -> None:
    rng = np.random.default_rng(1)
    reply = {s: _honest(rng) for s in range(4)}
    reply[3] = bytes([0x7F] * STEPS)  # the largest magnitude the codec carries (1000), all positive
    clipped, plain = _rounds(), _rounds(clip_factor=0.0)
    a = clipped.aggregate(clipped.plan(0, [10] * 4), reply)
    b = plain.aggregate(plain.plan(0, [10] * 4), reply)
    assert max(abs(e.coef) for e in b) > 2.0  # 0.01 x 1/4 x ~1000
    bound = clipped.last.clip_bound
    assert 1.0 < bound < 20.0 and clipped.last.clipped[3] == STEPS
    assert max(abs(e.coef) for e in a) <= 0.01 * bound * 1.0001
    assert clipped.last.anomaly[3] == 1.0 and max(clipped.last.anomaly[s] for s in range(3)) == 0.0


def test_replicas_share_schedules_and_a_median_outvotes_a_sign_flipper() -> None:
    rng = np.random.default_rng(2)
    rounds = _rounds(replicas=3, aggregator="median", reject_anomaly=3.0)
    plan = rounds.plan(0, [10] * 6)
    assert plan.schedules[0] == plan.schedules[1] == plan.schedules[2] != plan.schedules[3]
    assert plan.schedules[3] == plan.schedules[5]
    truth = rng.normal(0, 2, STEPS)  # what honest replicas of one schedule roughly agree on
    reply = {s: _honest(np.random.default_rng(10 + s), center=truth) for s in range(6)}
    reply[4] = bytes(b ^ 0x80 if b else 0 for b in reply[4])  # slot 4 flips every sign
    entries = rounds.aggregate(plan, reply)
    scores = rounds.last.anomaly
    assert scores[4] == max(scores.values()) and scores[4] > 3.0 > max(scores[s] for s in (0, 1, 2, 3, 5))
    assert rounds.last.rejected == (4,)
    # Without the flipper the median of group 1 is between its two honest values, as with the flipper
    # rejected: the step equals the one computed from the honest replies alone.
    honest = _rounds(replicas=3, aggregator="median")
    expected = honest.aggregate(honest.plan(0, [10] * 6), {s: p for s, p in reply.items() if s != 4})
    assert entries == expected


def test_robust_settings_travel_in_run_params() -> None:
    config = RunSettings(64, 8, 0.01, 1e-3, False, 4.0, 3, "trimmed-mean", 0.2, 2.5)
    params = RunParams("r", config)
    assert serde.run_params_from_proto(serde.run_params_to_proto(params)) == params


TINY = {
    "model": "minilm", "trainable": ["LayerNorm", "^classifier\\."], "rounds": 3, "num_clients": 4,
    "clients_per_round": 4, "local_steps": 4, "examples": 64, "test_size": 16, "eval_every": 3,
    "progress": False,
}  # fmt: skip


def _byzantine_bench() -> Any:
    # The attack lives in bench/ (an experiment, never part of a run's settings).
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "byzantine", Path(__file__).parents[1] / "bench" / "byzantine.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("byzantine", module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("clip_factor", [8.0, 0.0])
def test_a_simulated_attacker_is_clipped_and_flagged(tmp_path: Path, clip_factor: float) -> None:
    config = simulate.config_from_dict(
        {**TINY, "clip_factor": clip_factor, "run_name": f"byz-{clip_factor}", "out_dir": str(tmp_path)}
    )
    report = _byzantine_bench().run_attacked(config, attackers=1, attack="max")
    rows = [json.loads(line) for line in (report.run_dir / "metrics.jsonl").read_text().splitlines()]
    coefs = [abs(e.coef) for e in Ledger.load(report.run_dir / "ledger.jsonl")]
    attacker = simulate.client_name(0)
    if clip_factor:
        bound = max(row["clip_bound"] for row in rows)
        assert all(row["clipped"] == 4 for row in rows)  # the attacker's 4 bytes, every round
        assert all(row["anomaly"][attacker] == 1.0 for row in rows)
        assert max(coefs) <= config.lr * bound * 1.0001
    else:
        assert all(row["clip_bound"] is None for row in rows)
        assert max(coefs) >= config.lr * 1000 / 4 * 0.9  # one in four voices at the codec's maximum
