"""What a late joiner pays to catch up, and what healing costs, by how many rounds it is behind.

    .venv/bin/python bench/catch_up.py                      # 10, 100, 1000 rounds late
    .venv/bin/python bench/catch_up.py --rounds 10 100

A real coordinator (SQLite file, loopback gRPC) runs the example config's settings (K=4096,
10 local steps, 3 clients per round). Its rounds are filled by protocol-level clients calling the
coordinator directly (the bytes are pseudo-random codec bytes: costs do not depend on their
values). Then a real `fedseed client` (MiniLM, its default trainable set) joins through a TCP
proxy that counts every byte at the socket, HTTP/2 framing included, and catches up: Sync
from round 0, each round's ledger step derived from its bytes and applied. Healing is the same
work without the network: base model + every closed round (``Replica.rebuild``).

Writes bench/results/catch_up.json (one row per lag, appended as each finishes).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fault_injection import DelayProxy

from fedseed import data, models, tasks
from fedseed.client.runner import EdgeClient
from fedseed.manifest import build_manifest
from fedseed.proto import coordinator_pb2_grpc as pb_grpc
from fedseed.server.app import create_server, stop_gracefully
from fedseed.server.coordinator import Coordinator, CoordinatorConfig
from fedseed.server.store import CoordinatorStore
from fedseed.settings import RunParams, RunSettings
from fedseed.zo import TrainableSet, ZOEngine

RESULTS = Path(__file__).resolve().parent / "results" / "catch_up.json"
TOKEN = "catch-up"
SETTINGS = RunSettings(pool_size=4096, local_steps=10, lr=0.01, eps=1e-3)
CLIENTS_PER_ROUND = 3


def fill_rounds(coordinator: Coordinator, rounds: int, manifest: Any) -> None:
    """``rounds`` closed rounds of pseudo-random one-byte replies from protocol-level clients."""
    rng = random.Random(0)
    ids = [coordinator.join(f"filler-{i}", manifest, 100)[0] for i in range(CLIENTS_PER_ROUND)]
    for _ in range(rounds):
        for client_id in ids:
            task = coordinator.task(client_id)
            assert task is not None
            payload = rng.randbytes(SETTINGS.local_steps)
            key = f"{client_id}-{task.round_index}"
            coordinator.submit(client_id, task.round_index, task.slot, payload, key, "sha256:" + "0" * 64)
    for client_id in ids:
        coordinator.leave(client_id)


def measure(lag: int, workdir: Path) -> dict[str, Any]:
    model, tokenizer = models.load_sequence_classifier(num_labels=2, init_seed=0)
    trainable = TrainableSet.from_model(model, include=list(models.DEFAULT_TRAINABLE["minilm"]))
    manifest = build_manifest(model, trainable.names, tasks.TASK_IDS["minilm"])
    config = CoordinatorConfig(
        RunParams("catch-up", SETTINGS), manifest, clients_per_round=CLIENTS_PER_ROUND, rounds=lag + 1,
    )  # fmt: skip
    coordinator = Coordinator(CoordinatorStore(workdir / f"lag-{lag}.db"), config)
    fill_rounds(coordinator, lag, manifest)
    server, port, health = create_server(coordinator, token=TOKEN)
    server.start()
    proxy = DelayProxy(port)
    channel = grpc.insecure_channel(f"127.0.0.1:{proxy.port}")
    task = tasks.for_model("minilm", model, tokenizer, 32)
    shard = data.load_vader("movies")[:64]
    client = EdgeClient(pb_grpc.CoordinatorStub(channel), "late", task, ZOEngine(model, trainable), shard,
                        manifest, token=TOKEN)  # fmt: skip
    try:
        started = time.perf_counter()
        client.join()
        joined_at = time.perf_counter()
        up_join, down_join = proxy.bytes["up"], proxy.bytes["down"]
        client.catch_up()
        caught_up = time.perf_counter()
        assert client.applied_rounds == lag
        assert client.replica is not None
        healed_started = time.perf_counter()
        client.replica.rebuild(client.history)
        healed = time.perf_counter() - healed_started
    finally:
        channel.close()
        proxy.close()
        stop_gracefully(server, health, grace_s=1)
    up, down = proxy.bytes["up"], proxy.bytes["down"]
    return {
        "rounds_late": lag, "local_steps": SETTINGS.local_steps, "clients_per_round": CLIENTS_PER_ROUND,
        "join_bytes_up": up_join, "join_bytes_down": down_join,
        "catch_up_bytes_up": up - up_join, "catch_up_bytes_down": down - down_join,
        "catch_up_bytes_per_round": round((up + down - up_join - down_join) / max(1, lag), 1),
        "join_s": round(joined_at - started, 3), "catch_up_s": round(caught_up - joined_at, 3),
        "catch_up_ms_per_round": round(1000 * (caught_up - joined_at) / max(1, lag), 3),
        "heal_s": round(healed, 3), "heal_ms_per_round": round(1000 * healed / max(1, lag), 3),
        "trainable_params": trainable.numel, "torch_threads": torch.get_num_threads(),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if any(r < 1 for r in args.rounds):
        parser.error("--rounds must be >= 1")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for lag in args.rounds:
            row = measure(lag, Path(tmp))
            rows.append(row)
            print(json.dumps(row), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
