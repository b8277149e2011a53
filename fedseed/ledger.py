"""The ledger: every update a model ever received, as ``(round, step, seed, coef)``.

``coef`` is the dequantised value every participant applies (``-lr * g`` for a
ZO step), stored as the float32 it is applied as. Entries sharing
``(round, step)`` form one *ledger step*: they are summed in float32 in ledger
order and applied with one rounding (spec v1, "Update arithmetic"). A local
ZO run writes one entry per step; a federated round writes all of its
aggregated entries under one step.

Replaying a ledger onto the base model therefore reproduces, bit for bit, the
model of whoever wrote it; :func:`model_hash` lets replicas compare.

File format (``save``/``load``): JSON Lines, one entry per line,
``{"round": r, "step": s, "seed": n, "coef": c}``; ``coef`` is the float32
value written as the float64 it equals, so it reads back exactly. Appends are flushed and
fsynced so an acknowledged entry survives a crash; a torn last line from a
crash mid-write is reported with its line number.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fedseed.errors import LedgerError
from fedseed.perturb.stream import Seed, as_seed

HASH_NAME = "sha256"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LedgerEntry:
    round: int
    step: int
    seed: Seed
    coef: float  # exactly representable as float32

    @classmethod
    def make(cls, round: int, step: int, seed: int, coef: float) -> LedgerEntry:
        with np.errstate(over="ignore"):  # overflow to inf is caught just below
            coef32 = float(np.float32(coef))
        if not math.isfinite(coef32):
            raise LedgerError(f"non-finite coefficient {coef!r} never enters a ledger")
        if round < 0 or step < 0:
            raise LedgerError(f"round and step are non-negative, got ({round}, {step})")
        return cls(int(round), int(step), as_seed(seed), coef32)

    def to_json(self) -> str:
        # The float32 value written as the float64 it equals exactly: reading it
        # back is exact, with no decimal -> float64 -> float32 double rounding.
        return json.dumps({"round": self.round, "step": self.step, "seed": self.seed, "coef": self.coef})


class Ledger:
    """An append-only, ordered list of entries, optionally mirrored to a file."""

    def __init__(self, entries: Iterable[LedgerEntry] = (), path: Path | None = None) -> None:
        self._entries: list[LedgerEntry] = []
        self._file: TextIO | None = None
        for e in entries:
            self._check_order(e)
            self._entries.append(e)
        if path is not None:
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115  (kept open for appends)

    def _check_order(self, entry: LedgerEntry) -> None:
        if self._entries:
            last = self._entries[-1]
            if (entry.round, entry.step) < (last.round, last.step):
                raise LedgerError(
                    f"entry for (round {entry.round}, step {entry.step}) comes after "
                    f"(round {last.round}, step {last.step}): a ledger only grows forward"
                )

    def append(self, entry: LedgerEntry) -> None:
        self.extend([entry])

    def extend(self, entries: Sequence[LedgerEntry]) -> None:
        for e in entries:
            self._check_order(e)
            self._entries.append(e)
        if self._file is not None and entries:
            self._file.write("".join(e.to_json() + "\n" for e in entries))
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[LedgerEntry]:
        return iter(self._entries)

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        return tuple(self._entries)

    def steps(self) -> Iterator[tuple[int, int, list[LedgerEntry]]]:
        """Ledger steps in order: ``(round, step, entries applied together)``."""
        for (r, s), group in itertools.groupby(self._entries, key=lambda e: (e.round, e.step)):
            yield r, s, list(group)

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(e.to_json() + "\n" for e in self._entries))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Ledger:
        if not path.exists():
            raise LedgerError(f"no ledger at {path}")
        entries = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                if not line.endswith("\n"):  # a write torn by a crash: never acknowledged
                    log.warning("%s:%d: dropping an incomplete last line (a crash mid-write)", path, number)
                    break
                try:
                    raw = json.loads(line)
                    entries.append(LedgerEntry.make(raw["round"], raw["step"], raw["seed"], raw["coef"]))
                except (ValueError, KeyError, TypeError) as exc:
                    raise LedgerError(f"{path}:{number}: not a ledger entry ({exc})") from exc
        return cls(entries)


def model_hash(model: nn.Module) -> str:
    """``sha256:<hex>`` over every parameter, in sorted name order.

    For each ``(name, tensor)`` of ``model.named_parameters()`` (tied weights
    once) sorted by name: the UTF-8 name, a NUL, the dtype (e.g.
    ``torch.float32``), a NUL, the shape as comma-separated ints, a NUL, then
    the tensor's bytes in row-major order, little-endian. Buffers are not
    hashed: they are not trained and a checkpoint rebuilds them.
    """
    h = hashlib.new(HASH_NAME)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        t = p.detach().contiguous().cpu()
        h.update(name.encode("utf-8") + b"\0" + str(t.dtype).encode() + b"\0")
        h.update(",".join(str(d) for d in t.shape).encode() + b"\0")
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return f"{HASH_NAME}:{h.hexdigest()}"


class Applier(Protocol):
    """Anything that applies one ledger step to a model (e.g. :class:`fedseed.zo.ZOEngine`)."""

    def apply(self, seeds: Sequence[int], coefs: Sequence[float]) -> None: ...


def replay(applier: Applier, entries: Iterable[LedgerEntry], progress: bool = False) -> int:
    """Apply ``entries`` step by step, as their writer did; returns the number of steps.

    The one ledger replay (export, peers catching up, tests): one fused ``apply`` per
    (round, step). ``progress`` shows a bar on a terminal."""
    ledger = entries if isinstance(entries, Ledger) else Ledger(entries)
    groups = [group for _, _, group in ledger.steps()]
    on_terminal = progress and sys.stderr.isatty()
    for group in tqdm(groups, disable=not on_terminal, desc="replaying ledger", unit="step"):
        applier.apply([e.seed for e in group], [e.coef for e in group])
    return len(groups)
