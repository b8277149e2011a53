"""A short version of bench/fault_injection.py: SIGKILL the coordinator at random moments."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_random_kills_lose_no_acknowledged_reply_and_change_no_ledger() -> None:
    spec = importlib.util.spec_from_file_location("fault_injection", REPO / "bench" / "fault_injection.py")
    assert spec and spec.loader
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    summary = harness.run_trials(3, first_seed=100)
    assert summary["kills"] >= 3 and summary["acknowledged"] > 0
    assert summary["lost"] == 0
    assert summary["different_ledgers"] == 0
    assert summary["integrity_failures"] == 0
