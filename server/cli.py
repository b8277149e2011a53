"""``fedseed coordinator --config PATH``: serve one run until it finishes or is stopped.

The config is TOML (see ``deploy/configs/coordinator.toml``)::

    [run]        RunSettings: the run's name and public parameters, round rules
    [selection]  fedseed.selection.SelectionConfig (optional; default uniform)
    [manifest]   fedseed.manifest.Manifest: what clients must match
    [server]     ServerSettings: address, database, token, TLS, metrics

Every key is documented in docs/config-reference.md (generated from these dataclasses).

The token is read from ``token_file`` (a mounted secret) or the environment variable
named by ``token_env``, never from the config itself. Serving on an address other than
loopback requires TLS (``tls_cert``/``tls_key`` or ``--tls-cert``/``--tls-key``) unless
``--insecure`` is given: the bearer token would otherwise cross the network in clear text.
A restarted coordinator on the same database continues the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fedseed.credentials import is_loopback, read_pem, read_token_file
from fedseed.errors import ConfigError, FedseedError
from fedseed.logs import configure
from fedseed.manifest import Manifest
from fedseed.selection import SelectionConfig
from fedseed.settings import SETTING_NAMES, RunParams, settings_from_mapping

from .app import create_server, stop_gracefully
from .coordinator import Coordinator, CoordinatorConfig
from .store import CoordinatorStore

log = logging.getLogger("fedseed.server")


# [run] = the run's name, its settings (fedseed.settings.RunSettings: the one definition, also
# what the database and the wire carry) and the coordinator's round rules (CoordinatorConfig).
ROUND_RULES = ("rounds", "clients_per_round", "min_replies", "min_clients", "round_timeout_s")


def run_table(raw: Any, where: str) -> tuple[RunParams, dict[str, Any]]:
    """``[run]`` split into the run's identity and the round rules; unknown keys are named."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table")
    valid = ("name", *SETTING_NAMES, *ROUND_RULES)
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: missing setting 'name' (the run's name; every seed derives from it)")
    settings = settings_from_mapping({k: v for k, v in raw.items() if k in SETTING_NAMES}, where)
    return RunParams(name, settings), {k: v for k, v in raw.items() if k in ROUND_RULES}


@dataclass(frozen=True)
class ServerSettings:
    """``[server]``: where and how this coordinator serves (not part of the run)."""

    address: str = "127.0.0.1:50051"  # host:port for gRPC (0.0.0.0:50051 in a container)
    database: str = "coordinator.db"  # the SQLite state; a restart on the same file continues the run
    token_env: str = "FEDSEED_TOKEN"  # environment variable holding the clients' bearer token
    token_file: str = ""  # file holding the token instead (a mounted secret); wins over token_env
    auth: str = (
        "token"  # token: one shared token | per-client: credentials from `enroll` (+ the token if set)
    )
    linger_s: float = 5.0  # seconds to keep serving after the last round closes (clients fetch it)
    tls_cert: str = ""  # PEM certificate; with tls_key, gRPC over TLS (clients pass --tls-ca)
    tls_key: str = ""  # PEM private key of tls_cert
    metrics_port: int = 0  # Prometheus text on http://metrics_address:metrics_port/metrics; 0 = off
    metrics_address: str = "127.0.0.1"  # interface of the metrics endpoint


T = TypeVar("T")


def table(cls: type[T], raw: Any, where: str) -> T:
    """A dataclass from one TOML table: unknown keys and missing settings are named."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table")
    known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(known)}")
    missing = [
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in raw
    ]
    if missing:
        raise ConfigError(f"{where}: missing setting {missing[0]!r}")
    return cls(**raw)


def load_config(path: Path) -> tuple[CoordinatorConfig, ServerSettings]:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"no config file at {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(raw) - {"run", "manifest", "selection", "server"})
    if unknown:
        raise ConfigError(
            f"{path}: unknown table(s) {', '.join(unknown)}; valid: run, manifest, selection, server"
        )
    for name in ("run", "manifest"):
        if name not in raw:
            raise ConfigError(f"{path}: missing table [{name}]")
    params, round_rules = run_table(raw["run"], f"{path}: [run]")
    manifest_raw = dict(raw["manifest"]) if isinstance(raw["manifest"], dict) else raw["manifest"]
    if isinstance(manifest_raw, dict) and isinstance(manifest_raw.get("trainable"), list):
        manifest_raw["trainable"] = tuple(manifest_raw["trainable"])
    manifest = table(Manifest, manifest_raw, f"{path}: [manifest]")
    config = CoordinatorConfig(
        params=params,
        manifest=manifest,
        selection=table(SelectionConfig, raw.get("selection", {}), f"{path}: [selection]"),
        **round_rules,
    )
    server = table(ServerSettings, raw.get("server", {}), f"{path}: [server]")
    if bool(server.tls_cert) != bool(server.tls_key):
        raise ConfigError(f"{path}: [server] needs both tls_cert and tls_key, or neither")
    if server.auth not in AUTH_MODES:
        raise ConfigError(
            f"{path}: [server] auth must be one of {', '.join(AUTH_MODES)}, got {server.auth!r}"
        )
    return config, server


AUTH_MODES = ("token", "per-client")
CREDENTIAL_COMMANDS = ("enroll", "revoke", "credentials")


def credentials_main(argv: Sequence[str]) -> int:
    """``fedseed coordinator enroll|revoke|credentials``: per-client credentials in the run's database.

    ``enroll NAME --out FILE`` issues client NAME a new random token, writes it to FILE (mode
    0600; hand it to that client as ``--token-file``) and stores only its SHA-256: re-enrolling
    replaces the old token. ``revoke NAME`` refuses it from the next call on. ``credentials``
    lists names and states, never a token."""
    import hashlib
    import secrets
    import time

    from . import validation

    parser = argparse.ArgumentParser(prog="fedseed coordinator", description=credentials_main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in CREDENTIAL_COMMANDS:
        p = sub.add_parser(command)
        p.add_argument("--config", required=True, type=Path)
        p.add_argument("--database", help="overrides [server] database")
        if command != "credentials":
            p.add_argument("name", help="the client name the credential may act as")
        if command == "enroll":
            p.add_argument("--out", required=True, type=Path, help="file to write the token to (0600)")
    args = parser.parse_args(argv)
    try:
        _, settings = load_config(args.config)
        store = CoordinatorStore(args.database or settings.database)
        if args.command == "enroll":
            name = validation.client_name(args.name)
            if args.out.exists():
                raise ConfigError(f"{args.out} exists; choose another --out (a token is never overwritten)")
            token = secrets.token_hex(32)
            fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
            store.set_credential(name, hashlib.sha256(token.encode()).hexdigest(), time.time())
            print(f"enrolled {name}: token in {args.out} (give it to that client as --token-file)")
        elif args.command == "revoke":
            if not store.revoke_credential(validation.client_name(args.name)):
                raise ConfigError(f"no credential was issued to {args.name!r}")
            print(f"revoked {args.name}: refused from its next call on")
        else:
            for name, revoked in store.credentials():
                print(f"{name}\t{'revoked' if revoked else 'active'}")
        store.close()
    except (FedseedError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _token(settings: ServerSettings) -> str | None:
    if settings.token_file:
        return read_token_file(settings.token_file)
    token = os.environ.get(settings.token_env)
    if not token and settings.auth == "per-client":
        return None  # per-client credentials only
    if not token:
        raise ConfigError(
            f"set the client token in ${settings.token_env} or point token_file (--token-file) at a "
            "file holding it (clients send it as a bearer token)"
        )
    return token


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in CREDENTIAL_COMMANDS:
        return credentials_main(argv)
    parser = argparse.ArgumentParser(
        prog="fedseed coordinator",
        description="Serve a fedseed run. Per-client credentials: fedseed coordinator "
        "enroll|revoke|credentials --config C ... (each has --help).",
    )
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--address", help="overrides [server] address")
    parser.add_argument("--database", help="overrides [server] database")
    parser.add_argument("--tls-cert", help="overrides [server] tls_cert (PEM certificate)")
    parser.add_argument("--tls-key", help="overrides [server] tls_key (PEM private key)")
    parser.add_argument("--token-file", help="overrides [server] token_file (a mounted secret)")
    parser.add_argument(
        "--insecure", action="store_true",
        help="serve without TLS on a non-loopback address (the token then crosses the network in clear)",
    )  # fmt: skip
    parser.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    args = parser.parse_args(argv)
    configure("coordinator", json_lines=args.log_json)
    try:
        config, settings = load_config(args.config)
        overrides = {"tls_cert": args.tls_cert, "tls_key": args.tls_key, "token_file": args.token_file}
        settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
        if bool(settings.tls_cert) != bool(settings.tls_key):
            raise ConfigError("TLS needs both a certificate and its key (tls_cert and tls_key), or neither")
        address = args.address or settings.address
        if not settings.tls_cert and not is_loopback(address) and not args.insecure:
            raise ConfigError(
                f"refusing to serve on {address} without TLS: the clients' bearer token would cross "
                "the network in clear text. Set tls_cert and tls_key (deploy/make-certs.sh makes a "
                "test CA and certificates), serve on 127.0.0.1, or pass --insecure"
            )
        token = _token(settings)
        tls = None
        if settings.tls_cert:
            tls = (read_pem(settings.tls_cert, "TLS certificate"), read_pem(settings.tls_key, "TLS key"))
        store = CoordinatorStore(args.database or settings.database)
        coordinator = Coordinator(store, config)
        server, port, health = create_server(
            coordinator, address=address, token=token, tls=tls, per_client=settings.auth == "per-client"
        )
        if settings.metrics_port:
            coordinator.metrics.serve(settings.metrics_port, settings.metrics_address)
    except (FedseedError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    server.start()
    log.info("serving run %s on port %d (next round %d)", config.params.run_name, port, store.next_round())
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    linger_s = settings.linger_s
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
