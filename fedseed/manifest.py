"""The run manifest: what every participant must agree on before exchanging a byte."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fedseed.ledger import model_hash
from fedseed.perturb.stream import STREAM_NAME


@dataclass(frozen=True)
class Manifest:
    stream: str  # perturbation stream, e.g. "philox4x32-10/rademacher/v1"
    base_model_hash: str  # fedseed.ledger.model_hash of the base model
    task: str  # model and data, e.g. "vader-movies/minilm-seqcls" (fedseed.tasks.TASK_IDS)
    trainable: tuple[str, ...]  # trainable tensor names, in order

    def mismatches(self, other: Manifest) -> list[str]:
        """Human-readable differences, empty when ``other`` may join this run."""
        problems = []
        for name in ("stream", "base_model_hash", "task"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                problems.append(f"{name}: run has {mine!r}, client has {theirs!r}")
        if self.trainable != other.trainable:
            problems.append(
                f"trainable tensors: run has {len(self.trainable)}, client has {len(other.trainable)} "
                "(or a different order)"
            )
        return problems


def build_manifest(model: nn.Module, trainable_names: list[str], task: str) -> Manifest:
    """The manifest of a base model as loaded (hash over its parameters)."""
    return Manifest(STREAM_NAME, model_hash(model), task, tuple(trainable_names))


def manifest_toml(manifest: Manifest) -> str:
    """The ``[manifest]`` block of a coordinator config."""
    names = ", ".join(f'"{n}"' for n in manifest.trainable)
    return (
        "[manifest]\n"
        f'stream = "{manifest.stream}"\n'
        f'base_model_hash = "{manifest.base_model_hash}"\n'
        f'task = "{manifest.task}"\n'
        f"trainable = [{names}]\n"
    )
