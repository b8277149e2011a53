"""The coordinator database as a run :mod:`fedseed.runs` can read (entry point ``fedseed.run_readers``).

Opened read only: ``fedseed status`` and ``fedseed export`` work beside a live
coordinator and never change its database.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from fedseed.runs import RunError, RunRecord, record_from_coordinator

from .store import CoordinatorStore, StoreError

SQLITE_HEADER = b"SQLite format 3\x00"
DATABASE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def read_database(path: Path) -> RunRecord | None:
    """The run in a coordinator database; None for a file that is neither SQLite nor named like one."""
    with open(path, "rb") as f:
        header = f.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER and path.suffix not in DATABASE_SUFFIXES:
        return None
    try:
        store = CoordinatorStore.open_readonly(path)
        try:
            return _record(store, path)
        finally:
            store.close()
    except StoreError as exc:
        raise RunError(str(exc)) from exc
    except sqlite3.DatabaseError as exc:
        raise RunError(f"{path} is not a readable coordinator database: {exc}") from exc


def _record(store: CoordinatorStore, path: Path) -> RunRecord:
    run = store.run()
    if run is None:
        raise RunError(f"{path} is a coordinator database with no run recorded yet")
    manifest, params = run
    closed = store.closed_rounds(-1, 1 << 30)
    clients = store.clients(active_only=False)
    names = {c.client_id: c.name for c in clients}
    participation = store.participation()
    current = store.current_round()
    info = {
        "pool_size": params.config.pool_size,
        "local_steps": params.config.local_steps,
        "clients": len(clients),
        "active_clients": sum(c.active for c in clients),
        "scores": {c.name: c.score for c in clients},
        "participation": {
            names.get(i, str(i)): {"selected": s, "replied": r, "bytes": b}
            for i, (s, r, b) in {**{c.client_id: (0, 0, 0) for c in clients}, **participation}.items()
        },
        "reply_bytes": sum(b for _, _, b in participation.values()),
        "replies_per_round": [len(r.replied_slots) for r in closed],
        "mismatches": [
            {
                "round": m.round_index,
                "client": names.get(m.client_id, str(m.client_id)),
                "claimed_hash": m.claimed_hash,
                "agreed_hash": m.agreed_hash,
            }
            for m in store.mismatches()
        ],
        "open_round": None
        if current is None
        else {
            "round": current.round_index,
            "slots": len(current.slot_clients),
            "replies": len(store.replies(current.round_index)),
            "deadline_in_s": round(current.deadline_unix - time.time(), 1),
        },
    }
    final_hash, reports = store.final_hash(len(closed))
    info["final_reports"] = {"agreed": final_hash, "reports": reports}
    return record_from_coordinator(path, manifest, params, closed, info, final_hash)
