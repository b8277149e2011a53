"""A run's settings, defined once: what every participant must agree on to hold the same bits.

:class:`RunSettings` is the single definition. Everything else is derived from
its fields, never written out again by hand:

- the coordinator's ``[run]`` table and the simulator's top-level keys
  (:func:`settings_from_mapping` reads them, naming unknown keys and wrong types);
- the SQLite row of a coordinator (:meth:`RunParams.canonical`);
- ``RunParams`` on the wire: the same canonical bytes plus their hash, so a
  client re-encodes what it understood and refuses a run it would not reproduce
  exactly (:meth:`RunParams.from_canonical`);
- the docs' configuration reference (``scripts/gen_config_reference.py``).

The canonical encoding is JSON with sorted keys and no spaces; floats are
written by ``repr`` (shortest round-trip), so a value travels exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedseed.errors import ConfigError

AGGREGATORS = ("mean", "median", "trimmed-mean")
# How a step estimates and applies: spsa: two-sided ĝ; sign: sign(ĝ) (ZO-SGD-Sign); fzoo: one-sided
# differences from one unperturbed loss, divided by the std of the q perturbed losses (FZOO).
ESTIMATORS = ("spsa", "sign", "fzoo")
CODECS = ("log",)  # how a scalar travels as one byte (fedseed.codec); replicas replay these


@dataclass(frozen=True)
class RunSettings:
    """The run's public rules: with the run name they derive every seed, schedule and update."""

    pool_size: int = 4096  # K candidate seeds in the pool (FedKSeed's default)
    local_steps: int = 200  # ZO steps per selected client per round, one byte each
    lr: float = 3e-7  # ZO-SGD learning rate (the FedKSeed README's runs)
    eps: float = 5e-4  # SPSA perturbation scale; clients perturb with exactly this
    importance: bool = False  # FedKSeed-Pro: sample seeds by learned importance
    # Robustness (fedseed.rounds.FedKSeedRounds.aggregate). Every participant derives the same
    # bound, scores and rejections from the round's bytes, so replicas stay identical.
    clip_factor: float = 8.0  # clip |g| to this x the median |g| of recent rounds; 0 = off
    replicas: int = 1  # clients per seed schedule (> 1: a robust per-seed vote)
    aggregator: str = "mean"  # how a schedule's replicas combine: mean | median | trimmed-mean
    trim: float = 0.25  # trimmed-mean: share of values dropped at each end
    reject_anomaly: float = 0.0  # leave out a reply whose anomaly score exceeds this; 0 = keep all
    weight_cap: float = 2.0  # a slot's weight: at most this x the round's median num_samples; 0 = off
    # Differential privacy of each sent scalar (fedseed.privacy): per-example clip and noise multiplier.
    dp_clip: float = 0.0  # DP: per-example bound on each client's scalar; 0 = no DP
    dp_noise: float = 0.0  # DP: noise multiplier (std = dp_noise x dp_clip / batch), OS CSPRNG
    # The ZO recipe (docs/algorithms.md): every participant applies exactly this to the reply bytes.
    directions: int = 1  # q directions per local step, one byte each; the step applies their mean
    estimator: str = (
        "spsa"  # spsa: apply ĝ | sign: sign(ĝ) (lr = step per sign) | fzoo: std-normalised, q >= 2
    )
    momentum: float = 0.0  # per-seed heavy-ball momentum on the rounds' steps (K floats of state); 0 = off
    mask_fraction: float = 1.0  # Sparse MeZO: perturb and update only the smallest-|θ| share of each tensor
    codec: str = "log"  # how a scalar travels as one byte (log: sign + 7-bit log magnitude)

    def __post_init__(self) -> None:
        _check_types(self)
        if not 1 <= self.pool_size <= 1 << 20:
            raise ConfigError(f"pool_size must be in [1, 2**20], got {self.pool_size}")
        if not 1 <= self.local_steps <= 1 << 16:
            raise ConfigError(f"local_steps must be in [1, 65536], got {self.local_steps}")
        if not (self.lr > 0 and self.eps > 0 and math.isfinite(self.lr) and math.isfinite(self.eps)):
            raise ConfigError("lr and eps must be positive and finite")
        if not (self.clip_factor >= 0 and math.isfinite(self.clip_factor)):
            raise ConfigError(f"clip_factor must be >= 0 (0 = off), got {self.clip_factor}")
        if not 1 <= self.replicas <= 1 << 10:
            raise ConfigError(f"replicas must be in [1, 1024], got {self.replicas}")
        if self.aggregator not in AGGREGATORS:
            raise ConfigError(
                f"unknown aggregator {self.aggregator!r}; choose one of {', '.join(AGGREGATORS)}"
            )
        if not 0 <= self.trim < 0.5:
            raise ConfigError(f"trim must be in [0, 0.5), got {self.trim}")
        if not (self.reject_anomaly >= 0 and math.isfinite(self.reject_anomaly)):
            raise ConfigError(f"reject_anomaly must be >= 0 (0 = off), got {self.reject_anomaly}")
        if not (self.weight_cap == 0 or (self.weight_cap >= 1 and math.isfinite(self.weight_cap))):
            raise ConfigError(f"weight_cap must be >= 1 (0 = off), got {self.weight_cap}")
        if not (self.dp_clip >= 0 and self.dp_noise >= 0 and math.isfinite(self.dp_clip + self.dp_noise)):
            raise ConfigError("dp_clip and dp_noise must be finite and >= 0")
        if self.dp_noise > 0 and self.dp_clip == 0:
            raise ConfigError("dp_noise needs dp_clip > 0 (the noise is scaled to the clipping bound)")
        if not 1 <= self.directions <= 64:
            raise ConfigError(f"directions must be in [1, 64], got {self.directions}")
        if self.local_steps * self.directions > 1 << 16:
            raise ConfigError("local_steps x directions (bytes per reply) must be at most 65536")
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"unknown estimator {self.estimator!r}; choose one of {', '.join(ESTIMATORS)}")
        if self.estimator == "fzoo" and self.directions < 2:
            raise ConfigError(
                f"estimator fzoo normalises by the std of a step's q losses: it needs directions >= 2, "
                f"got {self.directions}"
            )
        if self.estimator == "fzoo" and self.dp_clip > 0:
            raise ConfigError("estimator fzoo has no differentially private form here: use spsa with dp_clip")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0.0 < self.mask_fraction <= 1.0:
            raise ConfigError(f"mask_fraction must be in (0, 1], got {self.mask_fraction}")
        if self.codec not in CODECS:
            raise ConfigError(f"unknown codec {self.codec!r}; choose one of {', '.join(CODECS)}")

    @property
    def scalars_per_reply(self) -> int:
        """Bytes a selected client sends per round: one per (local step, direction)."""
        return self.local_steps * self.directions


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(RunSettings))


