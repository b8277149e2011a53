"""Issue 17's hostile inputs, against a real coordinator on loopback: each is refused with
INVALID_ARGUMENT and one sentence, nothing reaches the store, and the server stays up."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedseed import serde
from fedseed.proto import coordinator_pb2 as pb
from fedseed.server.coordinator import Coordinator, CoordinatorConfig
from fedseed.server.store import ClientRow, CoordinatorStore, ReplyOutcome
from fedseed.settings import RunParams, RunSettings

from .test_wire import AUTH, TINY_MANIFEST, _code

HUGE = 1 << 63  # SQLite's INTEGER ends at 2**63 - 1: this used to be UNKNOWN with a traceback


def _join(stub: Any, name: str = "c", num_samples: int = 5, **fields: Any) -> Any:
    request = pb.JoinRequest(
        manifest=serde.manifest_to_proto(TINY_MANIFEST), num_samples=num_samples, client_name=name, **fields
    )
    return lambda: stub.Join(request, timeout=5, metadata=AUTH)


@pytest.mark.parametrize(
    ("rpc", "request_message"),
    [
        ("GetTask", pb.TaskRequest(client_id=HUGE)),
        ("Submit", pb.SubmitRequest(client_id=1, round=HUGE, scalars=b"\x01\x02\x03", idempotency_key="k")),
        ("Sync", pb.SyncRequest(client_id=1, from_round=HUGE)),
        ("Leave", pb.LeaveRequest(client_id=(1 << 64) - 1)),
    ],
)
def test_integers_beyond_the_store_are_invalid_argument(serve: Any, rpc: str, request_message: Any) -> None:
    stub, _, _ = serve(TINY_MANIFEST)
    code, details = _code(lambda: getattr(stub, rpc)(request_message, timeout=5, metadata=AUTH))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "out of range" in details
    assert stub.Status(pb.StatusRequest(), timeout=5, metadata=AUTH).next_round == 0  # still serving


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"num_samples": (1 << 32) - 1}, "num_samples must be in [1, 1,000,000]"),  # claims the federation
        ({"score": -1e38}, "score must be finite"),  # would steer score-driven selection
        ({"score": float("inf")}, "score must be finite"),
        ({"name": "x" * 4_000_000}, "client_name is 4000000 characters"),
        ({"name": "c\nINFO round 99 closed"}, "control, format or separator character (U+000A)"),
        ({"name": "c\x00"}, "U+0000"),
        ({"name": "evil\u202egnp.exe"}, "U+202E"),  # a right-to-left override
        ({"name": "   "}, "client_name must not be empty"),
    ],
)
def test_hostile_join_fields_are_refused(serve: Any, fields: dict[str, Any], message: str) -> None:
    stub, coordinator, _ = serve(TINY_MANIFEST)
    code, details = _code(_join(stub, **fields))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details
    assert coordinator.store.clients(active_only=False) == []


def test_look_alike_names_are_one_client(serve: Any) -> None:
    stub, coordinator, _ = serve(TINY_MANIFEST)
    first = _join(stub, "client-1")()
    again = _join(stub, "\uff43lient-1")()  # a full-width c: NFKC folds it into "client-1"
    assert first.client_id == again.client_id
    assert [c.name for c in coordinator.store.clients(active_only=False)] == ["client-1"]


def test_a_client_name_cannot_forge_a_log_line(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    stub, _, _ = serve(TINY_MANIFEST)
    with caplog.at_level(logging.INFO):
        _code(_join(stub, "c\nround 99 closed with slots [0]"))
        _join(stub, "honest")()
    assert not any("round 99" in r.getMessage() for r in caplog.records)


class _JoinDuringRead(CoordinatorStore):
    """A real store on which a client joins right after the coordinator's first read of the
    client list: the interleaving a storm of joins produces now and then, made certain."""

    armed = False

    def clients(self, active_only: bool = True) -> list[ClientRow]:
        rows = super().clients(active_only)
        if self.armed:
            self.armed = False
            self.upsert_client("late-joiner", 5)
        return rows


def test_a_join_between_reads_cannot_break_a_round_opening(tmp_path: Path) -> None:
    # The race: the client list was read twice when a round opened; a client that joined in
    # between could be selected but was missing from the first read (KeyError -> UNKNOWN).
    store = _JoinDuringRead(tmp_path / "c.db")
    config = CoordinatorConfig(params=RunParams("race", RunSettings(pool_size=8, local_steps=3)),
                               manifest=TINY_MANIFEST, clients_per_round=3)  # fmt: skip
    coordinator = Coordinator(store, config)
    for name in ("a", "b", "c"):
        coordinator.join(name, TINY_MANIFEST, 5)
    store.armed = True
    opened = coordinator._advance()
    assert opened is not None and sorted(opened.slot_clients) == [1, 2, 3]  # the three it read
    assert len(store.clients()) == 4  # the late joiner is in, for the next round


def test_one_duplicate_rule_in_open_and_closed_rounds(serve: Any) -> None:
    # Issue 17: the same bytes under a new key were ALREADY_EXISTS in an open round and
    # DUPLICATE in a closed one. Now: same key and bytes = DUPLICATE, else ALREADY_EXISTS.
    stub, coordinator, _ = serve(TINY_MANIFEST, clients_per_round=2, rounds=2)
    ids = [_join(stub, n)().client_id for n in ("a", "b")]
    tasks = {
        i: stub.GetTask(pb.TaskRequest(client_id=i, wait_ms=100), timeout=5, metadata=AUTH).task for i in ids
    }

    def submit(client_id: int, key: str, scalars: bytes = b"\x01\x02\x03") -> Any:
        task = tasks[client_id]
        request = pb.SubmitRequest(client_id=client_id, round=task.round, slot=task.slot, scalars=scalars,
                                   idempotency_key=key, start_hash="sha256:" + "1" * 64)  # fmt: skip
        return lambda: stub.Submit(request, timeout=5, metadata=AUTH)

    def outcomes(client_id: int) -> list[Any]:
        found = []
        for call in (
            submit(client_id, "k"),
            submit(client_id, "other-key"),
            submit(client_id, "k", b"\x04\x05\x06"),
        ):
            try:
                found.append(call().outcome)
            except grpc.RpcError as exc:
                found.append(exc.code())
        return found

    assert submit(ids[0], "k")().outcome == pb.SubmitReply.ACCEPTED
    rule = [pb.SubmitReply.DUPLICATE, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.ALREADY_EXISTS]
    assert outcomes(ids[0]) == rule  # round 0 still open
    assert submit(ids[1], "k")().outcome == pb.SubmitReply.ACCEPTED  # closes round 0
    assert coordinator.store.next_round() == 1
    assert outcomes(ids[0]) == rule  # closed: the same answers


def _clocked(tmp_path: Path, **overrides: Any) -> tuple[Coordinator, list[float]]:
    now = [1000.0]
    params = RunParams("liveness", RunSettings(pool_size=8, local_steps=3, lr=0.1, eps=0.1))
    config = CoordinatorConfig(params, TINY_MANIFEST, round_timeout_s=10, **overrides)
    return Coordinator(CoordinatorStore(tmp_path / "c.db"), config, clock=lambda: now[0]), now


HASH = "sha256:" + "1" * 64


def test_a_client_that_missed_its_deadline_is_not_selected_until_heard_from(tmp_path: Path) -> None:
    coordinator, now = _clocked(tmp_path, clients_per_round=2, min_replies=1, rounds=5)
    ids = {name: coordinator.join(name, TINY_MANIFEST, 5)[0] for name in ("a", "b", "c")}
    opened = coordinator._advance()
    assert opened is not None
    alive, dead = opened.slot_clients
    coordinator.submit(alive, 0, 0, b"\x01\x02\x03", "k", HASH)
    now[0] += 60  # the dead one never answers
    coordinator.task(alive)  # round 0 closes with one reply; round 1 opens
    second = coordinator.store.current_round()
    assert second is not None and second.round_index == 1
    assert dead not in second.slot_clients and set(second.slot_clients) == set(ids.values()) - {dead}
    coordinator.task(dead)  # heard from again: selectable
    assert dead not in coordinator.suspects


def test_a_round_short_of_its_floor_gives_silent_slots_to_other_clients(tmp_path: Path) -> None:
    coordinator, now = _clocked(tmp_path, clients_per_round=2, min_replies=2, rounds=2)
    ids = {name: coordinator.join(name, TINY_MANIFEST, 5 + i)[0] for i, name in enumerate(("a", "b", "c"))}
    opened = coordinator._advance()
    assert opened is not None
    first, silent = opened.slot_clients
    spare = (set(ids.values()) - {first, silent}).pop()
    coordinator.submit(first, 0, 0, b"\x01\x02\x03", "k", HASH)
    now[0] += 60
    task = coordinator.task(spare)  # the deadline passed short of 2 replies: slot 1 is the spare's
    assert task is not None and (task.round_index, task.slot) == (0, 1)
    assert task.sample_counts[1] == coordinator.store.client(spare).num_samples  # type: ignore[union-attr]
    assert (
        coordinator.submit(silent, 0, 1, b"\x07\x08\x09", "late", HASH) is ReplyOutcome.LATE
    )  # not its slot now
    assert coordinator.submit(spare, 0, 1, b"\x04\x05\x06", "k2", HASH) is ReplyOutcome.ACCEPTED
    assert coordinator.store.next_round() == 1  # closed with its two replies
