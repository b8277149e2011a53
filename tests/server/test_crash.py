"""kill -9 the coordinator mid-round, restart it on the same database: nothing lost or doubled."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fedseed.export import export_run
from fedseed.manifest import build_manifest, manifest_toml
from fedseed.models import DEFAULT_TRAINABLE
from fedseed.zo import TrainableSet

TOKEN = "crash-test-token"
# Every run setting away from its default (fedseed.settings.RunSettings), so that a restart
# that dropped one would refuse the run or replay it under other rules. dp_noise stays 0:
# its noise comes from the OS CSPRNG, so two runs could not end at the same hash.
NON_DEFAULT_SETTINGS = (
    "pool_size = 64\nlocal_steps = 3\nlr = 0.02\neps = 0.002\nimportance = true\nclip_factor = 4.0\n"
    'replicas = 3\naggregator = "median"\ntrim = 0.2\nreject_anomaly = 50.0\ndp_clip = 20.0\n'
    'directions = 2\nestimator = "sign"\nmomentum = 0.5\nmask_fraction = 0.5\n'
)
FEDSEED = [sys.executable, "-m", "fedseed"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp_path: Path, manifest_block: str) -> Path:
    path = tmp_path / "coordinator.toml"
    path.write_text(
        '[run]\nname = "crash-test"\n'
        + NON_DEFAULT_SETTINGS
        + "rounds = 4\nclients_per_round = 3\nmin_replies = 3\nround_timeout_s = 300\n\n"
        '[server]\ntoken_env = "FEDSEED_TOKEN"\nlinger_s = 3\n\n' + manifest_block
    )
    return path


def _replies(db: Path) -> list[tuple[int, int, bytes]]:
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        try:
            return [(r, s, bytes(b)) for r, s, b in conn.execute("SELECT round, slot, scalars FROM replies")]
        except sqlite3.OperationalError:  # tables not created yet
            return []


def _federation(tmp_path: Path, config: Path, db: Path, crash: bool) -> list[dict[str, Any]]:
    port = _free_port()
    env = {**os.environ, "FEDSEED_TOKEN": TOKEN}
    coordinator_cmd = [*FEDSEED, "coordinator", "--config", str(config),
                       "--address", f"127.0.0.1:{port}", "--database", str(db)]  # fmt: skip
    coordinator = subprocess.Popen(coordinator_cmd, env=env, stderr=subprocess.DEVNULL)

    def client_command(i: int) -> list[str]:
        return [
            *FEDSEED, "client", "--coordinator", f"127.0.0.1:{port}", "--name", f"c{i}", "--shard", str(i),
            "--num-shards", "3", "--examples", "150", "--token", TOKEN,
        ]  # fmt: skip

    clients = [
        subprocess.Popen(client_command(i), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(3)
    ]
    if crash:  # wait until round 1 holds some but not all replies, then kill -9
        deadline = time.monotonic() + 300
        while not any(r == 1 for r, _, _ in _replies(db)):
            assert time.monotonic() < deadline, "round 1 never got a reply"
            time.sleep(0.05)
        coordinator.send_signal(signal.SIGKILL)
        coordinator.wait()
        time.sleep(1.0)  # clients now see UNAVAILABLE and back off
        coordinator = subprocess.Popen(coordinator_cmd, env=env, stderr=subprocess.DEVNULL)
    summaries = []
    for proc in clients:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    assert coordinator.wait(timeout=60) == 0
    return summaries


@pytest.mark.slow
def test_a_killed_coordinator_restarts_and_the_run_ends_as_if_nothing_happened(
    tmp_path: Path, minilm: Any
) -> None:
    # Prepare: the run's manifest from the clients' base model.
    base, _ = minilm
    trainable = TrainableSet.from_model(base, include=list(DEFAULT_TRAINABLE["minilm"]))
    config = _config(
        tmp_path, manifest_toml(build_manifest(base, trainable.names, "vader-movies/minilm-seqcls"))
    )
    # Execute: the same run twice, the second with a kill -9 mid-round.
    calm = _federation(tmp_path, config, tmp_path / "calm.db", crash=False)
    crashed = _federation(tmp_path, config, tmp_path / "crashed.db", crash=True)
    # Assert: same final model everywhere, and the same recorded bytes, each once.
    assert {s["rounds"] for s in calm + crashed} == {4}
    assert len({s["model_hash"] for s in calm + crashed}) == 1
    assert sorted(_replies(tmp_path / "calm.db")) == sorted(_replies(tmp_path / "crashed.db"))
    assert len(_replies(tmp_path / "crashed.db")) == 4 * 3
    # ... and the restarted coordinator's database rebuilds that very model under the run's rules.
    report = export_run(tmp_path / "crashed.db", tmp_path / "exported", progress=False)
    assert report.model_hash == crashed[0]["model_hash"] and report.rounds == 4
    assert report.verified_at == 4  # the clients reported the final hash: the last round is verified too
