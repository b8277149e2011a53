"""Addressing of perturbation stream v1 (``docs/spec/perturbation-stream-v1.md``)."""

from __future__ import annotations

import zlib
from typing import NewType

STREAM_NAME = "philox4x32-10/rademacher/v1"
BLOCK = 128  # elements per Philox call: 4 words x 32 bits
STREAM_PERTURB = 0  # counter word c2 for perturbations; other values are reserved

Seed = NewType("Seed", int)
"""An unsigned 64-bit perturbation seed."""

SEED_LIMIT = 1 << 64


def as_seed(value: int) -> Seed:
    """Check that ``value`` is a valid unsigned 64-bit seed and type it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"a seed is an int, got {type(value).__name__}")
    if not 0 <= value < SEED_LIMIT:
        raise ValueError(f"a seed is an unsigned 64-bit integer, got {value}")
    return Seed(value)


def seed_key(seed: int) -> tuple[int, int]:
    """Philox key ``(k0, k1) = (seed & 0xffffffff, seed >> 32)``."""
    seed = as_seed(seed)
    return seed & 0xFFFFFFFF, seed >> 32


def tensor_id(name: str) -> int:
    """32-bit id of a trainable tensor: CRC-32 of its fully qualified name."""
    return zlib.crc32(name.encode("utf-8"))
