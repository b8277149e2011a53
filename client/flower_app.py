"""The client's training logic as a Flower ``ClientApp`` (Message API, flwr 1.42).

One function, :func:`train`, does a selected client's work for a round: run
the scheduled local ZO steps, return one byte per step and the hash of the
state it started from, and leave the model at that start state (the round's
agreed update is applied when the round closes). Flower's engines call it
through ``app``; our gRPC runner (:mod:`fedseed.client.runner`) calls the very
same ``app`` through :mod:`fedseed.client.flower_host`.

Message content, both ways (a ``ConfigRecord`` each):

- ``fedseed.task``: ``round``, ``slot``, ``sample_counts`` (list of int);
- ``fedseed.reply``: ``scalars`` (bytes, one per local step), ``start_hash``.

A torch model cannot live in Flower's ``Context``, so each process keeps its
loaded client in a small registry keyed by node id (:func:`register`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedseed import data, tasks
from fedseed.ledger import model_hash
from fedseed.rounds import FedKSeedRounds, run_local_round
from fedseed.zo import ZOEngine

TASK_KEY = "fedseed.task"
REPLY_KEY = "fedseed.reply"


@dataclass
class ClientRuntime:
    """What a client process holds: its model (through the engine), task, data and run logic."""

    engine: ZOEngine
    task: tasks.Task
    shard: list[data.Example]
    rounds: FedKSeedRounds
    batch_size: int = 8

    def loss_for(self, round_index: int, slot: int) -> Callable[[int], Callable[[], torch.Tensor]]:
        """Minibatches for (round, slot): deterministic, so the same run gives the same bytes."""
        order = np.random.Generator(np.random.PCG64([round_index, slot, len(self.shard)]))

        def for_step(step: int) -> Callable[[], torch.Tensor]:
            picks = order.choice(len(self.shard), min(self.batch_size, len(self.shard)), replace=False)
            encoded = self.task.encode([self.shard[i] for i in picks])
            return lambda: tasks.loss(self.task, encoded)

        return for_step


_RUNTIMES: dict[int, ClientRuntime] = {}


def register(node_id: int, runtime: ClientRuntime) -> None:
    _RUNTIMES[node_id] = runtime


def task_content(round_index: int, slot: int, sample_counts: tuple[int, ...]) -> RecordDict:
    return RecordDict(
        {TASK_KEY: ConfigRecord({"round": round_index, "slot": slot, "sample_counts": list(sample_counts)})}
    )


def reply_from(content: RecordDict) -> tuple[bytes, str]:
    record = content[REPLY_KEY]
    return cast(bytes, record["scalars"]), cast(str, record["start_hash"])


app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    runtime = _RUNTIMES.get(context.node_id)
    if runtime is None:
        raise RuntimeError(f"no fedseed client registered for node {context.node_id}")
    task = msg.content[TASK_KEY]
    round_index, slot = cast(int, task["round"]), cast(int, task["slot"])
    plan = runtime.rounds.plan(round_index, tuple(cast(list[int], task["sample_counts"])))
    start = runtime.engine.snapshot()
    start_hash = model_hash(runtime.engine.model)
    payload = run_local_round(runtime.engine, runtime.rounds, plan, slot, runtime.loss_for(round_index, slot))
    runtime.engine.restore(start)
    reply = RecordDict({REPLY_KEY: ConfigRecord({"scalars": payload, "start_hash": start_hash})})
    return Message(reply, reply_to=msg)
