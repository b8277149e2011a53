"""The serialized size of every coordinator message in a typical round (docs/wire-protocol.md's table).

    .venv/bin/python scripts/wire_message_sizes.py

Realistic contents: the example coordinator config's manifest (all-MiniLM-L6-v2's 65
bias/LayerNorm/head tensors), 3 clients per round, 10 local steps, 71-character model hashes,
32-character idempotency keys. Sizes are protobuf bytes (gRPC adds a 5-byte frame header
and HTTP/2 framing per call).
"""

from __future__ import annotations

from pathlib import Path

from fedseed import serde
from fedseed.proto import coordinator_pb2 as pb
from fedseed.server.cli import load_config

REPO = Path(__file__).resolve().parents[1]


def messages() -> dict[str, object]:
    config, _ = load_config(REPO / "deploy" / "configs" / "coordinator.toml")
    manifest = serde.manifest_to_proto(config.manifest)
    model_hash = "sha256:" + "ab" * 32
    steps = 10
    closed = pb.ClosedRound(
        round=4,
        sample_counts=[200] * 3,
        replied_slots=[0, 1, 2],
        scalars=bytes(3 * steps),
        start_hash=model_hash,
    )
    return {
        f"JoinRequest (manifest of {len(config.manifest.trainable)} tensor names)": pb.JoinRequest(
            manifest=manifest, num_samples=200, client_name="client-0", score=0.69
        ),
        "JoinReply": pb.JoinReply(
            client_id=3, next_round=0, params=serde.run_params_to_proto(config.params), total_rounds=5
        ),
        "TaskRequest": pb.TaskRequest(client_id=3, wait_ms=2000),
        "TaskReply, a task (3 slots)": pb.TaskReply(
            task=pb.RoundTask(round=4, slot=1, sample_counts=[200] * 3), next_round=4
        ),
        "TaskReply, wait": pb.TaskReply(retry_after_ms=1000, next_round=4),
        "TaskReply, finished": pb.TaskReply(finished=True, next_round=5),
        f"SubmitRequest ({steps} steps)": pb.SubmitRequest(
            client_id=3,
            round=4,
            slot=1,
            scalars=bytes(range(1, steps + 1)),
            idempotency_key="f" * 32,
            start_hash=model_hash,
            score=0.65,
        ),
        "SubmitReply": pb.SubmitReply(outcome=pb.SubmitReply.ACCEPTED),
        "SyncRequest": pb.SyncRequest(client_id=3, from_round=4, max_rounds=64),
        f"SyncReply (one round, 3 x {steps} B)": pb.SyncReply(rounds=[closed], next_round=5),
        "LeaveRequest": pb.LeaveRequest(client_id=3),
        "StatusReply": pb.StatusReply(
            next_round=5,
            clients=3,
            ledger_entries=50,
            latest_model_hash=model_hash,
            latest_hash_round=4,
            mismatches=1,
        ),
    }


def table() -> str:
    rows = ["| message | bytes |", "| --- | --- |"]
    rows += [f"| {name} | {msg.ByteSize()} |" for name, msg in messages().items()]  # type: ignore[attr-defined]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(table(), end="")
