"""The coordinator store, against an in-memory database and a real file alike."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fedseed.errors import ConfigError
from fedseed.manifest import Manifest
from fedseed.server.store import CoordinatorStore, ReplyOutcome, StoreError
from fedseed.settings import RunParams, RunSettings

MANIFEST = Manifest("philox4x32-10/rademacher/v1", "sha256:base", "vader/label-word", ("model.norm.weight",))
PARAMS = RunParams("run", RunSettings(pool_size=64, local_steps=3, lr=1e-2, eps=1e-3))


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CoordinatorStore]:
    s = CoordinatorStore(":memory:" if request.param == "memory" else tmp_path / "coordinator.db")
    s.init_run(MANIFEST, PARAMS)
    yield s
    s.close()


def test_run_is_recorded_once_and_a_different_run_is_refused(store: CoordinatorStore) -> None:
    assert store.run() == (MANIFEST, PARAMS)
    store.init_run(MANIFEST, PARAMS)  # same run: fine
    other = Manifest(MANIFEST.stream, "sha256:other", MANIFEST.task, MANIFEST.trainable)
    with pytest.raises(
        ConfigError, match="base_model_hash: run has 'sha256:base', client has 'sha256:other'"
    ):
        store.init_run(other, PARAMS)


def test_clients_keep_their_id_across_rejoins(store: CoordinatorStore) -> None:
    a = store.upsert_client("alice", 10)
    b = store.upsert_client("bob", 20)
    store.set_active(a, False)
    assert [c.name for c in store.clients()] == ["bob"]
    assert store.upsert_client("alice", 12) == a != b
    assert [(c.name, c.num_samples) for c in store.clients()] == [("alice", 12), ("bob", 20)]


def test_a_round_closes_with_the_replies_it_has(store: CoordinatorStore) -> None:
    a, b = store.upsert_client("alice", 10), store.upsert_client("bob", 20)
    store.open_round(0, [a, b], [10, 20], deadline=1e12)
    assert store.record_reply(0, 1, b, b"\x01\x02\x03", "k1", "sha256:base") is ReplyOutcome.ACCEPTED
    closed = store.close_round(0)
    assert (closed.replied_slots, closed.scalars, closed.start_hash) == ((1,), b"\x01\x02\x03", "sha256:base")
    assert closed.sample_counts == (10, 20)
    assert store.next_round() == 1 and store.current_round() is None
    assert store.record_reply(0, 0, a, b"\x00\x00\x00", "k2", "sha256:base") is ReplyOutcome.LATE


def test_a_retry_counts_once_and_a_different_payload_is_rejected(store: CoordinatorStore) -> None:
    a = store.upsert_client("alice", 10)
    store.open_round(0, [a], [10], deadline=1e12)
    assert store.record_reply(0, 0, a, b"\x01\x02\x03", "k", "h") is ReplyOutcome.ACCEPTED
    assert store.record_reply(0, 0, a, b"\x01\x02\x03", "k", "h") is ReplyOutcome.DUPLICATE
    assert store.record_reply(0, 0, a, b"\x09\x09\x09", "k", "h") is ReplyOutcome.CONFLICT
    assert store.replies(0) == {0: (b"\x01\x02\x03", "h")}


def test_rounds_open_in_order(store: CoordinatorStore) -> None:
    a = store.upsert_client("alice", 10)
    with pytest.raises(ValueError, match="cannot open"):
        store.open_round(1, [a], [10], deadline=1e12)
    store.open_round(0, [a], [10], deadline=1e12)
    with pytest.raises(ValueError, match="cannot open"):
        store.open_round(1, [a], [10], deadline=1e12)


def test_acknowledged_writes_survive_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    first = CoordinatorStore(path)
    first.init_run(MANIFEST, PARAMS)
    a = first.upsert_client("alice", 10)
    first.open_round(0, [a], [10], deadline=1e12)
    first.record_reply(0, 0, a, b"\x05\x06\x07", "k", "h")
    first.close()  # as after a crash, a new process opens the same file
    again = CoordinatorStore(path)
    assert again.run() == (MANIFEST, PARAMS)
    assert again.replies(0) == {0: (b"\x05\x06\x07", "h")}
    assert again.current_round() is not None and again.current_round().round_index == 0  # type: ignore[union-attr]


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable coordinator database"):
        CoordinatorStore(path)


def _filled(path: Path) -> None:
    s = CoordinatorStore(path)
    s.init_run(MANIFEST, PARAMS)
    ids = [s.upsert_client(f"client-{i}", 10 + i) for i in range(40)]
    for r in range(30):
        s.open_round(r, ids[:3], [10, 11, 12], deadline=1e12)
        for slot in range(3):
            s.record_reply(r, slot, ids[slot], bytes(range(3)) * 40, f"k{r}-{slot}", "sha256:base")
        s.close_round(r)
    s.close()


def test_read_only_opening_never_creates_or_alters_a_database(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no coordinator database at"):
        CoordinatorStore.open_readonly(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()
    path = tmp_path / "coordinator.db"
    _filled(path)
    before = path.read_bytes()
    reader = CoordinatorStore.open_readonly(path)
    assert reader.next_round() == 30 and len(reader.closed_rounds(-1, 100)) == 30
    assert reader.participation()[1] == (30, 30, 30 * 120)
    reader.close()
    assert path.read_bytes() == before


def test_a_damaged_database_is_detected_on_opening(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.db"
    _filled(path)
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 4 * page
    data[2 * page : 3 * page] = b"\xa5" * page  # one B-tree page overwritten (a torn or bad write)
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=str(path)):
        reader = CoordinatorStore.open_readonly(path)
        reader.closed_rounds(-1, 100)
