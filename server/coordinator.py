"""The coordinator's logic, transport-free: rounds, selection, submissions, sync.

It holds no tensor. A round's plan is its selected clients (one per slot) and
their sample counts; each client derives its own schedule from (round, slot)
and every participant derives the round's ledger step from the reply bytes,
so the coordinator only validates, records and serves bytes. All state lives
in the :class:`~fedseed.server.store.CoordinatorStore`; a restarted
coordinator on the same file continues where it stopped.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from fedseed.errors import ConfigError, FedseedError
from fedseed.manifest import Manifest
from fedseed.replica import Replica
from fedseed.rounds import ClosedRound, FedKSeedRounds
from fedseed.seeds import run_key
from fedseed.selection import Candidate, SelectionConfig, select
from fedseed.settings import RunParams

from .metrics import CoordinatorMetrics
from .store import ClientRow, CoordinatorStore, OpenRound, ReplyOutcome, retry_outcome

log = logging.getLogger(__name__)

HASH_FORMAT = re.compile(r"sha256:[0-9a-f]{64}")  # fedseed.ledger.model_hash


class ManifestMismatch(FedseedError):
    """A client's manifest differs from the run's (the message names each difference)."""


class InvalidSubmission(FedseedError):
    """A submission that can never be accepted (wrong round, slot, client or length)."""


class UnknownClient(FedseedError):
    """A client id the coordinator never issued."""


@dataclass(frozen=True)
class CoordinatorConfig:
    params: RunParams
    manifest: Manifest
    clients_per_round: int = 3  # clients selected per round
    min_replies: int = 1  # a round past its deadline closes with this many replies; else silent slots move
    round_timeout_s: float = 120.0  # a round's deadline, from its opening
    rounds: int = 10  # the run ends after this many closed rounds
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    # A round opens only when this many clients are active (0: clients_per_round). Selection
    # draws from the clients present, so a run that must select like a simulation of N
    # clients waits for all N (Flower's min_available_clients).
    min_clients: int = 0

    def __post_init__(self) -> None:
        for name in ("clients_per_round", "min_replies", "rounds", "min_clients"):
            value = getattr(self, name)
            if type(value) is not int:
                raise ConfigError(f"{name} must be an int, got {value!r}")
        if not isinstance(self.round_timeout_s, (int, float)) or isinstance(self.round_timeout_s, bool):
            raise ConfigError(f"round_timeout_s must be a number, got {self.round_timeout_s!r}")
        if self.clients_per_round < 1 or not 1 <= self.min_replies <= self.clients_per_round:
            raise ConfigError("need clients_per_round >= 1 and 1 <= min_replies <= clients_per_round")
        if self.round_timeout_s <= 0 or self.rounds < 1:
            raise ConfigError("round_timeout_s and rounds must be positive")


@dataclass(frozen=True)
class Assignment:
    """A client's part in the open round: its slot (the wire calls this a task, GetTask/RoundTask;
    not to be confused with fedseed.tasks, the ML task a model is trained on)."""

    round_index: int
    slot: int
    sample_counts: tuple[int, ...]


class Coordinator:
    def __init__(
        self,
        store: CoordinatorStore,
        config: CoordinatorConfig,
        clock: Callable[[], float] = time.time,
        metrics: CoordinatorMetrics | None = None,
    ) -> None:
        store.init_run(config.manifest, config.params)
        self.store = store
        self.metrics = metrics or CoordinatorMetrics()
        self.metrics.clients_active.set(len(store.clients()))
        self.config = config
        self.clock = clock
        self.key = run_key(config.params.run_name)
        self.changed = threading.Condition()  # long-polls wait on it
        # gRPC runs handlers on many threads; state transitions (open, record,
        # close) happen one at a time.
        self._transition = threading.RLock()
        self._overdue_warned = -1  # last round whose missed deadline was logged
        # Clients that missed a deadline: not selected again until they are heard from (any RPC).
        self.suspects: set[int] = set()
        # A ledger-only replica (no model): how many entries the closed rounds define.
        self.ledger = Replica(FedKSeedRounds(config.params.settings, self.key))
        self.ledger_entries = 0
        for closed in store.closed_rounds(-1, 1 << 30):
            self.ledger_entries += len(self.ledger.apply(closed))

    def _notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    # -- membership ---------------------------------------------------------------------

    def join(
        self, name: str, manifest: Manifest, num_samples: int, score: float | None = None
    ) -> tuple[int, int]:
        """(client id, next round); refuses a client whose manifest differs from the run's."""
        problems = self.config.manifest.mismatches(manifest)
        if problems:
            raise ManifestMismatch("manifest mismatch: " + "; ".join(problems))
        if num_samples < 1:
            raise InvalidSubmission("num_samples must be >= 1")
        if not name:
            raise InvalidSubmission("client_name must not be empty")
        client_id = self.store.upsert_client(name, num_samples, _finite_or_none(score))
        log.info("client %s joined as %d (%d samples)", name, client_id, num_samples)
        self.metrics.clients_active.set(len(self.store.clients()))
        self._notify()
        return client_id, self.store.next_round()

    def leave(self, client_id: int, final_hash: str = "", rounds: int = 0) -> None:
        """A client leaves; with ``final_hash``, it reports the model it holds after ``rounds``
        rounds, which must be every round of the finished run (checked before anything is kept)."""
        self._known(client_id)
        if final_hash:
            if not HASH_FORMAT.fullmatch(final_hash):
                raise InvalidSubmission("final_hash must be 'sha256:' and 64 lowercase hex digits")
            if not self.finished() or rounds != self.store.next_round():
                raise InvalidSubmission(
                    f"a final hash is reported after all {self.config.rounds} rounds closed, "
                    f"not after {rounds}"
                )
            self.store.record_final(client_id, rounds, final_hash)
        self.store.set_active(client_id, False)
        self.metrics.clients_active.set(len(self.store.clients()))
        self._notify()

    def _known(self, client_id: int) -> None:
        if self.store.client(client_id) is None:  # a keyed lookup: this runs on every RPC
            raise UnknownClient(f"no client {client_id}: join first")
        self.suspects.discard(client_id)  # heard from: selectable again

    # -- rounds -------------------------------------------------------------------------

    def finished(self) -> bool:
        return self.store.next_round() >= self.config.rounds

    def _select(self, round_index: int, active: list[ClientRow]) -> list[int]:
        """clients_per_round active clients, by the run's selection policy (fedseed.selection).

        Policies see names, sample counts and reported scores; never ids, which
        follow join order (a race), so the same run selects the same clients
        whoever joined first. ``active`` is the one read of the client list this decision uses:
        reading it twice let a client that joined in between be selected but missing from the
        first read (a KeyError, issue 17).
        """
        trusted = [c for c in active if c.client_id not in self.suspects]
        if len(trusted) >= self.config.clients_per_round:  # else all: progress beats a stall
            active = trusted
        ids = {c.name: c.client_id for c in active}
        candidates = [Candidate(c.name, c.num_samples, c.score) for c in active]
        names = select(
            self.config.selection, self.key, round_index, self.config.rounds, candidates,
            self.config.clients_per_round,
        )  # fmt: skip
        return [ids[n] for n in names]

    def _advance(self) -> OpenRound | None:
        """Close an expired round, open the next one when enough clients are here."""
        with self._transition:
            return self._advance_locked()

    def _advance_locked(self) -> OpenRound | None:
        current = self.store.current_round()
        if current is not None and self.clock() >= current.deadline_unix:
            answered = self.store.replies(current.round_index)
            silent = [c for s, c in enumerate(current.slot_clients) if s not in answered]
            self.suspects.update(silent)  # missed the deadline: not selected until heard from
            if len(answered) >= self.config.min_replies:
                self._close(current.round_index)
                current = None
            elif self._reassign(current, answered):
                current = self.store.current_round()
            elif self._overdue_warned != current.round_index:  # nobody to hand the slots to; say so once
                self._overdue_warned = current.round_index
                log.warning(
                    "round %d: deadline passed with %d replies (< min_replies %d) and no other "
                    "client to take the unanswered slots; waiting for one",
                    current.round_index, len(answered), self.config.min_replies,
                )  # fmt: skip
        if current is None and not self.finished():
            clients = self.store.clients()  # one read: selection and sample counts agree
            active = {c.client_id: c.num_samples for c in clients}
            if len(active) >= max(self.config.clients_per_round, self.config.min_clients):
                round_index = self.store.next_round()
                slots = self._select(round_index, clients)
                deadline = self.clock() + self.config.round_timeout_s
                self.store.open_round(round_index, slots, [active[c] for c in slots], deadline)
                log.info("round %d opened: clients %s", round_index, slots)
                current = self.store.current_round()
        return current

    def _reassign(self, current: OpenRound, answered: Mapping[int, object]) -> bool:
        """A round short of min_replies at its deadline gives its unanswered slots to active
        clients that are neither in the round nor suspect (by the selection policy), with a new
        deadline; False when there is no such client."""
        clients = self.store.clients()
        free = [
            c for c in clients if c.client_id not in self.suspects and c.client_id not in current.slot_clients
        ]
        unanswered = [s for s in range(len(current.slot_clients)) if s not in answered]
        if not free or not unanswered:
            return False
        names = select(
            self.config.selection, self.key, current.round_index, self.config.rounds,
            [Candidate(c.name, c.num_samples, c.score) for c in free], min(len(free), len(unanswered)),
        )  # fmt: skip
        by_name = {c.name: c for c in free}
        replacements = {
            slot: (by_name[n].client_id, by_name[n].num_samples)
            for slot, n in zip(unanswered, names, strict=False)
        }
        self.store.reassign_slots(
            current.round_index, replacements, self.clock() + self.config.round_timeout_s
        )
        log.warning(
            "round %d: %d of %d replies at the deadline (< min_replies %d); slots %s go to clients %s",
            current.round_index, len(answered), len(current.slot_clients), self.config.min_replies,
            sorted(replacements), [c for c, _ in replacements.values()],
        )  # fmt: skip
        return True

    def _close(self, round_index: int) -> ClosedRound:
        closed = self.store.close_round(round_index, self.clock())
        self.ledger_entries += len(self.ledger.apply(closed))
        self.metrics.rounds_closed.inc()
        log.info(
            "round %d closed with slots %s", round_index, list(closed.replied_slots),
            extra={"round": round_index, "replied_slots": list(closed.replied_slots)},
        )  # fmt: skip
        self._notify()
        return closed

    def task(self, client_id: int) -> Assignment | None:
        """This client's open task, or None (nothing for it now, or the run is over)."""
        self._known(client_id)
        current = self._advance()
        if current is None:
            return None
        replied = self.store.replies(current.round_index)
        for slot, owner in enumerate(current.slot_clients):
            if owner == client_id and slot not in replied:
                return Assignment(current.round_index, slot, current.sample_counts)
        return None

    def wait_for_task(self, client_id: int, wait_s: float) -> Assignment | None:
        deadline = time.monotonic() + wait_s
        while True:
            task = self.task(client_id)
            remaining = deadline - time.monotonic()
            if task is not None or self.finished() or remaining <= 0:
                return task
            with self.changed:
                self.changed.wait(timeout=min(remaining, 0.5))

    def submit(
        self, client_id: int, round_index: int, slot: int, scalars: bytes, key: str, start_hash: str,
        score: float | None = None,
    ) -> ReplyOutcome:  # fmt: skip
        """Record a reply; RESYNC when a majority of the round already started from another state."""
        self._known(client_id)
        needed = self.config.params.config.scalars_per_reply
        if len(scalars) != needed:
            raise InvalidSubmission(f"{len(scalars)} scalars, the run needs {needed} per round")
        if not key:
            raise InvalidSubmission("idempotency_key must not be empty")
        if not HASH_FORMAT.fullmatch(start_hash):
            raise InvalidSubmission("start_hash must be 'sha256:' and 64 lowercase hex digits")
        current = self.store.current_round()
        if current is None or current.round_index != round_index:
            recorded = self.store.recorded_reply(round_index, slot)
            if recorded is not None:  # the same rule as in an open round (store.retry_outcome)
                return retry_outcome(*recorded, key, scalars)
            if round_index < self.store.next_round():
                return ReplyOutcome.LATE
            raise InvalidSubmission(f"round {round_index} is not open")
        if not 0 <= slot < len(current.slot_clients):
            raise InvalidSubmission(f"round {round_index} has no slot {slot}")
        if current.slot_clients[slot] != client_id:
            # Given to another client after this one missed the deadline (or never its slot):
            # nothing is recorded, as for a reply after the round closed.
            return ReplyOutcome.LATE
        with self._transition:
            return self._record(current, client_id, round_index, slot, scalars, key, start_hash, score)

    def agreed_so_far(self, round_index: int, slots: int) -> str:
        """The start hash more than half of the round's slots already claimed, or ""."""
        claimed = [h for _, h in self.store.replies(round_index).values()]
        counts = Counter(claimed)
        for value, count in counts.items():
            if 2 * count > slots:
                return value
        return ""

    def _record(
        self, current: OpenRound, client_id: int, round_index: int, slot: int, scalars: bytes, key: str,
        start_hash: str, score: float | None,
    ) -> ReplyOutcome:  # fmt: skip
        if self.store.current_round() != current:
            return ReplyOutcome.LATE  # closed by the deadline meanwhile
        agreed = self.agreed_so_far(round_index, len(current.slot_clients))
        previous = self.store.replies(round_index).get(slot)
        if agreed and start_hash != agreed and previous is None:
            # A majority of the round's slots already started elsewhere: this reply can never
            # count. The client heals (base + closed rounds) and submits again.
            log.warning(
                "client %d started round %d from %s; the round's majority from %s: told to resync",
                client_id, round_index, start_hash, agreed,
            )  # fmt: skip
            self.store.record_mismatch(round_index, client_id, start_hash, agreed, self.clock())
            self.metrics.replies.labels(ReplyOutcome.RESYNC.value).inc()
            return ReplyOutcome.RESYNC
        outcome = self.store.record_reply(
            round_index, slot, client_id, scalars, key, start_hash, _finite_or_none(score)
        )
        self.metrics.replies.labels(outcome.value).inc()
        if outcome is ReplyOutcome.ACCEPTED and len(self.store.replies(round_index)) == len(
            current.slot_clients
        ):
            self._close(round_index)
        return outcome

    def sync(self, from_round: int, max_rounds: int) -> tuple[list[ClosedRound], int]:
        self._advance()
        return self.store.closed_rounds(
            from_round - 1, max(1, min(max_rounds, 1000))
        ), self.store.next_round()


def _finite_or_none(score: float | None) -> float | None:
    # A NaN or infinite score says nothing usable; keep the last good one.
    return score if score is not None and math.isfinite(score) else None
