"""The gRPC face of the coordinator: convert, call one method, convert back.

Errors become status codes here and nowhere else: a manifest mismatch is
FAILED_PRECONDITION (naming the mismatch), a submission that can never be
accepted is INVALID_ARGUMENT, an unknown client NOT_FOUND, a missing, wrong or
revoked token UNAUTHENTICATED (in :class:`Auth`, before any handler runs), and a
per-client credential acting as another client PERMISSION_DENIED.
"""

from __future__ import annotations

import hashlib
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
from .store import CoordinatorStore, ReplyOutcome, StoreError

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
        except PermissionDenied as exc:
            log.warning("refused: %s", exc)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except StoreError as exc:  # e.g. disk full: nothing was recorded, the client retries later
            log.error("%s", exc)
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))

    return wrapper


class PermissionDenied(Exception):
    """A credential acting as another client than its own."""


class CoordinatorService(pb_grpc.CoordinatorServicer):
    def __init__(self, coordinator: Coordinator, auth: Auth | None = None) -> None:
        self.coordinator = coordinator
        self.auth = auth

    def _identity(self, context: grpc.ServicerContext) -> str:
        """The caller's client name, or ANY_CLIENT (shared token, or no authentication at all)."""
        if self.auth is None:
            return ANY_CLIENT
        identity = self.auth.identify(context.invocation_metadata())
        return ANY_CLIENT if identity is None else identity  # None cannot pass the interceptor

    def _acting_as(self, context: grpc.ServicerContext, client_id: int) -> None:
        """Refuse a per-client credential that names another client's id (or an unknown one)."""
        identity = self._identity(context)
        if identity == ANY_CLIENT:
            return
        row = self.coordinator.store.client(client_id)
        if row is None or row.name != identity:
            raise PermissionDenied(
                f"the credential of client {identity!r} cannot act as client id {client_id}"
            )

    @_abort_on_errors
    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        manifest = serde.manifest_from_proto(request.manifest)
        score = validation.score(request.score if request.HasField("score") else None)
        name = validation.client_name(request.client_name)
        identity = self._identity(context)
        if identity not in (ANY_CLIENT, name):
            raise PermissionDenied(f"the credential of client {identity!r} cannot join as {name!r}")
        client_id, next_round = self.coordinator.join(
            name, manifest,
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
        self._acting_as(context, request.client_id)
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
        self._acting_as(context, request.client_id)
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
        self._acting_as(context, request.client_id)
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


ANY_CLIENT = ""  # the identity of the shared token: it may act as any client


class Auth(grpc.ServerInterceptor):
    """Every RPC but health checks must carry ``authorization: Bearer <token>``: the run's shared
    token (trusted test setups: it may act as any client), or a per-client credential issued by
    ``fedseed coordinator enroll NAME``, which may act only as client NAME. A revoked credential is
    refused from its next call on. Only SHA-256 hashes of credentials are stored or compared."""

    def __init__(self, shared_token: str | None, store: CoordinatorStore | None) -> None:
        self._shared = f"Bearer {shared_token}".encode() if shared_token else None
        self._store = store

        def deny(request: Any, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing, invalid or revoked token")

        self._deny: grpc.RpcMethodHandler[Any, None] = grpc.unary_unary_rpc_method_handler(deny)

    def identify(self, metadata: Any) -> str | None:
        """The client name the caller may act as (``ANY_CLIENT`` for the shared token), or None."""
        given = str(dict(metadata or ()).get("authorization", ""))
        if self._shared is not None and hmac.compare_digest(given.encode(), self._shared):
            return ANY_CLIENT
        if self._store is None or not given.startswith("Bearer "):
            return None
        found = self._store.credential(hashlib.sha256(given.removeprefix("Bearer ").encode()).hexdigest())
        if found is None or found[1]:
            return None
        return found[0]

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        if handler_call_details.method.startswith("/grpc.health.v1.Health/"):
            return continuation(handler_call_details)
        if self.identify(handler_call_details.invocation_metadata) is not None:
            return continuation(handler_call_details)
        return self._deny
