"""Hostile bytes: every decoder and every RPC handler, fed malformed input, fails cleanly.

Property-based (hypothesis). ``FEDSEED_FUZZ_EXAMPLES`` sets the inputs per property
(CI: 200; the longer runs quoted in the closing notes used 5,000).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedseed import serde
from fedseed.codec import LogCodec, ScaledInt8Codec
from fedseed.errors import FedseedError
from fedseed.ledger import Ledger
from fedseed.manifest import Manifest
from fedseed.proto import coordinator_pb2 as pb
from fedseed.rounds import FedKSeedRounds
from fedseed.seeds import run_key
from fedseed.server.app import create_server, stop_gracefully
from fedseed.server.coordinator import Coordinator, CoordinatorConfig
from fedseed.server.probe import probe
from fedseed.server.store import CoordinatorStore
from fedseed.settings import RunParams, RunSettings

EXAMPLES = int(os.environ.get("FEDSEED_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
CLEAN_FAILURES = (DecodeError, ValueError, FedseedError)


@FUZZ
@given(st.binary(max_size=512))
def test_closed_round_decoder(raw: bytes) -> None:
    try:
        closed = serde.closed_round_from_bytes(raw)
    except CLEAN_FAILURES:
        return
    assert isinstance(closed.scalars, bytes) and all(r >= 0 for r in closed.replied_slots)


@FUZZ
@given(st.binary(max_size=512))
def test_run_params_decoder(raw: bytes) -> None:
    try:
        params = serde.run_params_from_proto(pb.RunParams.FromString(raw))
    except CLEAN_FAILURES:
        return
    assert params.config.pool_size >= 1 and params.config.lr > 0  # only usable runs come out


@FUZZ
@given(st.lists(st.text(max_size=80), max_size=8))
def test_ledger_reader(lines: list[str]) -> None:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"fuzz-ledger-{os.getpid()}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    try:
        for entry in Ledger.load(path):
            assert math.isfinite(entry.coef)
    except CLEAN_FAILURES:
        pass
    finally:
        path.unlink(missing_ok=True)


def test_every_byte_decodes_to_a_finite_value() -> None:
    for codec in (LogCodec(), ScaledInt8Codec(0.01)):
        assert all(math.isfinite(codec.decode(b)) for b in range(256))


@FUZZ
@given(st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 1, exclude_max=True))
def test_encoders_take_any_float(g: float, u: float) -> None:
    for codec in (LogCodec(), ScaledInt8Codec(0.01)):
        try:
            byte = codec.encode(g, u)
        except ValueError:
            assert not math.isfinite(g)
            continue
        assert 0 <= byte <= 255


ROUNDS_CONFIG = RunSettings(pool_size=16, local_steps=4, lr=0.1, eps=1e-3, replicas=2, aggregator="median")


@FUZZ
@given(
    st.lists(st.integers(1, 50), min_size=1, max_size=6),
    st.dictionaries(st.integers(-2, 8), st.binary(max_size=6), max_size=8),
)
def test_aggregation_of_arbitrary_replies(counts: list[int], replies: dict[int, bytes]) -> None:
    rounds = FedKSeedRounds(ROUNDS_CONFIG, run_key("fuzz"), LogCodec())
    plan = rounds.plan(0, counts)
    try:
        entries = rounds.aggregate(plan, replies)
    except ValueError:
        return
    assert all(math.isfinite(e.coef) for e in entries)


# -- the RPC handlers of a real coordinator on loopback ------------------------------------------

MANIFEST = Manifest("philox4x32-10/rademacher/v1", "sha256:" + "0" * 64, "fuzz", ("w",))
METHODS = ["Join", "GetTask", "Submit", "Sync", "Leave", "Status"]


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Coordinator, grpc.Channel, str]]:
    path = tmp_path_factory.mktemp("fuzz") / "coordinator.db"
    config = CoordinatorConfig(
        RunParams("fuzz", RunSettings(pool_size=16, local_steps=4, lr=0.1, eps=1e-3)), MANIFEST,
        clients_per_round=2, min_replies=2, rounds=3,
    )  # fmt: skip
    coordinator = Coordinator(CoordinatorStore(path), config)
    alice = coordinator.store.upsert_client("alice", 10)
    bob = coordinator.store.upsert_client("bob", 10)
    coordinator.store.open_round(0, [alice, bob], [10, 10], deadline=1e12)
    coordinator.store.record_reply(0, 0, alice, b"\x01\x02\x03\x04", "k", "sha256:x")
    server, port, health = create_server(coordinator, token="secret")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield coordinator, channel, f"127.0.0.1:{port}"
    channel.close()
    stop_gracefully(server, health, grace_s=0.5)


def _ledger_state(store: CoordinatorStore) -> Any:
    """What defines the ledger: the run, the closed rounds, the open round and its replies."""
    current = store.current_round()
    return (store.run(), store.closed_rounds(-1, 100), current,
            store.replies(current.round_index) if current else None)  # fmt: skip


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("token", ["secret", None])
def test_rpc_handlers_survive_malformed_requests(coordinator: Any, method: str, token: str | None) -> None:
    instance, channel, address = coordinator
    call = channel.unary_unary(f"/fedseed.proto.Coordinator/{method}")  # raw bytes both ways
    metadata = [("authorization", f"Bearer {token}")] if token else []
    before = _ledger_state(instance.store)
    codes: dict[grpc.StatusCode, int] = {}

    @FUZZ
    @given(st.binary(max_size=300))
    def send(raw: bytes) -> None:
        try:
            call(raw, timeout=3, metadata=metadata)  # a parsed GetTask may long-poll
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()
        codes[code] = codes.get(code, 0) + 1
        # UNKNOWN would mean a handler raised something it did not mean to.
        assert code != grpc.StatusCode.UNKNOWN

    send()
    assert _ledger_state(instance.store) == before  # no reply or round appeared or changed
    assert probe(address)  # still serving
    if token is None:
        assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}


# Well-formed messages whose every field ranges over its whole type (issue 17: random bytes
# rarely parse into a uint64 >= 2**63, a 4-billion sample count or a name with a newline).
_FULL_RANGE = {
    "TYPE_UINT64": st.integers(0, (1 << 64) - 1), "TYPE_UINT32": st.integers(0, (1 << 32) - 1),
    "TYPE_FLOAT": st.floats(width=32), "TYPE_BOOL": st.booleans(),
    "TYPE_STRING": st.text(max_size=200), "TYPE_BYTES": st.binary(max_size=64),
}  # fmt: skip
_TYPE_NAMES = {getattr(FieldDescriptor, n): n for n in _FULL_RANGE}
_REQUESTS = {
    "Join": pb.JoinRequest, "GetTask": pb.TaskRequest, "Submit": pb.SubmitRequest,
    "Sync": pb.SyncRequest, "Leave": pb.LeaveRequest, "Status": pb.StatusRequest,
}  # fmt: skip


def _message(cls: Any) -> st.SearchStrategy[Any]:
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in cls.DESCRIPTOR.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            value = _message(field.message_type._concrete_class)
        else:
            value = _FULL_RANGE[_TYPE_NAMES[field.type]]
        fields[field.name] = st.lists(value, max_size=3) if field.is_repeated else value
    return st.fixed_dictionaries({}, optional=fields).map(lambda kw: cls(**kw))


@pytest.mark.parametrize("method", METHODS)
def test_rpc_handlers_survive_every_field_at_every_value(coordinator: Any, method: str) -> None:
    instance, channel, address = coordinator
    call = channel.unary_unary(f"/fedseed.proto.Coordinator/{method}")
    metadata = [("authorization", "Bearer secret")]
    before = _ledger_state(instance.store)

    @FUZZ
    @given(_message(_REQUESTS[method]))
    def send(request: Any) -> None:
        if method == "GetTask":
            request.wait_ms = 0  # a valid long-poll would only slow the run down
        try:
            call(request.SerializeToString(), timeout=3, metadata=metadata)
        except grpc.RpcError as exc:
            assert exc.code() != grpc.StatusCode.UNKNOWN, exc.details()

    send()
    assert _ledger_state(instance.store) == before
    assert probe(address)
