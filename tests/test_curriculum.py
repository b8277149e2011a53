"""Pacing functions match the paper's formulas; orders are deterministic; bad input is clear."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from fedseed.curriculum import (
    PACINGS,
    ClientCurriculum,
    CurriculumConfig,
    order,
    paced_count,
    pacing,
)
from fedseed.errors import ConfigError

A, B = 0.8, 0.2


def _x(t: float) -> float:
    return t / A


@pytest.mark.parametrize(
    ("name", "formula"),
    [
        ("linear", lambda t: B + (1 - B) * _x(t)),
        ("quadratic", lambda t: B + (1 - B) * _x(t) ** 2),
        ("root", lambda t: B + (1 - B) * _x(t) ** 0.5),
        ("step", lambda t: B + math.floor(_x(t))),
        ("exponential", lambda t: B + (1 - B) * (math.exp(10 * _x(t)) - 1) / (math.exp(10) - 1)),
        ("logarithmic", lambda t: B + (1 - B) * (1 + math.log(_x(t) + math.exp(-10)) / 10)),
    ],
)
def test_pacing_values_match_the_formulas(name: str, formula: object) -> None:
    assert callable(formula)
    for t in (0.0, 0.1, 0.4, 0.6, 0.79):
        assert pacing(name, t, A, B) == pytest.approx(min(1.0, max(B, formula(t))), rel=1e-12, abs=1e-12)
    assert pacing(name, 0.0, A, B) == pytest.approx(B)
    for t in (0.8, 0.9, 1.0):  # all data in from a*T on
        assert pacing(name, t, A, B) == 1.0


def test_pacing_is_monotone_in_progress() -> None:
    ts = np.linspace(0, 1, 101)
    for name in PACINGS:
        values = [pacing(name, float(t), A, B) for t in ts]
        assert all(b >= a for a, b in itertools.pairwise(values)), name


def test_paced_count_respects_the_floor_and_the_total() -> None:
    assert paced_count(1000, 0.2, 32) == 200
    assert paced_count(1000, 0.01, 32) == 32  # never fewer than min_samples ...
    assert paced_count(20, 0.1, 32) == 20  # ... unless the client has fewer
    assert paced_count(1000, 1.0, 32) == 1000


def test_orders_are_deterministic_and_point_the_right_way() -> None:
    scores = np.array([0.5, 0.1, 0.9, 0.3])
    assert list(order(scores, 4, "curriculum", 0)) == [1, 3, 0, 2]
    assert list(order(scores, 4, "anti", 0)) == [2, 0, 3, 1]
    assert list(order(None, 100, "random", 7)) == list(order(None, 100, "random", 7))
    assert list(order(None, 100, "random", 7)) != list(order(None, 100, "random", 8))


def test_a_client_curriculum_grows_its_easy_prefix_and_rescores_on_cadence() -> None:
    config = CurriculumConfig(
        ordering="curriculum", pacing="linear", a=0.5, b=0.25, min_samples=1, rescore_every=3
    )
    cur = ClientCurriculum(config, 8, seed=1)
    assert cur.needs_scoring(0)
    cur.rescore(np.arange(8.0)[::-1], 0)  # sample 7 easiest
    assert list(cur.available(0.0)) == [7, 6]
    assert list(cur.available(0.25)) == [7, 6, 5, 4, 3]  # 0.25 + 0.75 * 0.5 = 0.625 -> 5
    assert len(cur.available(0.5)) == 8
    assert not cur.needs_scoring(2) and cur.needs_scoring(3)
    vanilla = ClientCurriculum(CurriculumConfig(), 8, seed=1)
    assert not vanilla.needs_scoring(0) and len(vanilla.available(0.0)) == 8


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        (dict(pacing="cosine"), "unknown pacing 'cosine'; choose one of linear, quadratic, root, step"),
        (
            dict(ordering="hardest"),
            "unknown ordering 'hardest'; choose one of curriculum, anti, random, vanilla",
        ),
        (dict(scoring="vibes"), "unknown scoring 'vibes'; choose one of loss, length, loss\\+length"),
        (dict(a=0.0), "pacing a must be in \\(0, 1\\]"),
        (dict(a=1.5), "pacing a must be in \\(0, 1\\]"),
        (dict(b=-0.1), "pacing b must be in \\[0, 1\\]"),
    ],
)
def test_bad_curriculum_settings_are_clear_errors(settings: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        CurriculumConfig(**settings)  # type: ignore[arg-type]


def test_a_scored_order_survives_a_new_process_through_its_state() -> None:
    # The Deployment Engine may run each message in a fresh ClientApp process: the order
    # scored in round 0 travels in Flower's Context, and a fresh curriculum restored from it
    # serves the same prefix without scoring again (tests/test_equivalence.py runs it for real).
    config = CurriculumConfig(ordering="curriculum", min_samples=2)
    first = ClientCurriculum(config, 6, seed=1)
    assert first.state() is None  # nothing scored yet: nothing to keep
    first.rescore(np.array([5.0, 1.0, 4.0, 2.0, 3.0, 0.5]), round_index=0)
    fresh = ClientCurriculum(config, 6, seed=1)
    state = first.state()
    assert state is not None
    fresh.restore(*state)
    assert not fresh.needs_scoring(1)
    assert fresh.available(0.5).tolist() == first.available(0.5).tolist()
    with pytest.raises(ValueError, match="permute 6 samples"):
        fresh.restore([0, 0, 1, 2, 3, 4], 0)
