"""How much one coordinator holds: many lightweight clients on loopback, 2 cores.

    .venv/bin/python bench/coordinator_load.py --clients 100 1000

The coordinator runs as its own process (`fedseed coordinator`, SQLite file,
token auth), as deployed. The clients are asyncio coroutines in this process
(grpc.aio): each joins, polls for a task (honouring ``retry_after_ms``, at
least ``--poll-s`` with jitter), and when selected submits ``local_steps``
pseudo-random bytes at once (no model: this measures the coordinator, not
training). Reported per client count: rounds closed per second and the p50 /
p99 round time (open to close, as seen through Status), which with instant
clients is pure coordination overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedseed import serde
from fedseed.manifest import Manifest, manifest_toml
from fedseed.perturb.stream import STREAM_NAME
from fedseed.proto import coordinator_pb2 as pb
from fedseed.proto import coordinator_pb2_grpc as pb_grpc
from fedseed.server.probe import probe

TOKEN = "load-test"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
MANIFEST = Manifest(STREAM_NAME, "sha256:" + "0" * 64, "load", ("w",))


async def client(
    stub: pb_grpc.CoordinatorStub, name: str, steps: int, poll_s: float, stop: asyncio.Event
) -> None:
    rng = random.Random(name)
    joined = await stub.Join(
        pb.JoinRequest(manifest=serde.manifest_to_proto(MANIFEST), num_samples=10, client_name=name),
        metadata=AUTH,
    )
    while not stop.is_set():
        reply = await stub.GetTask(pb.TaskRequest(client_id=joined.client_id, wait_ms=0), metadata=AUTH)
        kind = reply.WhichOneof("kind")
        if kind == "finished":
            return
        if kind == "task":
            await stub.Submit(pb.SubmitRequest(
                client_id=joined.client_id, round=reply.task.round, slot=reply.task.slot,
                scalars=rng.randbytes(steps), idempotency_key=f"{name}-{reply.task.round}",
                start_hash="sha256:" + "0" * 64,
            ), metadata=AUTH)  # fmt: skip
            continue
        await asyncio.sleep(max(reply.retry_after_ms / 1000, poll_s) * (0.5 + rng.random()))


async def run(clients: int, rounds: int, per_round: int, steps: int, poll_s: float, port: int) -> list[float]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(client(stub, f"c{i:05d}", steps, poll_s, stop)) for i in range(clients)]
        closes, last = [], -1
        while True:
            status = await stub.Status(pb.StatusRequest(), metadata=AUTH)
            if status.next_round != last:
                closes.append(time.perf_counter())
                last = status.next_round
            if status.next_round >= rounds:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return [b - a for a, b in itertools.pairwise(closes)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--local-steps", type=int, default=200)
    parser.add_argument("--poll-s", type=float, default=1.0, help="unselected clients poll about this often")
    parser.add_argument(
        "--time-limit-s", type=float, default=300.0, help="per client count; then it is reported"
    )
    args = parser.parse_args()
    print("| clients | rounds/s | p50 round | p99 round |\n|---|---|---|---|")
    for n in args.clients:
        with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            s.close()
            config = Path(tmp) / "c.toml"
            config.write_text(
                f'[run]\nname = "load"\npool_size = 4096\nlocal_steps = {args.local_steps}\nlr = 1e-6\n'
                f"eps = 1e-3\nrounds = {args.rounds}\nclients_per_round = {args.per_round}\n"
                f'round_timeout_s = 600\n\n[server]\ntoken_env = "FEDSEED_TOKEN"\nlinger_s = 1\n\n'
                + manifest_toml(MANIFEST)
            )
            server = subprocess.Popen(
                [sys.executable, "-m", "fedseed", "coordinator", "--config", str(config), "--address",
                 f"127.0.0.1:{port}", "--database", str(Path(tmp) / "c.db")],
                env={**os.environ, "FEDSEED_TOKEN": TOKEN}, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            up_by = time.monotonic() + 60  # start-up: until the health service answers
            while not probe(f"127.0.0.1:{port}") and time.monotonic() < up_by:
                time.sleep(0.2)
            start = time.perf_counter()
            try:
                load = run(n, args.rounds, args.per_round, args.local_steps, args.poll_s, port)
                durations = asyncio.run(asyncio.wait_for(load, args.time_limit_s))
            except TimeoutError:
                durations = []
            finally:
                server.terminate()
                server.wait(timeout=30)
            elapsed = time.perf_counter() - start
        if len(durations) < 2:  # a stalled coordinator is a result, not a hang
            print(
                f"| {n} | did not finish {args.rounds} rounds in {args.time_limit_s:.0f} s | - | - |",
                flush=True,
            )
            continue
        q = statistics.quantiles(durations, n=100)
        print(f"| {n} | {len(durations) / elapsed:.2f} | {statistics.median(durations) * 1e3:.0f} ms "
              f"| {q[98] * 1e3:.0f} ms |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
