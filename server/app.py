"""Serving the coordinator: ``create_server(...) -> (server, port)``, health, graceful stop."""

from __future__ import annotations

import logging
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedseed.proto import coordinator_pb2_grpc as pb_grpc

from .coordinator import Coordinator
from .metrics import MetricsInterceptor
from .service import Auth, CoordinatorService

log = logging.getLogger(__name__)

SERVICE_NAME = "fedseed.proto.Coordinator"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # explicit: a sync of many rounds stays far below


def create_server(
    coordinator: Coordinator,
    address: str = "127.0.0.1:0",
    token: str | None = None,
    max_workers: int = 32,
    tls: tuple[bytes, bytes] | None = None,
    per_client: bool = False,
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """A server bound to ``address`` (port 0 picks a free port), to be started.

    ``token``: the shared token clients may send as ``authorization: Bearer <token>``;
    ``per_client``: also accept the per-client credentials in the store (each binds its caller
    to one client name; ``fedseed coordinator enroll``). ``tls``:
    ``(certificate chain PEM, private key PEM)``; without it the port is plain
    (loopback and trusted networks only).
    """
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    # Metrics first, so refused calls (bad token) are counted too.
    interceptors: list[grpc.ServerInterceptor] = [MetricsInterceptor(coordinator.metrics)]
    auth = Auth(token, coordinator.store if per_client else None) if token or per_client else None
    if auth is not None:
        interceptors.append(auth)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers), options=options, interceptors=interceptors
    )
    pb_grpc.add_CoordinatorServicer_to_server(CoordinatorService(coordinator, auth), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if tls is None:
        port = server.add_insecure_port(address)
    else:
        cert_pem, key_pem = tls
        port = server.add_secure_port(address, grpc.ssl_server_credentials([(key_pem, cert_pem)]))
    if port == 0:
        raise OSError(f"cannot bind {address}")
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port, health_servicer


def stop_gracefully(
    server: grpc.Server, health_servicer: health.HealthServicer, grace_s: float = 5.0
) -> None:
    """Health goes NOT_SERVING first, so balancers stop sending; then drain and stop."""
    health_servicer.enter_graceful_shutdown()
    server.stop(grace_s).wait()
