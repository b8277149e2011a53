"""``fedseed coordinator --config PATH``: serve one run until it finishes or is stopped.

The config is TOML (see ``deploy/configs/coordinator.toml``)::

    [run]        name, pool_size, local_steps, lr, eps, importance, codec,
                 rounds, clients_per_round, min_replies, min_clients, round_timeout_s
    [selection]  policy ("uniform" | "power-of-choice" | "disparity"), candidates,
                 pacing, a, b (see fedseed.selection; optional, default uniform)
    [manifest]   stream, base_model_hash, task, trainable (what clients must match)
    [server]     address ("127.0.0.1:50051"), database ("coordinator.db"), token_env,
                 linger_s (how long to keep serving after the last round closes),
                 tls_cert / tls_key (PEM files; plain gRPC without them),
                 metrics_port / metrics_address (Prometheus text on /metrics)

The token is read from the environment variable named by ``token_env`` (never
from the file). A restarted coordinator on the same database continues the run.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedseed.errors import ConfigError, FedseedError
from fedseed.logs import configure
from fedseed.manifest import Manifest
from fedseed.rounds import FedKSeedConfig
from fedseed.selection import SelectionConfig
from fedseed.serde import RunParams

from .app import create_server, stop_gracefully
from .coordinator import Coordinator, CoordinatorConfig
from .store import CoordinatorStore

log = logging.getLogger("fedseed.server")


def load_config(path: Path) -> tuple[CoordinatorConfig, dict[str, Any]]:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"no config file at {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    try:
        run, manifest_raw, server = raw["run"], raw["manifest"], raw.get("server", {})
        fedkseed = FedKSeedConfig(
            pool_size=run["pool_size"], local_steps=run["local_steps"], lr=run["lr"], eps=run["eps"],
            importance=run.get("importance", False),
        )  # fmt: skip
        manifest = Manifest(
            manifest_raw["stream"], manifest_raw["base_model_hash"], manifest_raw["task"],
            tuple(manifest_raw["trainable"]),
        )  # fmt: skip
        config = CoordinatorConfig(
            params=RunParams(run["name"], fedkseed, run.get("codec", "log")),
            manifest=manifest,
            clients_per_round=run.get("clients_per_round", 3),
            min_replies=run.get("min_replies", 1),
            round_timeout_s=run.get("round_timeout_s", 120.0),
            rounds=run.get("rounds", 10),
            min_clients=run.get("min_clients", 0),
            selection=SelectionConfig(**raw.get("selection", {})),
        )
    except TypeError as exc:  # an unknown key in [selection]
        raise ConfigError(f"{path}: [selection]: {exc}") from exc
    except KeyError as exc:
        raise ConfigError(f"{path}: missing setting {exc}") from exc
    return config, server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedseed coordinator", description="Serve a fedseed run.")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--address", help="overrides [server] address")
    parser.add_argument("--database", help="overrides [server] database")
    parser.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    args = parser.parse_args(argv)
    configure("coordinator", json_lines=args.log_json)
    try:
        config, server_settings = load_config(args.config)
        token_env = server_settings.get("token_env", "FEDSEED_TOKEN")
        token = os.environ.get(token_env)
        if not token:
            raise ConfigError(f"set the client token in ${token_env} (clients send it as a bearer token)")
        store = CoordinatorStore(args.database or server_settings.get("database", "coordinator.db"))
        coordinator = Coordinator(store, config)
        address = args.address or server_settings.get("address", "127.0.0.1:50051")
        tls = None
        if "tls_cert" in server_settings or "tls_key" in server_settings:
            tls = (
                Path(server_settings["tls_cert"]).read_bytes(),
                Path(server_settings["tls_key"]).read_bytes(),
            )
        server, port, health = create_server(coordinator, address=address, token=token, tls=tls)
        if "metrics_port" in server_settings:
            coordinator.metrics.serve(
                int(server_settings["metrics_port"]), server_settings.get("metrics_address", "127.0.0.1")
            )
    except KeyError as exc:
        print(
            f"error: {args.config}: [server] needs both tls_cert and tls_key (missing {exc})", file=sys.stderr
        )
        return 2
    except (FedseedError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    server.start()
    log.info("serving run %s on port %d (next round %d)", config.params.run_name, port, store.next_round())
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    linger_s = float(server_settings.get("linger_s", 5.0))
    while not stop.wait(0.5):
        if coordinator.finished():
            stop.wait(linger_s)  # let clients fetch the last round before going away
            break
    log.info("stopping after %d closed rounds", store.next_round())
    stop_gracefully(server, health)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
