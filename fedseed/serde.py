"""The one place where protobuf messages and fedseed's own types meet.

Paired names: ``x_to_proto`` / ``x_from_proto``. Only this module and the
transports (fedseed.server, fedseed.client) import the generated code
(checked by import-linter).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedseed.manifest import Manifest
from fedseed.proto import coordinator_pb2 as pb
from fedseed.rounds import ClosedRound, FedKSeedConfig


@dataclass(frozen=True)
class RunParams:
    """A run's public parameters: with the run name they derive every seed and schedule."""

    run_name: str
    config: FedKSeedConfig
    codec: str = "log"


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
    c = params.config
    return pb.RunParams(
        run_name=params.run_name, pool_size=c.pool_size, local_steps=c.local_steps,
        lr=c.lr, eps=c.eps, importance=c.importance, codec=params.codec, clip_factor=c.clip_factor,
        replicas=c.replicas, aggregator=c.aggregator, trim=c.trim, reject_anomaly=c.reject_anomaly,
        dp_clip=c.dp_clip, dp_noise=c.dp_noise,
    )  # fmt: skip


def run_params_from_proto(message: pb.RunParams) -> RunParams:
    """Raises fedseed.errors.ConfigError for values no run could use."""
    config = FedKSeedConfig(
        pool_size=message.pool_size, local_steps=message.local_steps, lr=message.lr,
        eps=message.eps, importance=message.importance, clip_factor=message.clip_factor,
        replicas=message.replicas or 1, aggregator=message.aggregator or "mean", trim=message.trim,
        reject_anomaly=message.reject_anomaly, dp_clip=message.dp_clip, dp_noise=message.dp_noise,
    )  # fmt: skip
    return RunParams(message.run_name, config, message.codec)


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
