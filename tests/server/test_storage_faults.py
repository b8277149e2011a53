"""Storage faults under the coordinator: clear errors, nothing half-written.

The disk fills up: SQLite's per-connection page limit stands in for a full disk (the same
SQLITE_FULL error, without filling a real file system); the run continues once there is
room again. A damaged database file is refused at start-up; a read-only one too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedseed.manifest import Manifest
from fedseed.proto import coordinator_pb2 as pb
from fedseed.proto import coordinator_pb2_grpc as pb_grpc
from fedseed.serde import manifest_to_proto
from fedseed.server.app import create_server, stop_gracefully
from fedseed.server.coordinator import Coordinator, CoordinatorConfig
from fedseed.server.store import CoordinatorStore, ReplyOutcome, StoreError
from fedseed.settings import RunParams, RunSettings

MANIFEST = Manifest("philox4x32-10/rademacher/v1", "sha256:" + "0" * 64, "disk", ("w",))
TOKEN = [("authorization", "Bearer t")]
EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "configs" / "coordinator.toml"


STEPS = 20_000  # a reply this size needs new database pages


def _fill(store: CoordinatorStore) -> None:
    """No new page from now on: the next write that needs one fails as on a full disk."""
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")


def _make_room(store: CoordinatorStore) -> None:
    store._db.execute("PRAGMA max_page_count = 1073741823")


def test_a_full_disk_fails_the_write_cleanly(tmp_path: Path) -> None:
    store = CoordinatorStore(tmp_path / "c.db")
    store.init_run(MANIFEST, RunParams("disk", RunSettings(pool_size=8, local_steps=4, lr=0.1, eps=0.1)))
    alice = store.upsert_client("alice", 10)
    store.open_round(0, [alice], [10], deadline=1e12)
    _fill(store)
    with pytest.raises(StoreError, match=r"write failed .*full.*nothing was recorded"):
        store.record_reply(0, 0, alice, b"\x01" * STEPS, "k", "sha256:x")
    assert store.replies(0) == {}
    _make_room(store)
    assert store.record_reply(0, 0, alice, b"\x01" * STEPS, "k", "sha256:x") is ReplyOutcome.ACCEPTED
    assert store._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_submit_on_a_full_disk_is_unavailable_and_succeeds_on_retry(tmp_path: Path) -> None:
    params = RunParams("disk", RunSettings(pool_size=8, local_steps=STEPS, lr=0.1, eps=0.1))
    config = CoordinatorConfig(params, MANIFEST, clients_per_round=1, rounds=2)
    coordinator = Coordinator(CoordinatorStore(tmp_path / "c.db"), config)
    server, port, health = create_server(coordinator, token="t")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.CoordinatorStub(channel)
            joined = stub.Join(
                pb.JoinRequest(manifest=manifest_to_proto(MANIFEST), num_samples=10, client_name="alice"),
                metadata=TOKEN, timeout=5,
            )  # fmt: skip
            task = stub.GetTask(
                pb.TaskRequest(client_id=joined.client_id, wait_ms=2000), metadata=TOKEN, timeout=5
            )
            assert task.WhichOneof("kind") == "task"
            submit = pb.SubmitRequest(
                client_id=joined.client_id, round=task.task.round, slot=task.task.slot,
                scalars=b"\x01" * STEPS, idempotency_key="k1", start_hash="sha256:" + "1" * 64,
            )  # fmt: skip
            _fill(coordinator.store)
            with pytest.raises(grpc.RpcError) as info:
                stub.Submit(submit, metadata=TOKEN, timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # clients retry these with backoff
            assert "nothing was recorded" in info.value.details()
            assert coordinator.store.replies(0) == {}
            _make_room(coordinator.store)
            assert stub.Submit(submit, metadata=TOKEN, timeout=5).outcome == pb.SubmitReply.ACCEPTED
    finally:
        stop_gracefully(server, health, grace_s=0.5)


def _coordinator_process(db: Path, config: Path, **popen: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedseed", "coordinator", "--config", str(config), "--database", str(db),
         "--address", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "FEDSEED_TOKEN": "t", **popen.pop("env", {})}, **popen,
    )  # fmt: skip


def test_a_damaged_database_is_refused_at_start_up(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    store = CoordinatorStore(db)
    store.init_run(MANIFEST, RunParams("disk", RunSettings(pool_size=8, local_steps=4, lr=0.1, eps=0.1)))
    for i in range(200):
        store.upsert_client(f"client-{i:04d}-" + "x" * 100, 10)
    store.close()
    raw = bytearray(db.read_bytes())
    raw[3 * 4096 : 4 * 4096] = b"\xa5" * 4096  # one page overwritten below SQLite
    db.write_bytes(bytes(raw))
    proc = _coordinator_process(db, EXAMPLE)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(db) in proc.stderr and ("integrity" in proc.stderr or "malformed" in proc.stderr)


def test_a_read_only_database_is_a_clear_error(tmp_path: Path) -> None:
    # Root ignores file modes; an immutable file (chattr +i) is read-only even for root.
    db = tmp_path / "c.db"
    CoordinatorStore(db).close()
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(db)]).returncode != 0:
        pytest.skip("cannot make a file immutable here (chattr)")
    try:
        proc = _coordinator_process(db, EXAMPLE)
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert str(db) in proc.stderr and "readonly" in proc.stderr.replace("read-only", "readonly")
