"""The one place where protobuf messages and fedseed's own types meet.

Paired names: ``x_to_proto`` / ``x_from_proto``. Only this module and the
transports (fedseed.server, fedseed.client) import the generated code
(checked by import-linter).
"""

from __future__ import annotations

from fedseed.errors import ConfigError
from fedseed.manifest import Manifest
from fedseed.proto import coordinator_pb2 as pb
from fedseed.rounds import ClosedRound
from fedseed.settings import RunParams


def manifest_to_proto(manifest: Manifest) -> pb.Manifest:
    return pb.Manifest(
        stream=manifest.stream,
        base_model_hash=manifest.base_model_hash,
        task=manifest.task,
        trainable=list(manifest.trainable),
    )


def manifest_from_proto(message: pb.Manifest) -> Manifest:
    return Manifest(message.stream, message.base_model_hash, message.task, tuple(message.trainable))


def run_params_to_proto(params: RunParams) -> pb.RunParams:
    return pb.RunParams(
        run_name=params.run_name, settings=params.canonical(), settings_hash=params.fingerprint()
    )


def run_params_from_proto(message: pb.RunParams) -> RunParams:
    """Raises fedseed.errors.ConfigError for settings no run could use, or that this version
    would not reproduce exactly (the hash of the re-encoded settings differs)."""
    params = RunParams.from_canonical(message.settings, expected_fingerprint=message.settings_hash)
    if params.run_name != message.run_name:
        raise ConfigError(f"run_name {message.run_name!r} differs from the settings' {params.run_name!r}")
    return params


def closed_round_to_proto(closed: ClosedRound) -> pb.ClosedRound:
    return pb.ClosedRound(
        round=closed.round_index, sample_counts=list(closed.sample_counts),
        replied_slots=list(closed.replied_slots), scalars=closed.scalars, start_hash=closed.start_hash,
    )  # fmt: skip


def closed_round_from_proto(message: pb.ClosedRound) -> ClosedRound:
    return ClosedRound(
        message.round, tuple(message.sample_counts), tuple(message.replied_slots),
        message.scalars, message.start_hash,
    )  # fmt: skip


def closed_round_to_bytes(closed: ClosedRound) -> bytes:
    return closed_round_to_proto(closed).SerializeToString()


def closed_round_from_bytes(raw: bytes) -> ClosedRound:
    return closed_round_from_proto(pb.ClosedRound.FromString(raw))
