"""The gRPC face of the coordinator: convert, call one method, convert back.

Errors become status codes here and nowhere else: a manifest mismatch is
FAILED_PRECONDITION (naming the mismatch), a submission that can never be
accepted is INVALID_ARGUMENT, an unknown client NOT_FOUND, a missing or wrong
token UNAUTHENTICATED (in :class:`TokenAuth`, before any handler runs).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

import grpc

from fedseed import serde
from fedseed.errors import ConfigError
from fedseed.proto import coordinator_pb2 as pb
from fedseed.proto import coordinator_pb2_grpc as pb_grpc

from . import validation
from .coordinator import Coordinator, InvalidSubmission, ManifestMismatch, UnknownClient
from .store import ReplyOutcome, StoreError

log = logging.getLogger(__name__)

MAX_WAIT_MS = 30_000  # a long-poll never holds a worker thread longer than this
_OUTCOMES = {
    ReplyOutcome.ACCEPTED: pb.SubmitReply.ACCEPTED,
    ReplyOutcome.DUPLICATE: pb.SubmitReply.DUPLICATE,
    ReplyOutcome.LATE: pb.SubmitReply.LATE,
    ReplyOutcome.RESYNC: pb.SubmitReply.RESYNC,
}


def _abort_on_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(self: CoordinatorService, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            validation.check_integers(request)  # before any value reaches the store
            return method(self, request, context)
        except ManifestMismatch as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except (InvalidSubmission, ConfigError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except UnknownClient as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except StoreError as exc:  # e.g. disk full: nothing was recorded, the client retries later
            log.error("%s", exc)
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))

    return wrapper


class CoordinatorService(pb_grpc.CoordinatorServicer):
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    @_abort_on_errors
    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        manifest = serde.manifest_from_proto(request.manifest)
        score = validation.score(request.score if request.HasField("score") else None)
        client_id, next_round = self.coordinator.join(
            validation.client_name(request.client_name), manifest,
            validation.num_samples(request.num_samples), score,
        )  # fmt: skip
        params = serde.run_params_to_proto(self.coordinator.config.params)
        return pb.JoinReply(
            client_id=client_id,
            next_round=next_round,
            params=params,
            total_rounds=self.coordinator.config.rounds,
        )

    @_abort_on_errors
    def GetTask(self, request: pb.TaskRequest, context: grpc.ServicerContext) -> pb.TaskReply:
        wait_s = min(request.wait_ms, MAX_WAIT_MS) / 1000
        # Never wait past the caller's deadline: a client that gave up must not keep a worker
        # thread (found by fuzzing: abandoned 30 s polls starved the pool).
        remaining = context.time_remaining()
        if remaining is not None:
            wait_s = max(0.0, min(wait_s, remaining - 0.05))
        task = self.coordinator.wait_for_task(request.client_id, wait_s)
        next_round = self.coordinator.store.next_round()
        if task is not None:
            return pb.TaskReply(
                task=pb.RoundTask(
                    round=task.round_index, slot=task.slot, sample_counts=list(task.sample_counts)
                ),
                next_round=next_round,
            )
        if self.coordinator.finished():
            return pb.TaskReply(finished=True, next_round=next_round)
        return pb.TaskReply(retry_after_ms=200, next_round=next_round)

    @_abort_on_errors
    def Submit(self, request: pb.SubmitRequest, context: grpc.ServicerContext) -> pb.SubmitReply:
        outcome = self.coordinator.submit(
            request.client_id, request.round, request.slot, request.scalars,
            validation.short_text(request.idempotency_key, "idempotency_key", validation.MAX_KEY_CHARS),
            validation.short_text(request.start_hash, "start_hash", validation.MAX_HASH_CHARS),
            validation.score(request.score if request.HasField("score") else None),
        )  # fmt: skip
        if outcome is ReplyOutcome.CONFLICT:
            context.abort(
                grpc.StatusCode.ALREADY_EXISTS,
                f"round {request.round} slot {request.slot} already holds another payload",
            )
        agreed = ""
        if outcome is ReplyOutcome.RESYNC:
            current = self.coordinator.store.current_round()
            slots = len(current.slot_clients) if current else 0
            agreed = self.coordinator.agreed_so_far(request.round, slots)
        return pb.SubmitReply(outcome=_OUTCOMES[outcome], agreed_hash=agreed)

    @_abort_on_errors
    def Sync(self, request: pb.SyncRequest, context: grpc.ServicerContext) -> pb.SyncReply:
        rounds, next_round = self.coordinator.sync(request.from_round, request.max_rounds or 100)
        return pb.SyncReply(rounds=[serde.closed_round_to_proto(r) for r in rounds], next_round=next_round)

    @_abort_on_errors
    def Leave(self, request: pb.LeaveRequest, context: grpc.ServicerContext) -> pb.LeaveReply:
        self.coordinator.leave(
            request.client_id,
            validation.short_text(request.final_hash, "final_hash", validation.MAX_HASH_CHARS),
            request.rounds,
        )
        return pb.LeaveReply()

    @_abort_on_errors
    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusReply:
        store = self.coordinator.store
        latest = store.closed_rounds(store.next_round() - 2, 1)
        hash_round, latest_hash = 0, store.run()[0].base_model_hash  # type: ignore[index]
        if latest and latest[0].start_hash:
            hash_round, latest_hash = latest[0].round_index, latest[0].start_hash
        return pb.StatusReply(
            next_round=store.next_round(), clients=len(store.clients()),
            ledger_entries=self.coordinator.ledger_entries, latest_model_hash=latest_hash,
            latest_hash_round=hash_round, mismatches=len(store.mismatches()),
        )  # fmt: skip


class TokenAuth(grpc.ServerInterceptor):
    """Every RPC but health checks must carry ``authorization: Bearer <token>``."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

        def deny(request: Any, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid token")

        self._deny: grpc.RpcMethodHandler[Any, None] = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        if handler_call_details.method.startswith("/grpc.health.v1.Health/"):
            return continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = str(metadata.get("authorization", "")).encode()
        if hmac.compare_digest(given, self._expected):
            return continuation(handler_call_details)
        return self._deny
