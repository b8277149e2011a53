"""One run, four ways: the in-process simulator, Flower's Simulation Engine (Ray), a real
coordinator with client processes, and Flower's Deployment Engine (a SuperLink, one
SuperNode per client and ``flwr run`` of deploy/flower).

Same config (scores drive selection, a loss-scored data curriculum paces each
client) -> the same ledger, entry for entry, and the same final model hash.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedseed import simulate
from fedseed.client import flower_sim
from fedseed.codec import LogCodec
from fedseed.export import export_run
from fedseed.ledger import Ledger, LedgerEntry
from fedseed.manifest import build_manifest
from fedseed.report import status as report_status
from fedseed.rounds import FedKSeedRounds
from fedseed.runs import open_run
from fedseed.seeds import run_key
from fedseed.server.app import create_server, stop_gracefully
from fedseed.server.coordinator import Coordinator, CoordinatorConfig
from fedseed.server.store import CoordinatorStore
from fedseed.settings import RunParams
from tests.flower_federation import HAVE_FLOWER_CLI, federation, flwr_run

CONFIG = """
run_name = "equivalence"
model = "minilm"
dataset = "vader-movies"
examples = 90
test_size = 16
num_clients = 3
clients_per_round = 2
rounds = 3
local_steps = 3
pool_size = 64
lr = 0.01
batch_size = 4
max_length = 24
eval_every = 3
threads = 1

[partition]
scheme = "dirichlet"
alpha = 0.5

[curriculum]
ordering = "curriculum"
scoring = "loss"
min_samples = 4

[selection]
policy = "power-of-choice"
candidates = 3
"""


def _client_command(port: int, config_path: Path, index: int) -> list[str]:
    return [
        sys.executable, "-m", "fedseed.client.runner", "--coordinator", f"127.0.0.1:{port}",
        "--config", str(config_path), "--client-index", str(index),
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_FLOWER_CLI, reason="no Flower CLI")
def test_four_paths_give_the_same_ledger_and_hash(tmp_path: Path) -> None:
    # Prepare: one config file for both ways.
    config_path = tmp_path / "sim.toml"
    config_path.write_text(CONFIG)
    config = simulate.load_config(config_path, {"out_dir": str(tmp_path / "runs"), "progress": False})
    # Execute 1: the simulator.
    report = simulate.run_simulation(config)
    sim_ledger = list(Ledger.load(report.run_dir / "ledger.jsonl").entries)
    # Execute 2: a coordinator on loopback and three client processes built from the same file.
    _, engine = simulate.build_model(config)
    manifest = build_manifest(engine.model, engine.trainable.names, simulate.task_id(config))
    coordinator_config = CoordinatorConfig(
        params=RunParams(config.run_name, config.fedkseed), manifest=manifest,
        clients_per_round=config.clients_per_round, min_replies=config.clients_per_round,
        rounds=config.rounds, round_timeout_s=600, selection=config.selection, min_clients=config.num_clients,
    )  # fmt: skip
    coordinator = Coordinator(CoordinatorStore(tmp_path / "coordinator.db"), coordinator_config)
    server, port, health = create_server(coordinator)
    server.start()
    try:
        procs = [
            subprocess.Popen(
                _client_command(port, config_path, i),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(config.num_clients)
        ]
        summaries = []
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-3000:]
            summaries.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        stop_gracefully(server, health, grace_s=1)
    # Execute 3: Flower's Simulation Engine, the same ClientApp in Ray workers.
    flower = simulate.load_config(config_path, {"out_dir": str(tmp_path / "flower"), "progress": False})
    flower_report = flower_sim.run(flower)
    flower_ledger = list(Ledger.load(flower_report.run_dir / "ledger.jsonl").entries)
    # Execute 4: Flower's Deployment Engine, one SuperNode per client, the same config file.
    with federation(tmp_path / "deploy", config_path, config.num_clients) as env:
        deployed_dir = flwr_run(env, config_path, tmp_path / "deployed", tmp_path / "deploy")
    deployed_ledger = list(Ledger.load(deployed_dir / "ledger.jsonl").entries)
    deployed_hash = json.loads((deployed_dir / "summary.json").read_text())["final_hash"]
    # The coordinator's ledger: derived from its stored reply bytes alone.
    rounds = FedKSeedRounds(config.fedkseed, run_key(config.run_name), LogCodec())
    wire_ledger: list[LedgerEntry] = []
    for closed in coordinator.store.closed_rounds(-1, 100):
        plan = rounds.plan(closed.round_index, closed.sample_counts)
        wire_ledger += rounds.aggregate(plan, closed.replies(config.local_steps))
    # Assert
    assert len(sim_ledger) > 0
    assert wire_ledger == sim_ledger == flower_ledger == deployed_ledger
    assert {s["model_hash"] for s in summaries} == {report.final_hash} == {flower_report.final_hash}
    assert deployed_hash == report.final_hash
    assert report.final_hash != report.base_hash
    # The coordinator's database alone rebuilds that model (base model + its reply bytes); the
    # clients reported the hash after the last round on Leave, so every round is verified.
    exported = export_run(tmp_path / "coordinator.db", tmp_path / "export", progress=False)
    assert (exported.model_hash, exported.kind) == (report.final_hash, "coordinator")
    assert exported.verified_at == config.rounds
    status = report_status(open_run(tmp_path / "coordinator.db"))
    assert status["rounds"] == config.rounds and status["clients"] == config.num_clients
    assert status["reply_bytes"] == sum(len(c.scalars) for c in coordinator.store.closed_rounds(-1, 100))


def _chained(root: str) -> RuntimeError:
    """The chain Flower raises: its own RuntimeError over the backend's over Ray's."""
    try:
        try:
            try:
                raise RuntimeError(root)
            except RuntimeError as ray_error:
                raise RuntimeError("Simulation Runtime crashed.") from ray_error
        except RuntimeError as backend_error:
            raise RuntimeError("An error was encountered. Ending simulation.") from backend_error
    except RuntimeError as top:
        return top


@pytest.mark.parametrize(
    ("root", "retried"),
    [
        ("Timed out waiting for file /tmp/ray/session_x/gcs_server_port_abc", True),  # seen in CI
        ("The current node timed out during startup. This could happen because ...", True),  # seen in CI
        ("a Flower ClientApp failed: boom", False),  # the run itself failed: never rerun it
    ],
)
def test_only_a_failed_ray_start_is_retried(root: str, retried: bool) -> None:
    assert flower_sim._ray_failed_to_start(_chained(root)) is retried
    assert flower_sim._ray_failed_to_start(flower_sim.RayStartError(root)) is True
