"""The client's training logic as a Flower ``ClientApp`` (Message API, flwr 1.42).

One function, :func:`train`, does a selected client's work for a round
(:meth:`fedseed.local.LocalClient.train_round`): run the scheduled local ZO
steps, return one byte per step, the hash of the state it started from and the
client's score (mean loss), and leave the model at that start state (the round's
agreed update is applied when the round closes). Flower's engines call it
through ``app``; our gRPC runner (:mod:`fedseed.client.runner`) calls the very
same ``app`` through :mod:`fedseed.client.flower_host`.

Message content, both ways (a ``ConfigRecord`` each):

- ``fedseed.task``: ``round``, ``slot``, ``sample_counts`` (list of int);
- ``fedseed.reply``: ``scalars`` (bytes, one per local step), ``start_hash``, ``score`` (float).

A torch model cannot live in Flower's ``Context``, so each process keeps its
loaded client in a small registry keyed by node id (:func:`register`).
"""

from __future__ import annotations

from typing import cast

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedseed.local import LocalClient, RoundResult

TASK_KEY = "fedseed.task"
REPLY_KEY = "fedseed.reply"


_RUNTIMES: dict[int, LocalClient] = {}


def register(node_id: int, runtime: LocalClient) -> None:
    _RUNTIMES[node_id] = runtime


def task_content(round_index: int, slot: int, sample_counts: tuple[int, ...]) -> RecordDict:
    return RecordDict(
        {TASK_KEY: ConfigRecord({"round": round_index, "slot": slot, "sample_counts": list(sample_counts)})}
    )


def reply_from(content: RecordDict) -> RoundResult:
    record = content[REPLY_KEY]
    return RoundResult(
        cast(bytes, record["scalars"]), cast(str, record["start_hash"]), cast(float, record["score"])
    )


app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    runtime = _RUNTIMES.get(context.node_id)
    if runtime is None:
        raise RuntimeError(f"no fedseed client registered for node {context.node_id}")
    task = msg.content[TASK_KEY]
    round_index, slot = cast(int, task["round"]), cast(int, task["slot"])
    result = runtime.train_round(round_index, slot, cast(list[int], task["sample_counts"]))
    reply = RecordDict(
        {REPLY_KEY: ConfigRecord(
            {"scalars": result.scalars, "start_hash": result.start_hash, "score": result.score}
        )}
    )  # fmt: skip
    return Message(reply, reply_to=msg)
