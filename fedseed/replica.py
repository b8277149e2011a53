"""One participant's copy of a federated run: the one code path for "apply a closed round".

Every mode holds replicas: the gRPC client, a Flower worker's shared model, the
simulator's driver, and readers of a finished run (``fedseed export``/``status``,
which need only the ledger entries, not a model). A replica turns a
:class:`~fedseed.rounds.ClosedRound` (the reply bytes) into the round's ledger step
(plan -> aggregate), applies it to its model, and tracks how many rounds it has
applied. The round logic's own state (FedKSeed-Pro's importance history, the
clipping window) lives in its :class:`~fedseed.rounds.FedKSeedRounds` and is a
pure function of the rounds applied, so :meth:`Replica.rebuild` (base model +
the closed rounds, from round 0) gives the same bits as an uninterrupted copy.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedseed.errors import FedseedError
from fedseed.ledger import LedgerEntry, model_hash
from fedseed.rounds import ClosedRound, FedKSeedRounds
from fedseed.zo import Snapshot, ZOEngine


class ReplicaError(FedseedError):
    """A replica that cannot follow the run (rounds out of order, a rebuild that does not verify)."""


class Replica:
    """``rounds`` may be shared with the replica's local clients (they plan with its state).

    ``engine`` None: a ledger-only replica (it derives entries; no model to update).
    ``base``: the trainable tensors before round 0 (``engine.snapshot()`` of the base model),
    needed only by :meth:`rebuild` (it costs one copy of the trainable set in host memory).
    """

    def __init__(
        self,
        rounds: FedKSeedRounds,
        engine: ZOEngine | None = None,
        base: Snapshot | None = None,
        applied_rounds: int = 0,
    ) -> None:
        self.rounds = rounds
        self.engine = engine
        if engine is not None:
            engine.follow(rounds.config)  # eps and mask are the run's, whatever the engine was built with
        self.applied_rounds = applied_rounds
        self.base = base

    def entries(self, closed: ClosedRound) -> list[LedgerEntry]:
        """The round's ledger step from its bytes; advances the round logic's state."""
        plan = self.rounds.plan(closed.round_index, closed.sample_counts)
        return self.rounds.aggregate(plan, closed.replies(self.rounds.config.scalars_per_reply))

    def apply(self, closed: ClosedRound) -> list[LedgerEntry]:
        """Apply the next closed round (rounds must come in order, each once)."""
        if closed.round_index != self.applied_rounds:
            raise ReplicaError(
                f"round {closed.round_index} arrived but this replica needs round {self.applied_rounds} next"
            )
        entries = self.entries(closed)
        if entries and self.engine is not None:
            self.engine.apply([e.seed for e in entries], [e.coef for e in entries])
        self.applied_rounds += 1
        return entries

    def apply_new(self, history: Sequence[ClosedRound]) -> int:
        """Apply the rounds of ``history`` (all closed rounds from 0, in order) not applied yet."""
        count = 0
        for closed in history[self.applied_rounds :]:
            self.apply(closed)
            count += 1
        return count

    def model_hash(self) -> str:
        if self.engine is None:
            raise ReplicaError("a ledger-only replica has no model to hash")
        return model_hash(self.engine.model)

    def rebuild(self, history: Sequence[ClosedRound], expected_hash: str = "") -> str:
        """Heal: back to the base model, then every round of ``history`` again; the new hash.

        ``expected_hash`` (the run's agreed hash after ``len(history)`` rounds, when known)
        is verified: a replica that cannot reach it refuses to continue.
        """
        if self.engine is None or self.base is None:
            raise ReplicaError("this replica kept no base state to rebuild from")
        self.engine.restore(self.base)
        self.rounds.reset()
        self.applied_rounds = 0
        for closed in history:
            self.apply(closed)
        rebuilt = model_hash(self.engine.model)
        if expected_hash and rebuilt != expected_hash:
            raise ReplicaError(
                f"rebuilt from the base model and {len(history)} closed rounds, this replica hashes to "
                f"{rebuilt}, not the run's {expected_hash}: its base model or frozen tensors differ "
                "(reload the model and rejoin)"
            )
        return rebuilt


def ledger_of(rounds: FedKSeedRounds, history: Sequence[ClosedRound]) -> list[LedgerEntry]:
    """Every closed round's ledger step, as a replica derives them (no model needed)."""
    replica = Replica(rounds)
    entries: list[LedgerEntry] = []
    for closed in history:
        entries.extend(replica.apply(closed))
    return entries
