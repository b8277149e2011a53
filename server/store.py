"""The coordinator's durable state: one SQLite file (WAL, ``synchronous=FULL``).

An acknowledged write has reached the disk: every mutating method runs in one
transaction and returns after the commit. The coordinator holds no tensor;
its whole state is the run's manifest and parameters, the clients, and each
round's plan and reply bytes (from which every participant derives the
round's ledger step). ``":memory:"`` gives the same store without a file,
for tests and short simulations.
"""

from __future__ import annotations

import enum
import json
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedseed.errors import ConfigError, FedseedError
from fedseed.manifest import Manifest
from fedseed.rounds import ClosedRound
from fedseed.settings import SETTING_NAMES, RunParams, settings_from_mapping

SCHEMA = """
CREATE TABLE IF NOT EXISTS run (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    manifest TEXT NOT NULL,
    params TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS clients (
    client_id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    num_samples INTEGER NOT NULL CHECK (num_samples > 0),
    active INTEGER NOT NULL DEFAULT 1,
    score REAL                       -- last reported mean loss (selection policies); NULL = none
);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY,
    slot_clients TEXT NOT NULL,      -- JSON list: client id per slot
    sample_counts TEXT NOT NULL,     -- JSON list: n per slot
    deadline_unix REAL NOT NULL,
    closed INTEGER NOT NULL DEFAULT 0,
    replied_slots TEXT,              -- JSON list, set at close: the replies that count
    agreed_hash TEXT                 -- set at close: the start hash a strict majority of replies claimed
);
CREATE TABLE IF NOT EXISTS replies (
    round INTEGER NOT NULL REFERENCES rounds(round),
    slot INTEGER NOT NULL,
    client_id INTEGER NOT NULL REFERENCES clients(client_id),
    scalars BLOB NOT NULL,
    idempotency_key TEXT NOT NULL,
    start_hash TEXT NOT NULL,
    PRIMARY KEY (round, slot)
);
CREATE TABLE IF NOT EXISTS mismatches (   -- a reply whose start hash disagreed with its round's
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    round INTEGER NOT NULL,
    client_id INTEGER NOT NULL REFERENCES clients(client_id),
    claimed_hash TEXT NOT NULL,
    agreed_hash TEXT NOT NULL,       -- "" when the round had no majority
    at_unix REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS credentials ( -- per-client bearer tokens (fedseed coordinator enroll)
    name TEXT PRIMARY KEY,           -- the one client name this credential may act as
    token_sha256 TEXT NOT NULL UNIQUE, -- only the token's hash is kept
    revoked INTEGER NOT NULL DEFAULT 0,
    created_unix REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS final_reports ( -- the hash a client holds after every round (on Leave)
    client_id INTEGER PRIMARY KEY REFERENCES clients(client_id),
    rounds INTEGER NOT NULL,
    model_hash TEXT NOT NULL
);
"""


class StoreError(FedseedError):
    """The database is missing, corrupt, or belongs to another run."""


class ReplyOutcome(enum.Enum):
    ACCEPTED = "accepted"  # durably recorded
    DUPLICATE = "duplicate"  # same key and bytes as before: counted once
    CONFLICT = "conflict"  # same slot, other key or bytes: rejected
    LATE = "late"  # the round is closed
    RESYNC = "resync"  # started from another state than the round's majority: heal, then retry


@dataclass(frozen=True)
class OpenRound:
    round_index: int
    slot_clients: tuple[int, ...]
    sample_counts: tuple[int, ...]
    deadline_unix: float


@dataclass(frozen=True)
class Mismatch:
    round_index: int
    client_id: int
    claimed_hash: str
    agreed_hash: str  # "" when the round had no majority
    at_unix: float


@dataclass(frozen=True)
class ClientRow:
    client_id: int
    name: str
    num_samples: int
    active: bool
    score: float | None = None


def _params_from_json(text: str) -> RunParams:
    """The run row: canonical settings (fedseed.settings). A database written before every
    setting was stored holds a flat object of five; the rest were then always the defaults."""
    raw = json.loads(text)
    if "settings" not in raw:
        legacy = {k: v for k, v in raw.items() if k != "run_name"}
        return RunParams(raw["run_name"], settings_from_mapping(legacy, "the database's run row"))
    return RunParams.from_canonical(text)


