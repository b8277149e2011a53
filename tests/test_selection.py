"""Selection policies: deterministic, only available clients, the pool grows with the pacing."""

from __future__ import annotations

import math

import pytest

from fedseed.curriculum import pacing
from fedseed.errors import ConfigError
from fedseed.seeds import run_key
from fedseed.selection import POLICIES, Candidate, Disparity, SelectionConfig, select

KEY = run_key("selection-test")
CLIENTS = [Candidate(f"c{i:02d}", 10 + i, score=float(i)) for i in range(20)]  # c00 easiest


@pytest.mark.parametrize("policy", POLICIES)
def test_selection_is_deterministic_distinct_and_only_from_candidates(policy: str) -> None:
    config = SelectionConfig(policy=policy)
    available = [c for c in CLIENTS if c.name not in {"c03", "c07", "c11"}]  # three clients away
    for r in range(30):
        chosen = select(config, KEY, r, 30, available, 4)
        assert chosen == select(config, KEY, r, 30, list(reversed(available)), 4)  # order-free
        assert len(set(chosen)) == 4
        assert set(chosen) <= {c.name for c in available}


def test_uniform_reaches_every_client() -> None:
    seen = {n for r in range(40) for n in select(SelectionConfig(), KEY, r, 40, CLIENTS, 4)}
    assert seen == {c.name for c in CLIENTS}


def test_power_of_choice_takes_the_hardest_of_its_candidates() -> None:
    config = SelectionConfig(policy="power-of-choice", candidates=20)  # d = all: pure top-m by loss
    assert select(config, KEY, 0, 10, CLIENTS, 3) == ["c19", "c18", "c17"]
    unknown = [*CLIENTS[:5], Candidate("new", 5, None)]
    assert select(config, KEY, 0, 10, unknown, 1) == ["new"]  # never reported: explored first


def test_disparity_pool_grows_with_the_pacing_and_holds_the_easiest() -> None:
    policy, total, m = Disparity("linear", 0.8, 0.2), 50, 2
    previous = 0
    for r in range(total):
        pool = policy.pool(r, total, CLIENTS, m)
        expected = min(20, max(m, math.ceil(pacing("linear", r / total, 0.8, 0.2) * 20)))
        assert [c.name for c in pool] == [f"c{i:02d}" for i in range(expected)]
        assert len(pool) >= previous
        previous = len(pool)
        chosen = select(SelectionConfig(policy="disparity"), KEY, r, total, CLIENTS, m)
        assert set(chosen) <= {c.name for c in pool}
    assert previous == 20


def test_disparity_sweeps_every_eligible_client_once_per_sweep() -> None:
    # Late in the run the pool is everyone: 20 clients, 4 per round -> each sweep is 5 rounds.
    config = SelectionConfig(policy="disparity", a=0.1)
    sweep = [n for r in range(5, 10) for n in select(config, KEY, r, 10, CLIENTS, 4)]
    assert sorted(sweep) == sorted(c.name for c in CLIENTS)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        (
            dict(policy="oort"),
            "unknown selection policy 'oort'; choose one of uniform, power-of-choice, disparity",
        ),
        (dict(policy="disparity", a=2.0), "pacing a must be in \\(0, 1\\]"),
        (dict(policy="disparity", pacing="cosine"), "unknown pacing 'cosine'"),
    ],
)
def test_bad_selection_settings_are_clear_errors(settings: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SelectionConfig(**settings)  # type: ignore[arg-type]


def test_asking_for_more_clients_than_available_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="cannot select 5 clients from 3 available"):
        select(SelectionConfig(), KEY, 0, 1, CLIENTS[:3], 5)