def _check_types(settings: Any) -> None:
    """One line per wrong type (a TOML ``lr = "0.1"`` must not reach arithmetic)."""
    for f in dataclasses.fields(settings):
        if f.name not in SETTING_NAMES_SET:
            continue
        value = getattr(settings, f.name)
        expected = type(getattr(RunSettings, f.name))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(settings, f.name, float(value))  # TOML `lr = 1` means 1.0
            continue
        if type(value) is not expected:
            article = "an" if expected.__name__[0] in "aeiou" else "a"
            raise ConfigError(f"{f.name} must be {article} {expected.__name__}, got {value!r}")


SETTING_NAMES_SET = frozenset(SETTING_NAMES)


def settings_from_mapping(raw: Mapping[str, Any], where: str = "run settings") -> RunSettings:
    """RunSettings from a TOML table or JSON object; unknown keys and bad values are named."""
    unknown = sorted(set(raw) - SETTING_NAMES_SET)
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(SETTING_NAMES)}"
        )
    try:
        return RunSettings(**raw)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def settings_of(config: Any) -> RunSettings:
    """The RunSettings part of any config that carries its fields (e.g. a SimulationConfig)."""
    return RunSettings(**{name: getattr(config, name) for name in SETTING_NAMES})


@dataclass(frozen=True)
class RunParams:
    """What a run is: its name (every seed derives from it) and its settings."""

    run_name: str
    settings: RunSettings

    @property
    def config(self) -> RunSettings:  # the name the round logic has always used
        return self.settings

    @property
    def codec(self) -> str:
        return self.settings.codec

    def canonical(self) -> bytes:
        """The one encoding of a run's identity: the SQLite row and the wire carry exactly these bytes."""
        body = {"run_name": self.run_name, "settings": dataclasses.asdict(self.settings)}
        return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")

    def fingerprint(self) -> str:
        return "sha256:" + hashlib.sha256(self.canonical()).hexdigest()

    @classmethod
    def from_canonical(cls, raw: bytes | str, expected_fingerprint: str | None = None) -> RunParams:
        """Parse canonical bytes; with ``expected_fingerprint`` (what the sender announced), refuse
        bytes that do not hash to it, and bytes this version would not write identically.

        Re-encoding is the check that matters: a setting this version does not know, or a
        value it would read differently, changes the bytes, so the run is refused rather
        than silently run under other rules.
        """
        data = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"run settings are not valid JSON ({exc})") from exc
        if not isinstance(body, dict) or not isinstance(body.get("settings"), dict):
            raise ConfigError("run settings must be a JSON object with a 'settings' object")
        name = body.get("run_name")
        if not isinstance(name, str) or not name:
            raise ConfigError("run settings need a non-empty run_name")
        if expected_fingerprint is not None:
            received = "sha256:" + hashlib.sha256(data).hexdigest()
            if received != expected_fingerprint:
                raise ConfigError(
                    f"run {name!r}: the settings hash to {received}, not the announced {expected_fingerprint}"
                )
        params = cls(name, settings_from_mapping(body["settings"]))
        if expected_fingerprint is not None and params.canonical() != data:
            raise ConfigError(
                f"this fedseed cannot reproduce run {name!r} exactly (its settings re-encode here as "
                f"{params.fingerprint()}, not {expected_fingerprint}): install the coordinator's "
                "fedseed version"
            )
        return params
