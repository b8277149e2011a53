"""Issue 15's impersonation attack, replayed against per-client credentials (a real coordinator
on loopback, a real SQLite file): one credential acts as one client, never as another.

The attack: "mallory" holds a valid credential and submits under the honest clients' ids with
every scalar at the codec maximum and a made-up start hash. With the shared token every such
submission used to be ACCEPTED and the honest replies came back LATE.
"""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedseed import serde
from fedseed.manifest import Manifest
from fedseed.perturb.stream import STREAM_NAME
from fedseed.proto import coordinator_pb2 as pb
from fedseed.proto import coordinator_pb2_grpc as pb_grpc
from fedseed.server.app import create_server, stop_gracefully
from fedseed.server.cli import credentials_main
from fedseed.server.coordinator import Coordinator, CoordinatorConfig
from fedseed.server.store import CoordinatorStore
from fedseed.settings import RunParams, RunSettings

from .test_wire import _code

BASE = "sha256:" + "0" * 64
MANIFEST = Manifest(STREAM_NAME, BASE, "t", ("w",))
STEPS = 3
HONEST = ("alice", "bob", "carol")
REPO = Path(__file__).resolve().parents[2]


def _issue(store: CoordinatorStore, name: str) -> list[tuple[str, str]]:
    token = f"token-of-{name}"
    store.set_credential(name, hashlib.sha256(token.encode()).hexdigest(), 0.0)
    return [("authorization", f"Bearer {token}")]


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[tuple[pb_grpc.CoordinatorStub, Coordinator]]:
    params = RunParams("identity", RunSettings(pool_size=64, local_steps=STEPS, lr=1e-2, eps=1e-3))
    config = CoordinatorConfig(params=params, manifest=MANIFEST, rounds=1, clients_per_round=3, min_replies=3)
    coordinator = Coordinator(CoordinatorStore(tmp_path / "c.db"), config)
    server, port, health = create_server(coordinator, token=None, per_client=True)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield pb_grpc.CoordinatorStub(channel), coordinator
    channel.close()
    stop_gracefully(server, health, grace_s=1)


def _join(stub: Any, name: str, auth: Any) -> Any:
    request = pb.JoinRequest(manifest=serde.manifest_to_proto(MANIFEST), num_samples=10, client_name=name)
    return stub.Join(request, timeout=5, metadata=auth)


def test_a_credential_acts_only_as_its_own_client(coordinator: Any) -> None:
    stub, coord = coordinator
    auth = {name: _issue(coord.store, name) for name in (*HONEST, "mallory")}
    # mallory cannot join under an honest name ...
    code, details = _code(lambda: _join(stub, "alice", auth["mallory"]))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "cannot join as 'alice'" in details
    ids = {name: _join(stub, name, auth[name]).client_id for name in HONEST}
    tasks = {}
    for name in HONEST:
        # ... nor poll for an honest client's task ...
        request = pb.TaskRequest(client_id=ids[name], wait_ms=0)
        code, _ = _code(lambda r=request: stub.GetTask(r, timeout=5, metadata=auth["mallory"]))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        tasks[name] = stub.GetTask(
            pb.TaskRequest(client_id=ids[name], wait_ms=2000), timeout=5, metadata=auth[name]
        )
        assert tasks[name].WhichOneof("kind") == "task"
    # ... nor submit as one: maximal scalars and a made-up start hash, for every honest slot.
    for name in HONEST:
        forged = pb.SubmitRequest(
            client_id=ids[name], round=0, slot=tasks[name].task.slot, scalars=b"\x7f" * STEPS,
            idempotency_key=f"forged-{name}", start_hash="sha256:" + "f" * 64,
        )  # fmt: skip
        code, details = _code(lambda f=forged: stub.Submit(f, timeout=5, metadata=auth["mallory"]))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "'mallory'" in details
        leave = pb.LeaveRequest(client_id=ids[name], final_hash=BASE, rounds=1)
        assert _code(lambda r=leave: stub.Leave(r, timeout=5, metadata=auth["mallory"]))[0] == (
            grpc.StatusCode.PERMISSION_DENIED
        )
    assert coord.store.replies(0) == {}  # no forged row reached the store
    # The honest replies are the ones recorded, and the round agrees on the honest start hash.
    honest_bytes = {name: bytes([1 + i] * STEPS) for i, name in enumerate(HONEST)}
    for name in HONEST:
        reply = stub.Submit(
            pb.SubmitRequest(
                client_id=ids[name], round=0, slot=tasks[name].task.slot, scalars=honest_bytes[name],
                idempotency_key=f"honest-{name}", start_hash=BASE,
            ), timeout=5, metadata=auth[name],
        )  # fmt: skip
        assert reply.outcome == pb.SubmitReply.ACCEPTED
    recorded = coord.store.replies(0)
    assert sorted(payload for payload, _ in recorded.values()) == sorted(honest_bytes.values())
    assert {start for _, start in recorded.values()} == {BASE}


def test_a_revoked_or_unknown_credential_is_refused_from_the_next_call(coordinator: Any) -> None:
    stub, coord = coordinator
    auth = _issue(coord.store, "bob")
    assert _join(stub, "bob", auth).client_id >= 1
    assert stub.Status(pb.StatusRequest(), timeout=5, metadata=auth).next_round == 0
    assert coord.store.revoke_credential("bob")
    assert _code(lambda: stub.Status(pb.StatusRequest(), timeout=5, metadata=auth))[0] == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    stranger = [("authorization", "Bearer made-up")]
    assert _code(lambda: _join(stub, "eve", stranger))[0] == grpc.StatusCode.UNAUTHENTICATED
    # A credential is one client name: a thousand joins from it are still one client.
    carol = _issue(coord.store, "carol")
    for _ in range(20):
        _join(stub, "carol", carol)
    assert [c.name for c in coord.store.clients(active_only=False)] == ["bob", "carol"]


def test_enroll_revoke_and_list_credentials_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(REPO / "deploy" / "configs" / "coordinator.toml")
    db = str(tmp_path / "c.db")
    token_file = tmp_path / "alice.token"
    assert (
        credentials_main(["enroll", "--config", config, "--database", db, "alice", "--out", str(token_file)])
        == 0
    )
    token = token_file.read_text().strip()
    assert len(token) == 64 and stat.S_IMODE(token_file.stat().st_mode) == 0o600
    out = capsys.readouterr().out
    assert token not in out and "enrolled alice" in out
    store = CoordinatorStore(db)
    assert store.credential(hashlib.sha256(token.encode()).hexdigest()) == ("alice", False)
    assert token not in (tmp_path / "c.db").read_bytes().decode("latin-1")  # only its hash is stored
    # Never overwrites a token file; revoking names the client; listing shows no secret.
    again = ["enroll", "--config", config, "--database", db, "alice", "--out", str(token_file)]
    assert credentials_main(again) == 2 and "never overwritten" in capsys.readouterr().err
    assert credentials_main(["revoke", "--config", config, "--database", db, "alice"]) == 0
    assert credentials_main(["revoke", "--config", config, "--database", db, "nobody"]) == 2
    capsys.readouterr()
    assert credentials_main(["credentials", "--config", config, "--database", db]) == 0
    listed = capsys.readouterr().out
    assert listed == "alice\trevoked\n"
    assert store.credential(hashlib.sha256(token.encode()).hexdigest()) == ("alice", True)
