"""A real coordinator on loopback: bad input gets clear status codes; real clients agree."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedseed import data, serde, tasks
from fedseed.codec import LogCodec
from fedseed.ledger import model_hash
from fedseed.manifest import Manifest
from fedseed.models import DEFAULT_TRAINABLE
from fedseed.perturb.stream import STREAM_NAME
from fedseed.proto import coordinator_pb2 as pb
from fedseed.proto import coordinator_pb2_grpc as pb_grpc
from fedseed.rounds import FedKSeedRounds
from fedseed.seeds import run_key
from fedseed.server.app import create_server, stop_gracefully
from fedseed.server.coordinator import Coordinator, CoordinatorConfig
from fedseed.server.store import CoordinatorStore
from fedseed.settings import RunParams, RunSettings
from fedseed.zo import TrainableSet, ZOEngine

TOKEN = "s3cret"
AUTH = [("authorization", f"Bearer {TOKEN}")]
TINY_MANIFEST = Manifest(STREAM_NAME, "sha256:base", "t", ("w",))


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """Start a coordinator for a config; yields (stub factory, coordinator)."""
    started: list[Any] = []

    def start(
        manifest: Manifest, fedkseed: RunSettings | None = None, **overrides: Any
    ) -> tuple[pb_grpc.CoordinatorStub, Coordinator, int]:
        fedkseed = fedkseed or RunSettings(pool_size=64, local_steps=3, lr=1e-2, eps=1e-3)
        params = RunParams("wire-test", fedkseed)
        config = CoordinatorConfig(params=params, manifest=manifest, **overrides)
        coordinator = Coordinator(CoordinatorStore(tmp_path / "coordinator.db"), config)
        server, port, health = create_server(coordinator, token=TOKEN)
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        started.append((server, health, channel))
        return pb_grpc.CoordinatorStub(channel), coordinator, port

    yield start
    for server, health, channel in started:
        channel.close()
        stop_gracefully(server, health, grace_s=1)


def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_missing_or_wrong_token_is_unauthenticated(serve: Any) -> None:
    stub, _, _ = serve(TINY_MANIFEST)
    request = pb.StatusRequest()
    assert _code(lambda: stub.Status(request, timeout=5))[0] == grpc.StatusCode.UNAUTHENTICATED
    bad = [("authorization", "Bearer nope")]
    assert _code(lambda: stub.Status(request, timeout=5, metadata=bad))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert stub.Status(request, timeout=5, metadata=AUTH).next_round == 0


def test_a_wrong_manifest_is_refused_naming_the_mismatch(serve: Any) -> None:
    stub, _, _ = serve(TINY_MANIFEST)
    wrong = Manifest(STREAM_NAME, "sha256:other", "t", ("w",))
    request = pb.JoinRequest(manifest=serde.manifest_to_proto(wrong), num_samples=5, client_name="c")
    code, details = _code(lambda: stub.Join(request, timeout=5, metadata=AUTH))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "base_model_hash: run has 'sha256:base', client has 'sha256:other'" in details


def test_bad_submissions_are_rejected_and_leave_the_store_untouched(serve: Any) -> None:
    # Prepare: one client, one-client rounds, so round 0 opens for it.
    stub, coordinator, _ = serve(TINY_MANIFEST, clients_per_round=1)
    joined = stub.Join(
        pb.JoinRequest(manifest=serde.manifest_to_proto(TINY_MANIFEST), num_samples=5, client_name="c"),
        timeout=5, metadata=AUTH,
    )  # fmt: skip
    task = stub.GetTask(
        pb.TaskRequest(client_id=joined.client_id, wait_ms=100), timeout=5, metadata=AUTH
    ).task

    def submit(**fields: Any) -> Any:
        base = {"client_id": joined.client_id, "round": task.round, "slot": task.slot,
                "scalars": b"\x01\x02\x03", "idempotency_key": "k",
                "start_hash": "sha256:" + "1" * 64}  # fmt: skip
        return lambda: stub.Submit(pb.SubmitRequest(**{**base, **fields}), timeout=5, metadata=AUTH)

    # Execute / Assert
    assert _code(submit(scalars=b"\x01"))[0] == grpc.StatusCode.INVALID_ARGUMENT  # wrong length
    assert _code(submit(round=7))[0] == grpc.StatusCode.INVALID_ARGUMENT  # not the open round
    assert _code(submit(slot=3))[0] == grpc.StatusCode.INVALID_ARGUMENT  # not its slot
    assert _code(submit(client_id=999))[0] == grpc.StatusCode.NOT_FOUND
    assert _code(submit(scalars=bytes(5 * 1024 * 1024)))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED  # > 4 MiB
    assert _code(submit(idempotency_key=""))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(submit(start_hash="sha256:whatever"))[0] == grpc.StatusCode.INVALID_ARGUMENT  # not a hash
    assert coordinator.store.replies(task.round) == {}
    assert submit()().outcome == pb.SubmitReply.ACCEPTED
    assert submit()().outcome == pb.SubmitReply.DUPLICATE  # a retry counts once
    assert coordinator.store.next_round() == 1  # the one-slot round closed


def test_malformed_bytes_are_rejected_and_change_nothing(serve: Any) -> None:
    _, coordinator, port = serve(TINY_MANIFEST)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        raw = channel.unary_unary("/fedseed.proto.Coordinator/Submit")  # no serializer: raw bytes
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\xff\xff\xff\xff not protobuf", timeout=5, metadata=AUTH)
    assert info.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
    assert coordinator.store.next_round() == 0 and coordinator.store.clients(active_only=False) == []


@pytest.mark.slow
def test_three_client_processes_run_fedkseed_and_agree_every_round(serve: Any, minilm: Any) -> None:
    # Prepare: the run's manifest is the clients' model (MiniLM, init seed 0).
    base, _ = minilm
    include = list(DEFAULT_TRAINABLE["minilm"])  # what a plain `fedseed client` trains
    trainable = TrainableSet.from_model(base, include=include)
    manifest = Manifest(STREAM_NAME, model_hash(base), "vader-movies/minilm-seqcls", tuple(trainable.names))
    _, coordinator, port = serve(manifest, clients_per_round=3, rounds=3)

    # Execute: three real client processes on loopback.
    def client_command(i: int) -> list[str]:
        return [
            sys.executable, "-m", "fedseed.client.runner", "--coordinator", f"127.0.0.1:{port}",
            "--name", f"c{i}", "--shard", str(i), "--num-shards", "3", "--examples", "150", "--token", TOKEN,
        ]  # fmt: skip

    procs = [
        subprocess.Popen(client_command(i), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(3)
    ]
    summaries = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    # Assert: all clients applied 3 rounds and hold the same bits ...
    assert {s["rounds"] for s in summaries} == {3}
    assert len({s["model_hash"] for s in summaries}) == 1
    # ... which a replica rebuilt from the coordinator's bytes alone matches.
    replica = copy.deepcopy(base)
    engine = ZOEngine(replica, TrainableSet.from_model(replica, include=include))
    rounds = FedKSeedRounds(coordinator.config.params.config, run_key("wire-test"), LogCodec())
    closed = coordinator.store.closed_rounds(-1, 100)
    assert [c.round_index for c in closed] == [0, 1, 2]
    for c in closed:
        assert c.replied_slots == (0, 1, 2)
        assert c.start_hash == model_hash(replica)  # every client started each round from this state
        entries = rounds.aggregate(rounds.plan(c.round_index, c.sample_counts), c.replies(3))
        engine.apply([e.seed for e in entries], [e.coef for e in entries])
    assert model_hash(replica) == summaries[0]["model_hash"] != model_hash(base)
    # The run's end is recorded: all three reported the hash after round 3 on Leave.
    assert coordinator.store.final_hash(3) == (summaries[0]["model_hash"], 3)


def test_a_final_hash_needs_a_finished_run_and_two_agreeing_clients(serve: Any) -> None:
    stub, coordinator, _ = serve(TINY_MANIFEST, clients_per_round=1, rounds=1)
    manifest = serde.manifest_to_proto(TINY_MANIFEST)
    ids = [
        stub.Join(
            pb.JoinRequest(manifest=manifest, num_samples=5, client_name=n), timeout=5, metadata=AUTH
        ).client_id
        for n in ("a", "b", "c")
    ]
    good, other = "sha256:" + "1" * 64, "sha256:" + "2" * 64

    def leave(client_id: int, final_hash: str, rounds: int) -> Any:
        request = pb.LeaveRequest(client_id=client_id, final_hash=final_hash, rounds=rounds)
        return lambda: stub.Leave(request, timeout=5, metadata=AUTH)

    code, details = _code(leave(ids[0], good, 1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "after all 1 rounds closed" in details  # not finished
    coordinator.store.open_round(0, [ids[0]], [5], deadline=1e12)
    coordinator.store.record_reply(0, 0, ids[0], b"\x01\x02\x03", "k", good)
    coordinator.store.close_round(0, 0.0)
    assert _code(leave(ids[0], "sha256:nope", 1))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(leave(ids[0], good, 7))[0] == grpc.StatusCode.INVALID_ARGUMENT  # not every round
    leave(ids[0], good, 1)()
    assert coordinator.store.final_hash(1) == ("", 1)  # one client never defines the end
    leave(ids[1], other, 1)()
    assert coordinator.store.final_hash(1) == ("", 2)  # a tie is no majority
    leave(ids[2], good, 1)()
    assert coordinator.store.final_hash(1) == (good, 3)


@pytest.mark.slow
def test_three_smollm2_clients_learn_together(serve: Any, smollm2: Any) -> None:
    """FedKSeed with a real LM: held-out loss of the federated model falls below the base model's."""
    # Prepare: SmolLM2's label-word sentiment task, final RMSNorm weight trainable.
    base, tokenizer = smollm2
    trainable = TrainableSet.from_model(base, include=[r"^model\.norm\.weight$"])
    manifest = Manifest(
        STREAM_NAME, model_hash(base), "vader-movies/smollm2-label-word", tuple(trainable.names)
    )
    # 2 rounds x 6 steps: enough to move held-out loss well past the margin (3 x 10 moved it
    # 0.307 -> 0.174), at less than half the CI time.
    fedkseed = RunSettings(pool_size=256, local_steps=6, lr=0.1, eps=1e-3)
    _, coordinator, port = serve(manifest, fedkseed=fedkseed, clients_per_round=3, rounds=2)

    def client_command(i: int) -> list[str]:
        return [
            sys.executable, "-m", "fedseed.client.runner", "--coordinator", f"127.0.0.1:{port}", "--model",
            "smollm2", "--name", f"lm{i}", "--shard", str(i), "--num-shards", "3", "--examples", "300",
            "--max-length", "32", "--token", TOKEN,
        ]  # fmt: skip

    # Execute
    procs = [
        subprocess.Popen(client_command(i), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(3)
    ]
    hashes = set()
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
        hashes.add(json.loads(out.strip().splitlines()[-1])["model_hash"])
    # Assert: one model everywhere, rebuilt from the store's bytes, better on held-out data.
    replica = copy.deepcopy(base)
    engine = ZOEngine(replica, TrainableSet.from_model(replica, include=[r"^model\.norm\.weight$"]))
    rounds = FedKSeedRounds(fedkseed, run_key("wire-test"), LogCodec())
    for c in coordinator.store.closed_rounds(-1, 100):
        entries = rounds.aggregate(rounds.plan(c.round_index, c.sample_counts), c.replies(6))
        engine.apply([e.seed for e in entries], [e.coef for e in entries])
    assert hashes == {model_hash(replica)}
    held_out = data.load_vader("movies")[300:428]
    before = tasks.LabelWordTask(base, tokenizer, max_length=32)
    after = tasks.LabelWordTask(replica, tokenizer, max_length=32)
    loss_before = float(tasks.loss(before, before.encode(held_out)))
    loss_after = float(tasks.loss(after, after.encode(held_out)))
    print(f"held-out loss {loss_before:.4f} -> {loss_after:.4f}")
    assert loss_after < loss_before - 0.01, (loss_before, loss_after)


def test_an_overdue_round_without_quorum_waits_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a fake clock; two-client rounds needing both replies.
    now = [1000.0]
    params = RunParams("overdue", RunSettings(pool_size=8, local_steps=3, lr=0.1, eps=0.1))
    config = CoordinatorConfig(params, TINY_MANIFEST, clients_per_round=2, min_replies=2, round_timeout_s=10)
    coordinator = Coordinator(CoordinatorStore(tmp_path / "c.db"), config, clock=lambda: now[0])
    a, _ = coordinator.join("a", TINY_MANIFEST, 5)
    b, _ = coordinator.join("b", TINY_MANIFEST, 5)
    task = coordinator.task(a)
    assert task is not None
    coordinator.submit(a, task.round_index, task.slot, b"\x01\x02\x03", "k", "sha256:" + "1" * 64)
    # Execute: the deadline passes; clients keep polling.
    now[0] += 60
    with caplog.at_level("WARNING", logger="fedseed.server.coordinator"):
        for _ in range(5):
            coordinator.task(b)
    # Assert: still open (one reply < quorum of 2), warned once, and the late reply closes it.
    assert coordinator.store.current_round() is not None
    assert caplog.text.count("deadline passed") == 1
    other = coordinator.task(b)
    assert other is not None
    coordinator.submit(b, other.round_index, other.slot, b"\x04\x05\x06", "k2", "sha256:" + "1" * 64)
    assert coordinator.store.next_round() == 1
