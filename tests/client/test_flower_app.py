"""The Flower ClientApp is the client's training logic; our runner hosts that same code."""

from __future__ import annotations

import copy
import inspect
import re
from pathlib import Path
from typing import Any

import flwr
import numpy as np
import pytest
from flwr.app import Metadata

from fedseed import data, tasks
from fedseed.client import FLOWER_VERSION, check_flower_version, flower_app, flower_host
from fedseed.client.flower_app import register, reply_from, task_content
from fedseed.codec import LogCodec
from fedseed.errors import ConfigError
from fedseed.ledger import model_hash
from fedseed.local import LocalClient
from fedseed.rounds import FedKSeedRounds, run_local_round
from fedseed.seeds import run_key
from fedseed.settings import RunSettings
from fedseed.zo import TrainableSet, ZOEngine

REPO = Path(__file__).resolve().parents[2]


def test_a_flower_outside_the_pinned_series_is_one_line() -> None:
    check_flower_version(FLOWER_VERSION.rsplit(".", 1)[0] + ".9")  # a patch release is fine
    with pytest.raises(ConfigError, match=r"need flwr 1\.42\.x, found 1\.43\.0; install the pinned one"):
        check_flower_version("1.43.0")
    pin = re.search(r'"flwr\[simulation\]==([^"]+)"', (REPO / "pyproject.toml").read_text())
    assert pin and pin.group(1) == FLOWER_VERSION


def test_flower_internals_we_rely_on_are_unchanged() -> None:
    # If this fails after a Flower upgrade, revisit fedseed/client/flower_host.py.
    assert flwr.__version__ == flower_host.FLOWER_VERSION
    fields = list(inspect.signature(Metadata.__init__).parameters)
    assert fields[1:10] == ["run_id", "message_id", "src_node_id", "dst_node_id", "reply_to_message_id",
                            "group_id", "created_at", "ttl", "message_type"]  # fmt: skip


def _runtime(base: Any, tokenizer: Any) -> LocalClient:
    model = copy.deepcopy(base)
    engine = ZOEngine(model, TrainableSet.from_model(model, include=["LayerNorm", r"^classifier\."]))
    rounds = FedKSeedRounds(RunSettings(pool_size=32, local_steps=3, lr=1e-2), run_key("flower"), LogCodec())
    shard = data.load_vader("movies")[:40]
    return LocalClient(
        "c1", engine, tasks.SequenceClassificationTask(model, tokenizer, max_length=32), shard, rounds
    )


@pytest.mark.slow
def test_the_client_app_gives_the_bytes_of_a_direct_local_round(minilm: Any) -> None:
    # Prepare: two identical clients; one goes through Flower's ClientApp.
    base, tokenizer = minilm
    via_flower, direct = _runtime(base, tokenizer), _runtime(base, tokenizer)
    register(41, via_flower)
    start_hash = model_hash(via_flower.engine.model)
    # Execute
    content = flower_host.call(flower_app.app, 41, "train", task_content(2, 1, (40, 40)))
    result = reply_from(content)
    plan = direct.rounds.plan(2, (40, 40))
    losses: list[float] = []
    expected = run_local_round(direct.engine, direct.rounds, plan, 1, direct.loss_for(2, 1), losses)
    # Assert: same bytes and score; the app left its model at the round's start state.
    assert result.scalars == expected and len(expected) == 3
    assert result.score == float(np.float32(np.mean(losses)))
    assert result.start_hash == start_hash == model_hash(via_flower.engine.model)


def test_an_unregistered_node_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="no fedseed client for node 999: start the SuperNode with"):
        flower_host.call(flower_app.app, 999, "train", task_content(0, 0, (1,)))
