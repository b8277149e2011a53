"""One-byte codecs: layout, error bounds, unbiasedness, refusal of bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedseed.codec import LogCodec, ScaledInt8Codec, uniform_from_seed
from fedseed.errors import ConfigError


@pytest.mark.parametrize("codec", [LogCodec(), ScaledInt8Codec(0.05)])
def test_every_byte_decodes_and_zero_is_zero(codec: LogCodec | ScaledInt8Codec) -> None:
    values = [codec.decode(b) for b in range(256)]
    assert all(math.isfinite(v) for v in values)
    assert codec.decode(0) == 0.0 and codec.encode(0.0) == 0
    assert codec.decode(codec.encode(1.0)) > 0 > codec.decode(codec.encode(-1.0))


def test_log_codec_relative_error_is_bounded_inside_its_range() -> None:
    codec = LogCodec(1e-3, 1e3)
    bound = (math.exp(codec._step / 2) - 1) * 1.0001
    for g in np.geomspace(1e-3, 1e3, 2000):
        for signed in (g, -g):
            decoded = codec.decode(codec.encode(float(signed)))
            assert abs(decoded - signed) <= bound * abs(signed)
    assert codec.decode(codec.encode(1e9)) == pytest.approx(1e3, rel=1e-6)  # saturates
    assert codec.encode(1e-9) == 0


def test_int8_stochastic_rounding_is_unbiased() -> None:
    codec = ScaledInt8Codec(0.1)
    g = 0.537  # 5.37 steps: decodes to 0.5 or 0.6
    draws = [uniform_from_seed(s * 0x9E3779B97F4A7C15 % (1 << 64)) for s in range(20_000)]
    mean = np.mean([codec.decode(codec.encode(g, u)) for u in draws])
    assert mean == pytest.approx(g, abs=2e-3)
    assert sorted({round(codec.decode(codec.encode(g, u)), 6) for u in draws}) == [0.5, 0.6]


def test_int8_clips_at_127_steps() -> None:
    codec = ScaledInt8Codec(0.01)
    assert codec.decode(codec.encode(100.0, 0.99)) == pytest.approx(1.27)
    assert codec.decode(codec.encode(-100.0, 0.0)) == pytest.approx(-1.27)


@pytest.mark.parametrize("codec", [LogCodec(), ScaledInt8Codec(0.05)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_scalars_are_refused(codec: LogCodec | ScaledInt8Codec, bad: float) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        codec.encode(bad)


def test_bad_parameters_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        LogCodec(1.0, 0.5)
    with pytest.raises(ConfigError):
        ScaledInt8Codec(0.0)
    with pytest.raises(ValueError, match="one byte"):
        LogCodec().decode(256)
