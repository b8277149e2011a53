"""Tokens and TLS files as the coordinator, clients and probes read them: one-line errors.

Deployments mount credentials as files (Docker/Compose secrets under ``/run/secrets``,
Kubernetes Secret volumes, systemd ``LoadCredential=``), so every process that needs a token
can take it from a file as well as from the environment; a bad path or an empty file is one
sentence naming it, never a traceback.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from fedseed.errors import ConfigError


def read_token_file(path: str | Path) -> str:
    """The bearer token in ``path`` (surrounding whitespace, e.g. a final newline, removed)."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the token file {path}: {_reason(exc)}") from exc
    if not token:
        raise ConfigError(f"the token file {path} is empty")
    return token


def read_pem(path: str | Path, what: str) -> bytes:
    """A PEM file's bytes (``what`` names it in the error: 'TLS certificate', 'CA', ...)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {_reason(exc)}") from exc
    if b"-----BEGIN " not in data:
        raise ConfigError(f"the {what} {path} is not a PEM file (no -----BEGIN line)")
    return data


def is_loopback(address: str) -> bool:
    """Whether ``host:port`` only accepts connections from this machine."""
    host = address.rsplit(":", 1)[0] if ":" in address else address
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve to anything
        return False


def _reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
