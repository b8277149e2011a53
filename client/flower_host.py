"""Hosting the Flower ``ClientApp`` outside Flower's runtime: the one place using Flower internals.

Flower 1.42 builds a ``Message`` from the process's ``TaskIdentity`` (set by
its SuperNode); to call the app from our own gRPC runner we construct the
``Metadata`` ourselves, which Flower documents as internal. Everything that
touches it is here, and ``tests/client/test_flower_app.py`` fails loudly if a
Flower upgrade changes it.
"""

from __future__ import annotations

import time

import flwr
from flwr.app import Context, Message, Metadata, RecordDict
from flwr.clientapp import ClientApp

from . import FLOWER_VERSION  # the version these internals were written against

_TTL_S = 3600.0


def call(app: ClientApp, node_id: int, message_type: str, content: RecordDict, run_id: int = 0) -> RecordDict:
    """Deliver one instruction to ``app`` as node ``node_id``; returns the reply's content."""
    if flwr.__version__ != FLOWER_VERSION:
        raise RuntimeError(
            f"fedseed.client.flower_host was written for flwr {FLOWER_VERSION}, found {flwr.__version__}"
        )
    metadata = Metadata(
        run_id=run_id, message_id=f"fedseed-{time.monotonic_ns()}", src_node_id=0, dst_node_id=node_id,
        reply_to_message_id="", group_id="", created_at=time.time(), ttl=_TTL_S, message_type=message_type,
    )  # fmt: skip
    context = Context(run_id=run_id, node_id=node_id, node_config={}, state=RecordDict(), run_config={})
    message = Message(content=content, metadata=metadata)  # type: ignore[call-overload]  # internal form
    reply = app(message, context)
    if reply.has_error():
        raise RuntimeError(f"the ClientApp failed: {reply.error.reason}")
    return reply.content
