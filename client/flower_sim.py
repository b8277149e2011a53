"""``fedseed simulate --engine flower``: the same run through Flower's Simulation Engine (Ray).

A Flower ``ServerApp`` drives :func:`fedseed.simulate.drive`, the simulator's
own round loop, through a transport that sends Flower ``Message``s: a
``query`` to every node to join (name, sample count, score), then per round a
``train`` message to each selected node carrying its (round, slot, sample
counts) and the closed rounds so far as reply bytes (a worker's model catches
up from those: a ledger, not a weight copy). Payloads are bytes and a few
integers; no model array ever travels. The ``ClientApp`` is
:data:`fedseed.client.flower_app.app`, the one the gRPC client hosts.

Ray workers build their clients from the config the driver puts in the
environment (:data:`~fedseed.client.flower_app.CONFIG_ENV`): one model per
worker process, shared by the virtual clients it runs. A client's curriculum
state lives in the worker that ran it, so with a loss-scored data curriculum
the engine runs one worker (every CPU per client), keeping the run identical to
the in-process one.

For Flower's Deployment Engine (``flwr run`` against a SuperLink) see
:mod:`fedseed.client.flower_deploy` and the app folder ``deploy/flower/``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from fedseed import simulate
from fedseed.codec import LogCodec
from fedseed.errors import ConfigError
from fedseed.local import RoundResult
from fedseed.rounds import ClosedRound, FedKSeedRounds
from fedseed.seeds import run_key

from . import flower_app

DEFAULT_TIMEOUT_S = 3600.0
RAY_START_ATTEMPTS = 3
log = logging.getLogger(__name__)


@dataclass
class FlowerTransport:
    grid: Grid
    timeout_s: float = DEFAULT_TIMEOUT_S
    node_of: dict[str, int] = dataclasses.field(default_factory=dict)

    def join(self, with_scores: bool) -> dict[str, tuple[int, float | None]]:
        nodes = list(self.grid.get_node_ids())
        messages = [
            Message(RecordDict({flower_app.JOIN_KEY: ConfigRecord({"score": with_scores})}), dst_node_id=n,
                    message_type="query")
            for n in nodes
        ]  # fmt: skip
        joined: dict[str, tuple[int, float | None]] = {}
        for reply in self.grid.send_and_receive(messages, timeout=self.timeout_s):
            _raise_if_error(reply)
            record = reply.content[flower_app.JOIN_KEY]
            name = cast(str, record["name"])
            self.node_of[name] = reply.metadata.src_node_id
            score = cast(float, record["score"]) if "score" in record else None
            joined[name] = (cast(int, record["num_samples"]), score)
        return joined

    def train(
        self,
        round_index: int,
        slots: dict[int, str],
        sample_counts: tuple[int, ...],
        history: list[ClosedRound],
    ) -> dict[int, RoundResult]:
        messages = [
            Message(flower_app.task_content(round_index, slot, sample_counts, history),
                    dst_node_id=self.node_of[name], message_type="train")
            for slot, name in slots.items()
        ]  # fmt: skip
        results = {}
        for reply in self.grid.send_and_receive(messages, timeout=self.timeout_s):
            _raise_if_error(reply)
            slot = cast(int, reply.content[flower_app.REPLY_KEY]["slot"])
            results[slot] = flower_app.reply_from(reply.content)
        if set(results) != set(slots):
            raise RuntimeError(
                f"round {round_index}: replies for slots {sorted(results)}, sent {sorted(slots)}"
            )
        return results


def _raise_if_error(reply: Message) -> None:
    if reply.has_error():
        raise RuntimeError(f"a Flower ClientApp failed: {reply.error.reason}")


def make_server_app(
    config: simulate.SimulationConfig, done: Callable[[simulate.SimulationReport], None]
) -> ServerApp:
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        # The driver's model follows the ledger for evaluation and the final hash.
        task, engine = simulate.build_model(config)
        _, test_set = simulate.load_data(config)
        rounds = FedKSeedRounds(config.fedkseed, run_key(config.run_name), LogCodec())
        setup = simulate.SimulationSetup(config, task, engine, [], test_set, rounds)
        done(simulate.drive(config, setup, FlowerTransport(grid)))

    return server_app


def run(config: simulate.SimulationConfig) -> simulate.SimulationReport:
    """The ``flower`` engine (entry point ``fedseed.engines``)."""
    payload = _plain(dataclasses.asdict(config))
    payload["engine"] = "inprocess"  # what each worker builds is the in-process client set
    payload["ray_address"] = ""
    worker_env = {flower_app.CONFIG_ENV: json.dumps(payload)}
    if config.ray_address:
        return _run_on_ray(config, worker_env)
    # A local Ray's workers inherit the driver's environment (a cluster's get worker_env).
    os.environ.update(worker_env)
    try:
        return _run_on_ray(config, worker_env)
    finally:
        os.environ.pop(flower_app.CONFIG_ENV, None)  # the driver's process is no worker


def _run_on_ray(config: simulate.SimulationConfig, worker_env: dict[str, str]) -> simulate.SimulationReport:
    reports: list[simulate.SimulationReport] = []
    init_args: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING"}
    if config.ray_address:
        # A cluster someone else started: its nodes say how many CPUs they lend; one per client.
        init_args = {"address": config.ray_address, "logging_level": "WARNING"}
        per_client = 1
    else:
        cpus = os.cpu_count() or 1
        init_args["num_cpus"] = cpus
        # A loss-scored curriculum keeps per-client state in the worker that scored it; one
        # worker keeps it in one place (and the run equal to the in-process one).
        per_client = cpus if config.curriculum.needs_scores else 1
        if config.curriculum.needs_scores:
            log.info(
                "a %s curriculum keeps client state: running Flower's engine with one worker",
                config.curriculum.ordering,
            )
    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": per_client, "num_gpus": 0.0},
        "init_args": init_args,
    }
    attempts = 1 if config.ray_address else RAY_START_ATTEMPTS  # a cluster is not ours to restart
    for attempt in range(1, attempts + 1):
        try:
            _start_ray(init_args, worker_env)
            run_simulation(
                server_app=make_server_app(config, reports.append),
                client_app=flower_app.app,
                num_supernodes=config.num_clients,
                backend_config=backend_config,
            )
            break
        except RuntimeError as exc:
            # On a loaded machine Ray's local node can miss its own start-up deadlines (the GCS
            # server's port file after 30 s, the raylet's "timed out during startup"); nothing
            # of the run has happened then, so a fresh start is safe (the run begins at its
            # first round and rewrites its files).
            if attempt == attempts or not _ray_failed_to_start(exc):
                raise
            log.warning(
                "Ray did not start (%s); starting it again (%d of %d)",
                _root_cause(exc),
                attempt + 1,
                RAY_START_ATTEMPTS,
            )
            reports.clear()
        finally:
            import ray

            ray.shutdown()
    if not reports:
        raise RuntimeError("Flower's simulation ended without a report (see its log above)")
    return reports[0]


class RayStartError(RuntimeError):
    """Ray's local node did not come up; nothing of the run has started."""


