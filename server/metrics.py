"""Prometheus metrics of the coordinator, served as text on ``/metrics``.

Per-RPC counts and latencies come from an interceptor; round and reply
counters from the coordinator. Each coordinator gets its own registry, so
several can live in one process (tests) without clashing.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class CoordinatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpcs = Counter(
            "fedseed_rpcs",
            "RPCs handled, by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "fedseed_rpc_seconds",
            "RPC handling time (long-polls included)",
            ["method"],
            registry=self.registry,
        )
        self.rpc_bytes = Counter(
            "fedseed_rpc_bytes", "serialized protobuf bytes, by method and direction",
            ["method", "direction"], registry=self.registry,
        )  # fmt: skip
        self.replies = Counter(
            "fedseed_replies", "submissions, by outcome", ["outcome"], registry=self.registry
        )
        self.rounds_closed = Counter("fedseed_rounds_closed", "rounds closed", registry=self.registry)
        self.clients_active = Gauge("fedseed_clients_active", "active clients", registry=self.registry)

    def serve(self, port: int, address: str = "127.0.0.1") -> Any:
        """Serve ``/metrics`` over HTTP on ``address:port``; returns the server (``.shutdown()``)."""
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        return server


def _size(message: Any) -> int:
    """Serialized size; a refused call (e.g. bad token) never deserialised its raw bytes."""
    return len(message) if isinstance(message, bytes) else int(message.ByteSize())


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts every unary RPC with its status code, time and payload bytes."""

    def __init__(self, metrics: CoordinatorMetrics) -> None:
        self.metrics = metrics

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary
        metrics = self.metrics

        def measured(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.perf_counter()
            code = "OK"
            try:
                response = inner(request, context)
                metrics.rpc_bytes.labels(method, "down").inc(_size(response))
                return response
            except Exception:
                status = context.code()  # type: ignore[attr-defined]  # set by context.abort()
                code = status.name if status is not None else "UNKNOWN"
                raise
            finally:
                metrics.rpc_bytes.labels(method, "up").inc(_size(request))
                metrics.rpcs.labels(method, code).inc()
                metrics.rpc_seconds.labels(method).observe(time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(
            measured, handler.request_deserializer, handler.response_serializer
        )
