"""A short version of bench/fault_injection.py: SIGKILL the coordinator at random moments,
with clients on loopback directly and through a proxy that delays every chunk by 50 ms."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("delay_ms", [0.0, 50.0])
def test_random_kills_lose_no_acknowledged_reply_and_change_no_ledger(delay_ms: float) -> None:
    spec = importlib.util.spec_from_file_location("fault_injection", REPO / "bench" / "fault_injection.py")
    assert spec and spec.loader
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    summary = harness.run_trials(2 if delay_ms else 3, first_seed=100, delay_ms=delay_ms)
    assert summary["kills"] >= 2 and summary["acknowledged"] > 0
    assert summary["lost"] == 0
    assert summary["different_ledgers"] == 0
    assert summary["integrity_failures"] == 0