def _start_ray(init_args: dict[str, Any], worker_env: dict[str, str]) -> None:
    """Start Ray here, or attach to a cluster (Flower's backend reuses either), so a failed start
    is told apart from a failed run.

    The runtime environment is the one Flower's backend would give its workers plus
    ``worker_env``: a cluster's workers are started by its own nodes and inherit nothing
    from this process, so the run's config travels in the job's runtime environment.
    """
    import ray

    if ray.is_initialized():
        return
    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    address = init_args.get("address")
    if address:
        _check_reachable(address)
    try:
        ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath, **worker_env}}, **init_args)
    except Exception as exc:
        if address:
            detail = _first_line(exc)
            raise ConfigError(f"could not attach to the Ray cluster at {address}: {detail}") from exc
        raise RayStartError(f"Ray's local node did not start: {exc}") from exc


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """One line, now, for a head that does not answer: ``ray.init`` would retry for minutes."""
    host, port = simulate.check_host_port("ray_address", address)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(
            f"no Ray cluster answers at {address} ({exc.strerror or exc}); start its head with "
            f"`ray start --head --port {port}` or fix ray_address"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return exc


def _ray_failed_to_start(exc: BaseException) -> bool:
    if isinstance(exc, RayStartError):
        return True
    cause = str(_root_cause(exc))
    return "timed out during startup" in cause or "Timed out waiting for file" in cause


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, os.PathLike) else value
