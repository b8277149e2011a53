"""kill -9 the coordinator at random moments, many times over: no acknowledged reply is lost.

    .venv/bin/python bench/fault_injection.py --trials 30        # the closing note's figure
    (tests/server/test_fault_injection.py runs 3 trials in CI)

Each trial: a coordinator process (`fedseed coordinator`, SQLite file) and 4 lightweight
protocol clients (threads, no model) whose reply bytes derive from (name, round). Rounds need
every selected client's reply, so an uninterrupted run's closed rounds are fully determined.
A killer sends SIGKILL at 1-3 random moments (seeded), each time restarting the coordinator on
the same database and port; clients retry through the outage with the same idempotency key.
``--delay-ms`` puts a TCP proxy between clients and coordinator that delays every chunk.

Checked per trial: every reply a client saw acknowledged (ACCEPTED or DUPLICATE) is in the
database with its bytes; the closed rounds (hence the ledger and every replica's model hash)
equal the uninterrupted reference run's; the database passes SQLite's integrity check.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedseed import serde
from fedseed.manifest import Manifest, manifest_toml
from fedseed.perturb.stream import STREAM_NAME
from fedseed.proto import coordinator_pb2 as pb
from fedseed.proto import coordinator_pb2_grpc as pb_grpc

TOKEN = "fault-injection"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
MANIFEST = Manifest(STREAM_NAME, "sha256:" + "0" * 64, "faults", ("w",))
ROUNDS, CLIENTS, PER_ROUND, STEPS = 10, 4, 3, 4
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _config(path: Path) -> Path:
    config = path / "coordinator.toml"
    config.write_text(
        f'[run]\nname = "faults"\npool_size = 64\nlocal_steps = {STEPS}\nlr = 0.01\neps = 0.001\n'
        f"rounds = {ROUNDS}\nclients_per_round = {PER_ROUND}\nmin_replies = {PER_ROUND}\n"
        f"min_clients = {CLIENTS}\nround_timeout_s = 600\n\n[server]\nlinger_s = 2\n\n"
        + manifest_toml(MANIFEST)
    )
    return config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Coordinator:
    def __init__(self, config: Path, db: Path, port: int) -> None:
        self.command = [sys.executable, "-m", "fedseed", "coordinator", "--config", str(config),
                        "--address", f"127.0.0.1:{port}", "--database", str(db)]  # fmt: skip
        self.env = {**os.environ, "FEDSEED_TOKEN": TOKEN}
        self.proc = self.start()

    def start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.command, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def kill_and_restart(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = self.start()


class DelayProxy:
    """A TCP proxy on loopback that holds every chunk for ``delay_s`` in each direction (a slow link).

    It also counts the bytes each way (``up``: towards the target), framing included."""

    def __init__(self, target_port: int, delay_s: float = 0.0) -> None:
        self.target_port, self.delay_s = target_port, delay_s
        self.bytes = {"up": 0, "down": 0}
        self._count_lock = threading.Lock()  # every connection's pumps add to the same counts
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:  # the coordinator is down: the client sees a reset and retries
                downstream.close()
                continue
            for src, dst, direction in ((downstream, upstream, "up"), (upstream, downstream, "down")):
                threading.Thread(target=self._pump, args=(src, dst, direction), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while chunk := src.recv(65536):
                with self._count_lock:
                    self.bytes[direction] += len(chunk)
                if self.delay_s:
                    time.sleep(self.delay_s)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed.set()
        self.listener.close()


def _call(method: Any, request: Any, stop: threading.Event) -> Any:
    while not stop.is_set():
        try:
            return method(request, timeout=5, metadata=AUTH)
        except grpc.RpcError as exc:
            if exc.code() not in RETRYABLE:
                raise
            time.sleep(0.05)
    return None


def client(port: int, name: str, acked: list[tuple[int, int, bytes]], stop: threading.Event) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        request = pb.JoinRequest(manifest=serde.manifest_to_proto(MANIFEST), num_samples=10, client_name=name)
        joined = _call(stub.Join, request, stop)
        while joined is not None and not stop.is_set():
            reply = _call(stub.GetTask, pb.TaskRequest(client_id=joined.client_id, wait_ms=0), stop)
            if reply is None or reply.WhichOneof("kind") == "finished":
                return
            if reply.WhichOneof("kind") != "task":
                time.sleep(0.05)
                continue
            task = reply.task
            scalars = random.Random(f"{name}-{task.round}").randbytes(STEPS)
            submit = pb.SubmitRequest(client_id=joined.client_id, round=task.round, slot=task.slot,
                                      scalars=scalars, idempotency_key=f"{name}-{task.round}",
                                      start_hash="sha256:" + "1" * 64)  # fmt: skip
            outcome = _call(stub.Submit, submit, stop)
            if outcome is not None and outcome.outcome in (pb.SubmitReply.ACCEPTED, pb.SubmitReply.DUPLICATE):
                acked.append((task.round, task.slot, scalars))


def _closed_rounds(db: Path) -> list[tuple[int, str, str, bytes]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rounds = conn.execute(
            "SELECT round, sample_counts, replied_slots FROM rounds WHERE closed = 1 ORDER BY round"
        )
        out = []
        for r, counts, slots in rounds.fetchall():
            payload = b"".join(
                bytes(b)
                for (b,) in conn.execute("SELECT scalars FROM replies WHERE round = ? ORDER BY slot", (r,))
            )
            out.append((r, counts, slots, payload))
        return out


def _stored(db: Path) -> set[tuple[int, int, bytes]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {(r, s, bytes(b)) for r, s, b in conn.execute("SELECT round, slot, scalars FROM replies")}


def trial(workdir: Path, seed: int | None, timeout_s: float = 120.0, delay_ms: float = 0.0) -> dict[str, Any]:
    """One run; ``seed`` None = the uninterrupted reference; ``delay_ms``: clients talk through
    a proxy that delays every chunk by that much each way."""
    workdir.mkdir(parents=True, exist_ok=True)
    db, port = workdir / "coordinator.db", _free_port()
    coordinator = Coordinator(_config(workdir), db, port)
    proxy = DelayProxy(port, delay_ms / 1000) if delay_ms else None
    client_port = proxy.port if proxy else port
    stop, acked = threading.Event(), []  # type: ignore[var-annotated]
    threads = [
        threading.Thread(target=client, args=(client_port, f"c{i}", acked, stop)) for i in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    rng = random.Random(seed)
    kills = 0 if seed is None else rng.randint(1, 3)
    started = time.monotonic()
    for moment in sorted(rng.uniform(1.0, 6.0) for _ in range(kills)):
        time.sleep(max(0.0, started + moment - time.monotonic()))
        if coordinator.proc.poll() is not None:
            break  # the run already finished
        coordinator.kill_and_restart()
    deadline = time.monotonic() + timeout_s
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    stop.set()
    coordinator.proc.wait(timeout=30)
    if proxy:
        proxy.close()
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    return {"seed": seed, "kills": kills, "delay_ms": delay_ms, "acked": len(acked),
            "lost": len(set(acked) - _stored(db)),
            "closed_rounds": _closed_rounds(db), "integrity": integrity,
            "seconds": time.monotonic() - started}  # fmt: skip


def run_trials(trials: int, first_seed: int = 0, delay_ms: float = 0.0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        reference = trial(Path(tmp) / "reference", None)
        assert len(reference["closed_rounds"]) == ROUNDS, "the reference run did not finish"
        results = []
        for seed in range(first_seed, first_seed + trials):
            result = trial(Path(tmp) / f"trial-{seed}", seed, delay_ms=delay_ms)
            result["same_ledger"] = result.pop("closed_rounds") == reference["closed_rounds"]
            results.append(result)
    return {
        "trials": trials, "delay_ms": delay_ms, "kills": sum(r["kills"] for r in results),
        "acknowledged": sum(r["acked"] for r in results), "lost": sum(r["lost"] for r in results),
        "different_ledgers": sum(not r["same_ledger"] for r in results),
        "integrity_failures": sum(r["integrity"] != "ok" for r in results), "runs": results,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="clients talk through a slow proxy")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "fault_injection.json"))
    args = parser.parse_args()
    summary = run_trials(args.trials, delay_ms=args.delay_ms)
    Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}))
    return 0 if summary["lost"] == summary["different_ledgers"] == summary["integrity_failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
