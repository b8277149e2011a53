"""One byte per projected-gradient scalar, and the value everyone applies.

A ZO client's whole update for one step is the scalar ``g``; here it travels
as exactly one byte, and *every* participant, the sender included, applies
``decode(encode(g))``, so quantisation never makes replicas diverge.

Two codecs, both stateless given their published parameters:

- :class:`LogCodec` (after Just One Byte): sign plus a 7-bit logarithmic
  magnitude on ``[g_min, g_max]``; code 0 is exact zero. Relative error is
  bounded (``±(ratio**(1/126) - 1)/2``, about 4% for 6 decades) but it is
  biased toward the nearest level.
- :class:`ScaledInt8Codec`: ``q = round_stochastic(g / scale)`` clipped to
  ±127. Unbiased inside the clip range (stochastic rounding with a uniform
  ``u`` the sender derives from public ids, so the run stays reproducible);
  values beyond ``127·scale`` are clipped, which doubles as a robustness bound.

Byte layout (both): ``0x00`` is zero; bit 7 is the sign (1 = negative);
bits 0-6 the magnitude code 1..127.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedseed.errors import ConfigError

SIGN_BIT = 0x80
MAX_CODE = 127


class Codec(Protocol):
    @property
    def name(self) -> str: ...

    def encode(self, g: float, u: float = 0.5) -> int: ...

    def decode(self, byte: int) -> float: ...


def _split(byte: int) -> tuple[float, int]:
    if not 0 <= byte <= 0xFF:
        raise ValueError(f"a code is one byte, got {byte}")
    return (-1.0 if byte & SIGN_BIT else 1.0), byte & MAX_CODE


def _join(negative: bool, code: int) -> int:
    return 0 if code == 0 else (SIGN_BIT if negative else 0) | code


@dataclass(frozen=True)
class LogCodec:
    """``|g|`` in ``[g_min, g_max]`` on 127 log-spaced levels; smaller magnitudes become 0."""

    g_min: float = 1e-3
    g_max: float = 1e3
    name: str = "log"

    def __post_init__(self) -> None:
        if not (0 < self.g_min < self.g_max and math.isfinite(self.g_max)):
            raise ConfigError(f"need 0 < g_min < g_max < inf, got {self.g_min}, {self.g_max}")

    @property
    def _step(self) -> float:
        return math.log(self.g_max / self.g_min) / (MAX_CODE - 1)

    def encode(self, g: float, u: float = 0.5) -> int:
        """Nearest level in log space (``u`` is unused: this codec is deterministic)."""
        if not math.isfinite(g):
            raise ValueError(f"cannot encode non-finite scalar {g}")
        magnitude = abs(g)
        if magnitude < self.g_min / math.exp(self._step / 2):
            return 0
        # Clamped first: g / g_min overflows to inf for |g| near the float64 maximum (found by fuzzing).
        level = round(math.log(min(max(magnitude, self.g_min), self.g_max) / self.g_min) / self._step)
        return _join(g < 0, 1 + min(level, MAX_CODE - 1))

    def decode(self, byte: int) -> float:
        sign, code = _split(byte)
        if code == 0:
            return 0.0
        return float(np.float32(sign * self.g_min * math.exp((code - 1) * self._step)))


@dataclass(frozen=True)
class ScaledInt8Codec:
    """``g ≈ q·scale`` with ``q`` an integer in ``[-127, 127]``, stochastically rounded."""

    scale: float
    name: str = "int8"

    def __post_init__(self) -> None:
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ConfigError(f"scale must be positive and finite, got {self.scale}")

    def encode(self, g: float, u: float = 0.5) -> int:
        """``u`` in [0, 1) is the stochastic-rounding draw; 0.5 gives round-half-up."""
        if not math.isfinite(g):
            raise ValueError(f"cannot encode non-finite scalar {g}")
        if not 0.0 <= u < 1.0:
            raise ValueError(f"u must be in [0, 1), got {u}")
        x = min(abs(g) / self.scale, float(MAX_CODE))
        q = min(math.floor(x + u), MAX_CODE)  # P(round up) = frac(x): unbiased
        return _join(g < 0, q)

    def decode(self, byte: int) -> float:
        sign, code = _split(byte)
        return float(np.float32(sign * code * self.scale))


def uniform_from_seed(seed: int) -> float:
    """A uniform in [0, 1) from a 64-bit derived seed (its top 53 bits)."""
    return (seed >> 11) * 2.0**-53


def codec_named(name: str) -> Codec:
    """The codec a run's settings name (fedseed.settings.CODECS), with its published parameters."""
    if name == "log":
        return LogCodec()
    raise ConfigError(f"unknown codec {name!r}; runs replay only 'log'")
