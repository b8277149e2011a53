"""``python -m fedseed.server.probe HOST:PORT``: exit 0 when the coordinator's gRPC health says SERVING.

For container health checks (Docker ``HEALTHCHECK``, systemd, scripts); Kubernetes
uses its built-in gRPC probe against the same service.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def probe(address: str, timeout_s: float = 3.0) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            stub: Any = health_pb2_grpc.HealthStub(channel)  # generated without type stubs
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m fedseed.server.probe HOST:PORT", file=sys.stderr)
        return 2
    serving = probe(args[0])
    print("SERVING" if serving else "NOT SERVING")
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