class CoordinatorStore:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            # A damaged file (a torn or bad write below SQLite) is refused before serving a byte.
            problems = [r[0] for r in self._db.execute("PRAGMA quick_check").fetchall() if r[0] != "ok"]
            if problems:
                raise StoreError(
                    f"{self.path} fails SQLite's integrity check ({'; '.join(problems[:3])}); restore "
                    "it from a backup or start a new run on a new file"
                )
            self._db.executescript(SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(rounds)")}
            if "agreed_hash" not in columns:  # a database from before agreed hashes were recorded
                self._db.execute("ALTER TABLE rounds ADD COLUMN agreed_hash TEXT")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a usable coordinator database: {exc}") from exc
        self._lock = threading.Lock()  # gRPC serves from a thread pool

    @classmethod
    def open_readonly(cls, path: str | Path) -> CoordinatorStore:
        """An existing database, read only (``fedseed status``/``export``): never creates or alters one."""
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"no coordinator database at {path}")
        store = cls.__new__(cls)
        store.path = str(path)
        store._lock = threading.Lock()
        try:
            store._db = sqlite3.connect(
                path.resolve().as_uri() + "?mode=ro", uri=True, check_same_thread=False
            )
            tables = {r[0] for r in store._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not {"run", "clients", "rounds", "replies"} <= tables:
                raise StoreError(
                    f"{path} is an SQLite database but not a coordinator's (tables: {sorted(tables)})"
                )
            problems = [r[0] for r in store._db.execute("PRAGMA quick_check").fetchall() if r[0] != "ok"]
            if problems:
                raise StoreError(f"{path} fails SQLite's integrity check: {'; '.join(problems[:3])}")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path} is not a readable coordinator database: {exc}") from exc
        return store

    def participation(self) -> dict[int, tuple[int, int, int]]:
        """client id -> (rounds selected, replies recorded, reply bytes)."""
        selected: dict[int, int] = {}
        for (slots,) in self._read("SELECT slot_clients FROM rounds"):
            for client_id in json.loads(slots):
                selected[int(client_id)] = selected.get(int(client_id), 0) + 1
        replied = {
            int(r[0]): (int(r[1]), int(r[2]))
            for r in self._read(
                "SELECT client_id, COUNT(*), SUM(LENGTH(scalars)) FROM replies GROUP BY client_id"
            )
        }
        ids = sorted(set(selected) | set(replied))
        return {i: (selected.get(i, 0), *replied.get(i, (0, 0))) for i in ids}

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One IMMEDIATE transaction under the lock: committed, or rolled back with nothing changed.

        A failing write (disk full, read-only file, I/O error) surfaces as StoreError.
        """
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                raise self._write_failed(exc) from exc

    def _write(self, sql: str, args: tuple[object, ...] = ()) -> sqlite3.Cursor:
        with self._transaction():
            return self._db.execute(sql, args)

    def _write_failed(self, exc: sqlite3.OperationalError) -> StoreError:
        """Disk full, read-only file, I/O error: the transaction rolled back, nothing changed."""
        return StoreError(f"{self.path}: write failed ({exc}); nothing was recorded")

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- the run ------------------------------------------------------------------------

    def init_run(self, manifest: Manifest, params: RunParams) -> None:
        """Record the run, or check that the database already holds this very run."""
        existing = self.run()
        if existing is None:
            self._write(
                "INSERT INTO run (id, manifest, params) VALUES (1, ?, ?)",
                (
                    json.dumps({**manifest.__dict__, "trainable": list(manifest.trainable)}),
                    params.canonical().decode("utf-8"),
                ),
            )
            return
        stored_manifest, stored_params = existing
        problems = stored_manifest.mismatches(manifest)
        if stored_params.run_name != params.run_name:
            problems.append(
                f"run name: database has {stored_params.run_name!r}, config has {params.run_name!r}"
            )
        for name in SETTING_NAMES:
            mine, theirs = getattr(stored_params.settings, name), getattr(params.settings, name)
            if mine != theirs:
                problems.append(f"{name}: database has {mine!r}, config has {theirs!r}")
        if problems:
            raise ConfigError(f"{self.path} holds another run: " + "; ".join(problems))

    def run(self) -> tuple[Manifest, RunParams] | None:
        rows = self._read("SELECT manifest, params FROM run WHERE id = 1")
        if not rows:
            return None
        manifest_raw = json.loads(rows[0][0])
        manifest = Manifest(
            manifest_raw["stream"], manifest_raw["base_model_hash"], manifest_raw["task"],
            tuple(manifest_raw["trainable"]),
        )  # fmt: skip
        return manifest, _params_from_json(rows[0][1])

    # -- clients ------------------------------------------------------------------------

    def upsert_client(self, name: str, num_samples: int, score: float | None = None) -> int:
        """The client id for ``name`` (created on first join; a rejoin keeps it and reactivates)."""
        self._write(
            "INSERT INTO clients (name, num_samples, score) VALUES (?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET num_samples = excluded.num_samples, active = 1, "
            "score = COALESCE(excluded.score, score)",
            (name, num_samples, score),
        )
        return int(self._read("SELECT client_id FROM clients WHERE name = ?", (name,))[0][0])

    def set_active(self, client_id: int, active: bool) -> None:
        self._write("UPDATE clients SET active = ? WHERE client_id = ?", (int(active), client_id))

    @staticmethod
    def _client_row(r: tuple[Any, ...]) -> ClientRow:
        return ClientRow(int(r[0]), str(r[1]), int(r[2]), bool(r[3]), None if r[4] is None else float(r[4]))

    def client(self, client_id: int) -> ClientRow | None:
        rows = self._read(
            "SELECT client_id, name, num_samples, active, score FROM clients WHERE client_id = ?",
            (client_id,),
        )
        return self._client_row(rows[0]) if rows else None

    def clients(self, active_only: bool = True) -> list[ClientRow]:
        sql = "SELECT client_id, name, num_samples, active, score FROM clients"
        rows = self._read(sql + (" WHERE active = 1" if active_only else "") + " ORDER BY client_id")
        return [self._client_row(r) for r in rows]

    # -- rounds -------------------------------------------------------------------------

    def next_round(self) -> int:
        """The first round that is not closed (open now, or to be opened)."""
        rows = self._read("SELECT MAX(round) FROM rounds WHERE closed = 1")
        last = rows[0][0]
        return 0 if last is None else int(last) + 1

    def open_round(
        self, round_index: int, slot_clients: list[int], sample_counts: list[int], deadline: float
    ) -> None:
        if round_index != self.next_round() or self.current_round() is not None:
            raise ValueError(f"round {round_index} cannot open now (next is {self.next_round()})")
        self._write(
            "INSERT INTO rounds (round, slot_clients, sample_counts, deadline_unix) VALUES (?, ?, ?, ?)",
            (round_index, json.dumps(slot_clients), json.dumps(sample_counts), deadline),
        )

    def reassign_slots(
        self, round_index: int, replacements: dict[int, tuple[int, int]], deadline: float
    ) -> None:
        """Give unanswered slots of the open round to other clients: slot -> (client, samples).

        A slot's schedule derives from (round, slot), not from its client, so the new client
        runs the same steps; the slot's sample count becomes the new client's.
        """
        with self._transaction():
            row = self._db.execute(
                "SELECT slot_clients, sample_counts FROM rounds WHERE round = ? AND closed = 0",
                (round_index,),
            ).fetchone()
            if row is None:
                raise ValueError(f"round {round_index} is not open")
            clients, counts = json.loads(row[0]), json.loads(row[1])
            for slot, (client_id, samples) in replacements.items():
                clients[slot], counts[slot] = client_id, samples
            self._db.execute(
                "UPDATE rounds SET slot_clients = ?, sample_counts = ?, deadline_unix = ? WHERE round = ?",
                (json.dumps(clients), json.dumps(counts), deadline, round_index),
            )

    def current_round(self) -> OpenRound | None:
        rows = self._read(
            "SELECT round, slot_clients, sample_counts, deadline_unix FROM rounds WHERE closed = 0"
        )
        if not rows:
            return None
        r = rows[0]
        return OpenRound(int(r[0]), tuple(json.loads(r[1])), tuple(json.loads(r[2])), float(r[3]))

    def record_reply(
        self, round_index: int, slot: int, client_id: int, scalars: bytes, key: str, start_hash: str,
        score: float | None = None,
    ) -> ReplyOutcome:  # fmt: skip
        """Record a reply (and the client's new score with it, in the same transaction)."""
        with self._transaction():
            outcome = self._record_reply_locked(round_index, slot, client_id, scalars, key, start_hash)
            if outcome is ReplyOutcome.ACCEPTED and score is not None:
                self._db.execute("UPDATE clients SET score = ? WHERE client_id = ?", (score, client_id))
        return outcome

    def _record_reply_locked(
        self, round_index: int, slot: int, client_id: int, scalars: bytes, key: str, start_hash: str
    ) -> ReplyOutcome:
        closed = self._db.execute("SELECT closed FROM rounds WHERE round = ?", (round_index,)).fetchone()
        previous = self._db.execute(
            "SELECT idempotency_key, scalars FROM replies WHERE round = ? AND slot = ?", (round_index, slot)
        ).fetchone()
        if previous is not None:
            return retry_outcome(str(previous[0]), bytes(previous[1]), key, scalars)
        if closed is None or closed[0]:
            return ReplyOutcome.LATE
        self._db.execute(
            "INSERT INTO replies (round, slot, client_id, scalars, idempotency_key, start_hash) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (round_index, slot, client_id, scalars, key, start_hash),
        )
        return ReplyOutcome.ACCEPTED

    def recorded_reply(self, round_index: int, slot: int) -> tuple[str, bytes] | None:
        """(idempotency key, scalars) of the reply recorded for a slot, or None."""
        rows = self._read(
            "SELECT idempotency_key, scalars FROM replies WHERE round = ? AND slot = ?", (round_index, slot)
        )
        return (str(rows[0][0]), bytes(rows[0][1])) if rows else None

    def replies(self, round_index: int) -> dict[int, tuple[bytes, str]]:
        """slot -> (scalars, start_hash) of the replies recorded for a round."""
        rows = self._read(
            "SELECT slot, scalars, start_hash FROM replies WHERE round = ? ORDER BY slot", (round_index,)
        )
        return {int(r[0]): (bytes(r[1]), str(r[2])) for r in rows}

    def close_round(self, round_index: int, at_unix: float = 0.0) -> ClosedRound:
        """Close the open round with the replies it has (stragglers are simply absent).

        The round's agreed start hash is the one a strict majority of its replies claimed;
        only those replies count. Every other reply is recorded as a mismatch (its sender
        started from another state and heals). Without a majority no reply counts: the
        round applies nothing and every reply is a mismatch (honest replicas rebuild to
        the same bits; the diverged one is corrected).
        """
        replies = self.replies(round_index)
        agreed = majority_hash([h for _, h in replies.values()])
        counted = sorted(s for s, (_, h) in replies.items() if h == agreed)
        with self._transaction():
            clients = dict(
                self._db.execute(
                    "SELECT slot, client_id FROM replies WHERE round = ?", (round_index,)
                ).fetchall()
            )
            for slot, (_, claimed) in sorted(replies.items()):
                if claimed != agreed:
                    self._db.execute(
                        "INSERT INTO mismatches (round, client_id, claimed_hash, agreed_hash, at_unix) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (round_index, clients[slot], claimed, agreed, at_unix),
                    )
            self._db.execute(
                "UPDATE rounds SET closed = 1, replied_slots = ?, agreed_hash = ? "
                "WHERE round = ? AND closed = 0",
                (json.dumps(counted), agreed, round_index),
            )
        return self.closed_rounds(round_index - 1, 1)[0]

    def record_mismatch(
        self, round_index: int, client_id: int, claimed: str, agreed: str, at_unix: float
    ) -> None:
        self._write(
            "INSERT INTO mismatches (round, client_id, claimed_hash, agreed_hash, at_unix) "
            "VALUES (?, ?, ?, ?, ?)",
            (round_index, client_id, claimed, agreed, at_unix),
        )

    def record_final(self, client_id: int, rounds: int, hash_: str) -> None:
        """A client's claim: after ``rounds`` rounds its model hashes to ``hash_`` (its last word)."""
        self._write(
            "INSERT INTO final_reports (client_id, rounds, model_hash) VALUES (?, ?, ?) "
            "ON CONFLICT(client_id) DO UPDATE SET rounds = excluded.rounds, model_hash = excluded.model_hash",
            (client_id, rounds, hash_),
        )

    def final_hash(self, rounds: int) -> tuple[str, int]:
        """(the hash after ``rounds`` rounds a strict majority of at least two reporting clients
        claim, or ""; how many reported): no single client defines the run's end."""
        if not self._has_table("final_reports"):
            return "", 0
        claimed = [
            str(r[0]) for r in self._read("SELECT model_hash FROM final_reports WHERE rounds = ?", (rounds,))
        ]
        agreed = majority_hash(claimed) if len(claimed) >= 2 else ""
        return agreed, len(claimed)

    def set_credential(self, name: str, token_sha256: str, at_unix: float) -> None:
        """Issue (or re-issue: the old token stops working) the credential of client ``name``."""
        self._write(
            "INSERT INTO credentials (name, token_sha256, revoked, created_unix) VALUES (?, ?, 0, ?) "
            "ON CONFLICT(name) DO UPDATE SET token_sha256 = excluded.token_sha256, revoked = 0, "
            "created_unix = excluded.created_unix",
            (name, token_sha256, at_unix),
        )

    def revoke_credential(self, name: str) -> bool:
        """Refuse ``name``'s credential from the next call on; False if it was never issued."""
        return self._write("UPDATE credentials SET revoked = 1 WHERE name = ?", (name,)).rowcount > 0

    def credential(self, token_sha256: str) -> tuple[str, bool] | None:
        """(client name, revoked) of the credential whose token hashes to ``token_sha256``."""
        if not self._has_table("credentials"):
            return None
        rows = self._read("SELECT name, revoked FROM credentials WHERE token_sha256 = ?", (token_sha256,))
        return (str(rows[0][0]), bool(rows[0][1])) if rows else None

    def credentials(self) -> list[tuple[str, bool]]:
        """Every issued credential's (client name, revoked), by name (never a token or its hash)."""
        if not self._has_table("credentials"):
            return []
        return [
            (str(r[0]), bool(r[1])) for r in self._read("SELECT name, revoked FROM credentials ORDER BY name")
        ]

    def mismatches(self) -> list[Mismatch]:
        if not self._has_table("mismatches"):
            return []
        rows = self._read(
            "SELECT round, client_id, claimed_hash, agreed_hash, at_unix FROM mismatches ORDER BY id"
        )
        return [Mismatch(int(r[0]), int(r[1]), str(r[2]), str(r[3]), float(r[4])) for r in rows]

    def _has_table(self, name: str) -> bool:
        return bool(self._read("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))

    def closed_rounds(self, after_round: int, limit: int) -> list[ClosedRound]:
        columns = {r[1] for r in self._read("PRAGMA table_info(rounds)")}
        agreed_column = "agreed_hash" if "agreed_hash" in columns else "NULL"
        rows = self._read(
            f"SELECT round, sample_counts, replied_slots, {agreed_column} FROM rounds "
            "WHERE closed = 1 AND round > ? ORDER BY round LIMIT ?",
            (after_round, limit),
        )
        result = []
        for r in rows:
            round_index = int(r[0])
            replies = self.replies(round_index)
            slots = tuple(json.loads(r[2]))
            scalars = b"".join(replies[s][0] for s in slots)
            if r[3] is not None:
                start_hash = str(r[3])
            else:  # closed before agreed hashes were recorded: the replies' common hash
                hashes = {replies[s][1] for s in slots}
                start_hash = hashes.pop() if len(hashes) == 1 else ""
            result.append(ClosedRound(round_index, tuple(json.loads(r[1])), slots, scalars, start_hash))
        return result


def retry_outcome(recorded_key: str, recorded: bytes, key: str, scalars: bytes) -> ReplyOutcome:
    """The one duplicate rule, in open and closed rounds alike: a slot's reply is identified by
    its idempotency key; the same key and bytes again is DUPLICATE (counted once), anything
    else for a slot that holds a reply is CONFLICT (ALREADY_EXISTS on the wire)."""
    return ReplyOutcome.DUPLICATE if (recorded_key, recorded) == (key, scalars) else ReplyOutcome.CONFLICT


def majority_hash(claimed: Sequence[str]) -> str:
    """The hash more than half of ``claimed`` name, or "" when none does."""
    if not claimed:
        return ""
    best, count = Counter(claimed).most_common(1)[0]
    return best if 2 * count > len(claimed) else ""
