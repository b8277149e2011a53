"""``python -m fedseed.server.probe [--tls-ca CA.pem] HOST:PORT``: exit 0 when the coordinator's
gRPC health says SERVING.

For container health checks (Docker ``HEALTHCHECK``, Kubernetes exec probes, systemd,
scripts). A coordinator serving TLS needs ``--tls-ca`` (the CA that signed its certificate,
which must name the probed host: deploy/make-certs.sh includes 127.0.0.1 and localhost).
Kubernetes' built-in gRPC probe speaks plaintext only, so the deploy files use this instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedseed.credentials import read_pem
from fedseed.errors import ConfigError


def probe(address: str, timeout_s: float = 3.0, root_certificates: bytes | None = None) -> bool:
    if root_certificates is None:
        channel = grpc.insecure_channel(address)
    else:
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates))
    with channel:
        try:
            stub: Any = health_pb2_grpc.HealthStub(channel)  # generated without type stubs
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedseed.server.probe", description=__doc__.splitlines()[0]
    )
    parser.add_argument("address", metavar="HOST:PORT")
    parser.add_argument("--tls-ca", help="PEM file of the CA that signed the coordinator's certificate")
    parser.add_argument("--timeout", type=float, default=3.0, metavar="S")
    args = parser.parse_args(argv)
    try:
        roots = read_pem(args.tls_ca, "CA certificate (--tls-ca)") if args.tls_ca else None
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    serving = probe(args.address, args.timeout, roots)
    print("SERVING" if serving else "NOT SERVING")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
