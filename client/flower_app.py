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

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedseed import serde, simulate
from fedseed.local import LocalClient, RoundResult
from fedseed.replica import Replica
from fedseed.rounds import ClosedRound

TASK_KEY = "fedseed.task"
REPLY_KEY = "fedseed.reply"
JOIN_KEY = "fedseed.join"
CURRICULUM_KEY = "fedseed.curriculum"  # a node's curriculum state in its Flower Context
# Flower's simulation engine runs this app in Ray workers: they build their clients
# from the simulation config the driver puts here (JSON of a SimulationConfig).
CONFIG_ENV = "FEDSEED_SIMULATION_CONFIG"
# On Flower's Deployment Engine: the SuperNode's node config names the config file instead.
NODE_CONFIG_KEY = "simulation-config"

_RUNTIMES: dict[int, LocalClient] = {}


def register(node_id: int, runtime: LocalClient) -> None:
    _RUNTIMES[node_id] = runtime


@dataclass
class _SharedModel:
    """One model per worker process, shared by the virtual clients it runs (as the simulator)."""

    setup: simulate.SimulationSetup
    replica: Replica = field(init=False)

    def __post_init__(self) -> None:
        # The worker's clients plan with the same round state the replica advances.
        self.replica = Replica(self.setup.rounds, self.setup.engine)

    def catch_up(self, history: Sequence[ClosedRound]) -> None:
        """Apply the closed rounds this copy has not applied yet (the run's ledger, as bytes)."""
        self.replica.apply_new(history)


_SHARED: dict[str, _SharedModel] = {}


def _simulation_client(context: Context) -> tuple[LocalClient, _SharedModel]:
    """This node's client for its partition, built from the run's simulation config.

    The config comes from the driver (Flower's Simulation Engine: JSON in ``CONFIG_ENV``) or,
    on Flower's Deployment Engine, from the SuperNode's node config: ``simulation-config`` (the
    path of a simulation TOML on that machine) and ``partition-id`` (which client it is)."""
    raw = os.environ.get(CONFIG_ENV)
    path = context.node_config.get(NODE_CONFIG_KEY)
    if raw is None and path is None:
        raise RuntimeError(
            f"no fedseed client for node {context.node_id}: start the SuperNode with "
            f"--node-config \"partition-id=I {NODE_CONFIG_KEY}='PATH.toml'\""
        )
    key = raw if raw is not None else f"path:{path}"
    shared = _SHARED.get(key)
    if shared is None:
        if raw is not None:
            config = simulate.config_from_dict(json.loads(raw))
        else:
            config = dataclasses.replace(simulate.load_config(Path(str(path))), engine="inprocess")
        shared = _SHARED[key] = _SharedModel(simulate.build(config))
    return shared.setup.clients[int(context.node_config["partition-id"])], shared


def task_content(
    round_index: int, slot: int, sample_counts: tuple[int, ...], history: Sequence[ClosedRound] = ()
) -> RecordDict:
    record = ConfigRecord({
        "round": round_index, "slot": slot, "sample_counts": list(sample_counts),
        "history": [serde.closed_round_to_bytes(c) for c in history],
    })  # fmt: skip
    return RecordDict({TASK_KEY: record})


def reply_from(content: RecordDict) -> RoundResult:
    record = content[REPLY_KEY]
    return RoundResult(
        cast(bytes, record["scalars"]), cast(str, record["start_hash"]), cast(float, record["score"])
    )


app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    task = msg.content[TASK_KEY]
    runtime = _RUNTIMES.get(context.node_id)
    hosted = runtime is not None
    if runtime is None:
        runtime, shared = _simulation_client(context)
        history = [serde.closed_round_from_bytes(b) for b in cast(list[bytes], task.get("history", []))]
        shared.catch_up(history)
        _restore_curriculum(runtime, context)
    round_index, slot = cast(int, task["round"]), cast(int, task["slot"])
    result = runtime.train_round(round_index, slot, cast(list[int], task["sample_counts"]))
    if not hosted:
        _keep_curriculum(runtime, context)
    reply = RecordDict(
        {REPLY_KEY: ConfigRecord(
            {"scalars": result.scalars, "start_hash": result.start_hash, "score": result.score, "slot": slot}
        )}
    )  # fmt: skip
    return Message(reply, reply_to=msg)


def _keep_curriculum(runtime: LocalClient, context: Context) -> None:
    """A loss-scored order lives in the node's Context, which Flower keeps for the run: on the
    Deployment Engine each message may run in a fresh ClientApp process, and scoring again
    under a later model would give another order (and other bytes) than every other path."""
    state = runtime.curriculum.state()
    if state is not None:
        order, scored_round = state
        context.state[CURRICULUM_KEY] = ConfigRecord({"order": order, "scored_round": scored_round})


def _restore_curriculum(runtime: LocalClient, context: Context) -> None:
    if CURRICULUM_KEY in context.state:
        record = context.state[CURRICULUM_KEY]
        runtime.curriculum.restore(cast(list[int], record["order"]), cast(int, record["scored_round"]))


@app.query()
def join(msg: Message, context: Context) -> Message:
    """What a gRPC client sends in Join: its name, sample count and score (mean loss)."""
    runtime = _RUNTIMES.get(context.node_id) or _simulation_client(context)[0]
    content: dict[str, str | int | float] = {"name": runtime.name, "num_samples": runtime.num_samples}
    if cast(bool, msg.content[JOIN_KEY].get("score", False)):
        content["score"] = runtime.initial_score()
    return Message(RecordDict({JOIN_KEY: ConfigRecord(dict(content))}), reply_to=msg)
