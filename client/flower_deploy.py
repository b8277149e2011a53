"""fedseed as a Flower App on Flower's Deployment Engine (SuperLink, SuperNodes, ``flwr run``).

The ``ServerApp`` here drives :func:`fedseed.simulate.drive`, the round loop every path
shares, over the SuperLink's Grid with :class:`fedseed.client.flower_sim.FlowerTransport`
(bytes and a few integers per message; no array ever travels). The ``ClientApp`` is
:data:`fedseed.client.flower_app.app`, the one every other path runs. The app folder is
``deploy/flower/`` (its ``pyproject.toml`` names both); the run config says which simulation
config to run and where the ServerApp writes the run folder:

    flwr run deploy/flower SUPERLINK --run-config "simulation-config='S.toml' out-dir='runs/flower-deploy'"

Each SuperNode is one client of that simulation (``--node-config "partition-id=I
simulation-config='S.toml'"``), so there are as many SuperNodes as ``num_clients``. fedseed
is installed on every machine beforehand (scripts/install.sh) and Flower's runtime
dependency installation is disabled (``--disable-runtime-dependency-installation`` on the
SuperLink and the SuperNodes), so Flower never resolves another torch. docs/running.md has
the operator's steps.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedseed import simulate
from fedseed.codec import LogCodec
from fedseed.rounds import FedKSeedRounds
from fedseed.seeds import run_key

from .flower_sim import FlowerTransport

server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    config = simulate.load_config(Path(str(context.run_config["simulation-config"])))
    out_dir = str(context.run_config.get("out-dir", "")) or str(config.out_dir)
    config = dataclasses.replace(
        config, out_dir=Path(out_dir), engine="inprocess", ray_address="", progress=False
    )
    _wait_for_nodes(grid, config.num_clients, float(context.run_config.get("join-timeout-s", 300)))
    task, engine = simulate.build_model(config)  # the driver's model follows the ledger
    _, test_set = simulate.load_data(config)
    rounds = FedKSeedRounds(config.fedkseed, run_key(config.run_name), LogCodec())
    setup = simulate.SimulationSetup(config, task, engine, [], test_set, rounds)
    simulate.drive(
        config, setup, FlowerTransport(grid, timeout_s=float(context.run_config.get("timeout-s", 3600)))
    )


def _wait_for_nodes(grid: Grid, expected: int, timeout_s: float) -> None:
    """Every client is a SuperNode: the run starts once ``num_clients`` of them are connected."""
    deadline = time.monotonic() + timeout_s
    while len(connected := list(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{len(connected)} SuperNodes connected after {timeout_s:.0f} s; the simulation config "
                f"has num_clients = {expected} (one SuperNode per client)"
            )
        time.sleep(1.0)
    if len(connected) > expected:
        raise RuntimeError(f"{len(connected)} SuperNodes connected, but the run has {expected} clients")
