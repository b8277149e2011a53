"""Bytes on the wire per client per round, counted at the socket and per message.

    .venv/bin/python bench/wire_bytes.py            # K=4096, 200 local steps, 10 clients per round

A real coordinator (SQLite file, loopback gRPC) and lightweight protocol
clients: each joins, long-polls its task, submits one byte per local step,
and syncs the closed round (the bytes every participant needs to derive the
round's update). Every client has its own TCP connection through a
byte-counting relay in front of the coordinator, so the headline figure is
what crossed the socket: TCP payload with HTTP/2 framing, gRPC headers,
pings and window updates (not TCP/IP headers). Beside it, per method, the
coordinator's metrics interceptor's serialized protobuf sizes. The payload bytes here are
pseudo-random: sizes do not depend on their values, and no model is needed
to count them. FedKSeed's own figure for the same setting is 17,984 B per
client per round (K float32 totals down, 200 (index, value) pairs up).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fault_injection import DelayProxy

from fedseed import serde
from fedseed.manifest import Manifest
from fedseed.perturb.stream import STREAM_NAME
from fedseed.proto import coordinator_pb2 as pb
from fedseed.proto import coordinator_pb2_grpc as pb_grpc
from fedseed.server.app import create_server, stop_gracefully
from fedseed.server.coordinator import Coordinator, CoordinatorConfig
from fedseed.server.store import CoordinatorStore
from fedseed.settings import RunParams, RunSettings

MANIFEST = Manifest(STREAM_NAME, "sha256:" + "0" * 64, "bench", tuple(f"layer.{i}.weight" for i in range(4)))


def client(stub: pb_grpc.CoordinatorStub, name: str, local_steps: int, rounds: int) -> None:
    rng = random.Random(name)
    joined = stub.Join(
        pb.JoinRequest(manifest=serde.manifest_to_proto(MANIFEST), num_samples=100, client_name=name)
    )
    applied = 0
    while applied < rounds:
        reply = stub.GetTask(pb.TaskRequest(client_id=joined.client_id, wait_ms=2000))
        if reply.WhichOneof("kind") == "task" and reply.task.round == applied:
            payload = bytes(rng.randrange(256) for _ in range(local_steps))
            stub.Submit(pb.SubmitRequest(
                client_id=joined.client_id, round=reply.task.round, slot=reply.task.slot, scalars=payload,
                idempotency_key=f"{name}-{applied}", start_hash="sha256:" + "1" * 64,
            ))  # fmt: skip
        while True:  # catch up: fetch closed rounds not yet applied
            synced = stub.Sync(pb.SyncRequest(client_id=joined.client_id, from_round=applied))
            applied += len(synced.rounds)
            if not synced.rounds:
                break
        if reply.WhichOneof("kind") == "finished":
            break


def measure(pool_size: int, local_steps: int, clients: int, rounds: int) -> dict[str, float]:
    """One run of the coordinator with protocol clients: bytes per client per round."""
    params = RunParams("wire-bytes", RunSettings(pool_size, local_steps, 1e-6, 1e-3))
    config = CoordinatorConfig(params, MANIFEST, clients_per_round=clients, rounds=rounds)
    with tempfile.TemporaryDirectory() as tmp:
        coordinator = Coordinator(CoordinatorStore(Path(tmp) / "bench.db"), config)
        server, port, health = create_server(coordinator, max_workers=clients * 2 + 4)
        server.start()
        relay = DelayProxy(port)  # no delay: it only counts the bytes each way
        # One channel (one TCP connection) per client, as separate machines would have.
        channels = [
            grpc.insecure_channel(f"127.0.0.1:{relay.port}", options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(clients)
        ]
        threads = [
            threading.Thread(
                target=client, args=(pb_grpc.CoordinatorStub(channels[i]), f"c{i:03d}", local_steps, rounds)
            )
            for i in range(clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for channel in channels:
            channel.close()
        stop_gracefully(server, health, grace_s=1)
        relay.close()

    def counted(method: str, direction: str) -> float:
        value = coordinator.metrics.registry.get_sample_value(
            "fedseed_rpc_bytes_total", {"method": method, "direction": direction}
        )
        return value or 0.0

    per = clients * rounds
    figures = {f"{m}_{d}": counted(m, d) / per for m in METHODS for d in ("up", "down")}
    figures |= {"socket_up": relay.bytes["up"] / per, "socket_down": relay.bytes["down"] / per}
    return figures


METHODS = ["GetTask", "Join", "Submit", "Sync"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pool-size", type=int, default=4096)
    parser.add_argument("--local-steps", type=int, default=200)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    figures = measure(args.pool_size, args.local_steps, args.clients, args.rounds)
    print(f"K={args.pool_size}, {args.local_steps} local steps, {args.clients} clients per round, "
          f"{args.rounds} rounds; bytes per client per round:")  # fmt: skip
    print("| method | up | down |\n|---|---|---|")
    for method in METHODS:
        print(f"| {method} | {figures[method + '_up']:.0f} | {figures[method + '_down']:.0f} |")
    up = sum(figures[m + "_up"] for m in METHODS)
    down = sum(figures[m + "_down"] for m in METHODS)
    print(f"| **total (protobuf)** | **{up:.0f}** | **{down:.0f}** |")
    socket_up, socket_down = figures["socket_up"], figures["socket_down"]
    print(f"| **at the socket** | **{socket_up:.0f}** | **{socket_down:.0f}** |")
    print(f"up + down at the socket: {socket_up + socket_down:.0f} B per client per round "
          f"(protobuf only: {up + down:.0f} B; FedKSeed: 17,984 B of payload; the connection set-up "
          "and Join are counted once per client, spread over the rounds)")  # fmt: skip


if __name__ == "__main__":
    main()
