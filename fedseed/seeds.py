"""Seeds nobody chooses: derived from public ids with a keyed hash.

``derive_seed(run_key, a, b, ...)`` is BLAKE2b keyed with the run's key over the
ids as unsigned 64-bit little-endian words, truncated to 64 bits. Every
participant who knows the run key derives the same seed for the same
``(round, client, step)`` (or ``(peer, step, sample)``), so no seed bytes need
to travel, and no participant can pick a seed to steer the model.
"""

from __future__ import annotations

import hashlib
import struct

from fedseed.perturb.stream import Seed, as_seed

# First id of every derivation: what the value is for, so that no two uses of
# one run key can ever produce the same input.
PURPOSE_PERTURB = 0  # (PURPOSE_PERTURB, round, client, step) -> perturbation seed
PURPOSE_ROUNDING = 1  # (PURPOSE_ROUNDING, round, client, step) -> stochastic-rounding draw
PURPOSE_POOL = 2  # (PURPOSE_POOL, j) -> the j-th seed of a FedKSeed pool
PURPOSE_SCHEDULE = 3  # (PURPOSE_SCHEDULE, round, slot, step) -> draw of the pool index used
PURPOSE_SELECTION = 4  # (PURPOSE_SELECTION, round, pick) -> draw of the client in slot `pick`
PURPOSE_DATA = 5  # (PURPOSE_DATA, crc32(client name)) -> a client's data-order seed
PURPOSE_DROPOUT = 6  # (PURPOSE_DROPOUT, round, slot) -> the simulator's dropout draw
PURPOSE_ATTACK = 7  # (PURPOSE_ATTACK, round, slot, step) -> a simulated Byzantine client's random byte
PURPOSE_LORA_INIT = 8  # (PURPOSE_LORA_INIT,) -> the stream seed of a run's LoRA A matrices (fedseed.lora)


def run_key(run_name: str) -> bytes:
    """A 32-byte key from a run's name (BLAKE2b of its UTF-8 bytes)."""
    return hashlib.blake2b(run_name.encode("utf-8"), digest_size=32).digest()


def derive_seed(key: bytes, *ids: int) -> Seed:
    if not 1 <= len(key) <= 64:
        raise ValueError("a run key is 1 to 64 bytes")
    for i in ids:
        if not 0 <= i < 1 << 64:
            raise ValueError(f"ids are unsigned 64-bit integers, got {i}")
    digest = hashlib.blake2b(struct.pack(f"<{len(ids)}Q", *ids), digest_size=8, key=key).digest()
    return as_seed(int.from_bytes(digest, "little"))
