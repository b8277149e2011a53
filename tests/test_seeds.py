"""Derived seeds: deterministic, key-separated, purpose-separated."""

from __future__ import annotations

import pytest

from fedseed.seeds import PURPOSE_PERTURB, PURPOSE_ROUNDING, derive_seed, run_key


def test_same_ids_same_seed_and_different_keys_differ() -> None:
    key = run_key("run-a")
    assert derive_seed(key, PURPOSE_PERTURB, 1, 2, 3) == derive_seed(key, PURPOSE_PERTURB, 1, 2, 3)
    assert derive_seed(key, PURPOSE_PERTURB, 1, 2, 3) != derive_seed(
        run_key("run-b"), PURPOSE_PERTURB, 1, 2, 3
    )


def test_purposes_and_positions_never_collide() -> None:
    key = run_key("run")
    seeds = {derive_seed(key, p, r, c, s) for p in (PURPOSE_PERTURB, PURPOSE_ROUNDING)
             for r in range(4) for c in range(4) for s in range(8)}  # fmt: skip
    assert len(seeds) == 2 * 4 * 4 * 8
    assert derive_seed(key, 0, 1) != derive_seed(key, 1, 0)


def test_seeds_are_64_bit_and_ids_are_checked() -> None:
    assert 0 <= derive_seed(run_key("x"), 0) < 1 << 64
    with pytest.raises(ValueError, match="unsigned 64-bit"):
        derive_seed(run_key("x"), -1)
