"""The edge client over gRPC: join, catch up, run the scheduled local steps, submit.

    python -m fedseed.client.runner --coordinator 127.0.0.1:50051 --name alice --shard 0 --num-shards 3

The round's local work is the Flower ``ClientApp`` of :mod:`fedseed.client.flower_app`,
hosted in this process. The client derives everything the coordinator does not send: the seed pool,
its schedule for (round, slot), and each closed round's ledger step from the
round's reply bytes (:mod:`fedseed.rounds`). After its local steps it returns
to the round's start state and applies the agreed step when the round closes,
so every client holds the same bits after every round.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch

from fedseed import data, serde, simulate, tasks
from fedseed.credentials import is_loopback, read_pem, read_token_file
from fedseed.curriculum import ORDERINGS, PACINGS, SCORINGS, CurriculumConfig, per_sample_losses
from fedseed.errors import ConfigError, FedseedError
from fedseed.ledger import model_hash
from fedseed.local import SCORE_SAMPLES, LocalClient
from fedseed.logs import configure, print_json_line
from fedseed.manifest import Manifest, build_manifest
from fedseed.proto import coordinator_pb2 as pb
from fedseed.proto import coordinator_pb2_grpc as pb_grpc
from fedseed.replica import Replica
from fedseed.rounds import ClosedRound, FedKSeedRounds
from fedseed.seeds import run_key
from fedseed.zo import Snapshot, TrainableSet, ZOEngine

from . import flower_app, flower_host
from .flower_app import register, reply_from, task_content

# What gRPC's details say when the TLS handshake fails (wrong CA, plaintext vs TLS, bad cert).
TLS_FAILURE = re.compile(r"ssl|tls|handshake|certificate", re.IGNORECASE)
log = logging.getLogger(__name__)

RPC_TIMEOUT_S = 10.0  # every RPC has a deadline; GetTask adds its long-poll budget


@dataclass
class EdgeClient:
    stub: pb_grpc.CoordinatorStub
    name: str
    task: tasks.Task
    engine: ZOEngine
    shard: list[data.Example]
    manifest: Manifest
    batch_size: int = 8
    token: str | None = None
    wait_ms: int = 2000
    client_id: int = 0
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    local: LocalClient | None = None  # built at join, from the run's parameters
    replica: Replica | None = None  # this client's copy of the run (built at join)
    history: list[ClosedRound] = field(default_factory=list)  # every closed round, as bytes
    sent_hashes: dict[int, str] = field(default_factory=dict)  # round -> start hash this client sent
    heals: list[dict[str, Any]] = field(default_factory=list)  # each rebuild: round, seconds, hashes
    base: Snapshot | None = None  # the trainable tensors as loaded: what a rebuild starts from
    connect_timeout_s: float = 30.0  # before the first answer: a wrong address fails after this
    retry_for_s: float = 0.0  # after joining, how long to retry a coordinator that is away; 0 = forever
    _away_since: float | None = None  # when the coordinator stopped answering (None: it answers)
    _contacted: bool = False

    def __post_init__(self) -> None:
        if self.base is None:
            self.base = self.engine.snapshot()

    @property
    def applied_rounds(self) -> int:
        return self.replica.applied_rounds if self.replica else 0

    def _metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")] if self.token else []

    def _call(self, method: Callable[..., Any], request: Any, extra_timeout_s: float = 0.0) -> Any:
        """One RPC with a deadline, retried with capped, jittered backoff while the coordinator
        is away: before the first answer for ``connect_timeout_s`` (a wrong address or port
        fails fast), afterwards for ``retry_for_s`` (0: as long as it takes, e.g. a coordinator
        restart). A TLS failure is a configuration mistake, not an outage: it ends at once.
        Logged once when the coordinator goes away and once when it is back."""
        delay = 0.2
        while True:
            try:
                reply = method(request, timeout=RPC_TIMEOUT_S + extra_timeout_s, metadata=self._metadata())
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                details = exc.details() or ""
                if TLS_FAILURE.search(details):
                    raise ConnectionError(
                        f"TLS handshake with the coordinator failed ({details.strip()[:200]}): "
                        "check --tls-ca, and that the coordinator serves TLS"
                    ) from exc
                now = time.monotonic()
                if self._away_since is None:
                    self._away_since = now
                    log.warning("%s: coordinator unreachable (%s); retrying", self.name, exc.code().name)
                limit = self.retry_for_s if self._contacted else self.connect_timeout_s
                if limit and now - self._away_since > limit:
                    what = "stopped answering" if self._contacted else "did not answer"
                    raise ConnectionError(
                        f"the coordinator {what} for {now - self._away_since:.0f} s "
                        f"({exc.code().name}: {details.strip()[:200]})"
                    ) from exc
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)
                continue
            if self._away_since is not None:
                log.warning(
                    "%s: coordinator back after %.0f s", self.name, time.monotonic() - self._away_since
                )
                self._away_since = None
            self._contacted = True
            return reply

    def join(self) -> None:
        # The join score is measured on the model as loaded (the run's start for a
        # first join); every round it trains in refreshes it.
        score = float(np.mean(per_sample_losses(self.task, self.shard[:SCORE_SAMPLES])))
        request = pb.JoinRequest(
            manifest=serde.manifest_to_proto(self.manifest),
            num_samples=len(self.shard),
            client_name=self.name,
            score=score,
        )
        reply = self._call(self.stub.Join, request)
        params = serde.run_params_from_proto(reply.params)  # refuses a run it would not reproduce
        self.client_id = reply.client_id
        rounds = FedKSeedRounds(params.settings, run_key(params.run_name))
        self.replica = Replica(rounds, self.engine, base=self.base)  # eps, mask: the run's, none from here
        self.local = LocalClient(
            self.name, self.engine, self.task, self.shard, rounds, self.batch_size, self.curriculum,
            total_rounds=max(1, reply.total_rounds),
        )  # fmt: skip
        log.info("%s joined as client %d; run %s", self.name, self.client_id, params.run_name)

    def catch_up(self) -> None:
        """Apply every closed round not yet applied, in order (also feeds Pro's history).

        A round whose agreed start hash differs from the one this client sent for it (its
        reply did not count) means this copy diverged: it heals before applying the round.
        """
        assert self.replica is not None
        while True:
            reply = self._call(
                self.stub.Sync, pb.SyncRequest(client_id=self.client_id, from_round=len(self.history))
            )
            for message in reply.rounds:
                closed = serde.closed_round_from_proto(message)
                if closed.round_index != len(self.history):
                    continue  # already held (a retried Sync)
                self.history.append(closed)
                sent = self.sent_hashes.get(closed.round_index)
                if sent is not None and sent != closed.start_hash:
                    self.heal(closed.round_index, closed.start_hash)
                self.replica.apply(closed)
            if not reply.rounds or len(self.history) >= reply.next_round:
                return

    def heal(self, before_round: int, expected_hash: str) -> None:
        """Rebuild from the base model and the closed rounds before ``before_round``; verify."""
        assert self.replica is not None
        started = time.perf_counter()
        rebuilt = self.replica.rebuild(self.history[:before_round], expected_hash)
        seconds = time.perf_counter() - started
        self.heals.append(
            {
                "round": before_round,
                "seconds": round(seconds, 4),
                "hash": rebuilt,
                "rounds_replayed": before_round,
            }
        )
        log.warning(
            "%s: diverged before round %d; rebuilt from base + %d rounds in %.3f s (%s)",
            self.name, before_round, before_round, seconds, rebuilt,
        )  # fmt: skip

    def work(self, task: pb.RoundTask) -> None:
        """The round's local work runs in the Flower ClientApp, hosted here."""
        assert self.local is not None
        register(self.client_id, self.local)
        content = flower_host.call(
            flower_app.app,
            self.client_id,
            "train",
            task_content(task.round, task.slot, tuple(task.sample_counts)),
        )
        result = reply_from(content)
        request = pb.SubmitRequest(
            client_id=self.client_id, round=task.round, slot=task.slot, scalars=result.scalars,
            idempotency_key=uuid.uuid4().hex, start_hash=result.start_hash, score=result.score,
        )  # fmt: skip
        self.sent_hashes[task.round] = result.start_hash
        try:
            answer = self._call(self.stub.Submit, request)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
            # The slot already holds another reply (an earlier process of this client, say):
            # that one counts; this copy follows the agreed rounds like any other.
            log.warning("%s: round %d slot %d already answered (%s)", self.name, task.round, task.slot,
                        exc.details())  # fmt: skip
            self.sent_hashes.pop(task.round, None)
            return
        outcome = answer.outcome
        if outcome == pb.SubmitReply.RESYNC:
            # Most of the round started elsewhere: rebuild, verify against that, and the
            # loop asks for the task again (it is still this client's until it counts).
            self.sent_hashes.pop(task.round, None)
            self.heal(task.round, answer.agreed_hash)
        log.info(
            "%s: round %d slot %d -> %s",
            self.name,
            task.round,
            task.slot,
            pb.SubmitReply.Outcome.Name(outcome),
        )

    def report_final(self) -> None:
        """Leave, telling the coordinator the hash held after every round (the run's end is
        then recorded by a majority of clients, and export verifies the last round too)."""
        request = pb.LeaveRequest(
            client_id=self.client_id, final_hash=model_hash(self.engine.model), rounds=self.applied_rounds
        )
        try:
            self._call(self.stub.Leave, request)
        except grpc.RpcError as exc:  # the model is complete either way; only the record is missing
            log.warning(
                "%s: could not report the final hash (%s: %s)", self.name, exc.code().name, exc.details()
            )

    def run(self) -> dict[str, Any]:
        self.join()
        while True:
            self.catch_up()
            reply = self._call(
                self.stub.GetTask, pb.TaskRequest(client_id=self.client_id, wait_ms=self.wait_ms),
                extra_timeout_s=self.wait_ms / 1000,
            )  # fmt: skip
            if reply.WhichOneof("kind") == "finished":
                self.catch_up()
                self.report_final()
                break
            if reply.WhichOneof("kind") == "task":
                if reply.task.round != self.applied_rounds:
                    continue  # closed rounds to apply first
                self.work(reply.task)
        return {
            "name": self.name, "rounds": self.applied_rounds, "model_hash": model_hash(self.engine.model),
            "heals": self.heals,
        }  # fmt: skip


def _from_simulation_config(
    args: argparse.Namespace,
) -> tuple[ZOEngine, tasks.Task, list[data.Example], Manifest, CurriculumConfig, str]:
    """This client exactly as client ``--client-index`` of ``fedseed simulate --config``."""
    config = simulate.load_config(Path(args.config))
    if args.client_index is None or not 0 <= args.client_index < config.num_clients:
        raise ConfigError(f"--config needs --client-index in [0, {config.num_clients})")
    if not config.threads:
        torch.set_num_threads(
            1
        )  # several clients per machine; set threads in the config to match a simulation
    shards, _ = simulate.load_data(config)
    task, engine = simulate.build_model(config)
    manifest = build_manifest(engine.model, engine.trainable.names, simulate.task_id(config))
    name = args.name or simulate.client_name(args.client_index)
    return engine, task, shards[args.client_index], manifest, config.curriculum, name


def main(argv: Sequence[str] | None = None) -> int:
    from fedseed import models

    parser = argparse.ArgumentParser(prog="fedseed client", description="Run one edge client.")
    parser.add_argument("--coordinator", required=True, help="HOST:PORT")
    parser.add_argument("--name", help="stable client name (default with --config: client-NNNN)")
    parser.add_argument(
        "--config",
        help="a simulation config (TOML, fedseed.simulate): model, data, partition and curriculum come "
        "from it, and this client takes shard --client-index, exactly as that client in `fedseed simulate`",
    )
    parser.add_argument("--client-index", type=int, help="with --config: which client of the partition")
    parser.add_argument(
        "--token",
        default=os.environ.get("FEDSEED_TOKEN"),
        help="bearer token (default: $FEDSEED_TOKEN; the environment keeps it out of process lists)",
    )
    parser.add_argument("--token-file", help="read the bearer token from this file (a mounted secret)")
    parser.add_argument("--tls-ca", help="PEM file of the CA that signed the coordinator's certificate")
    parser.add_argument(
        "--insecure", action="store_true",
        help="connect without TLS to a non-loopback coordinator (the token crosses the network in clear)",
    )  # fmt: skip
    parser.add_argument(
        "--connect-timeout", type=float, default=30.0, metavar="S",
        help="give up if the coordinator never answers within S seconds (default 30)",
    )  # fmt: skip
    parser.add_argument(
        "--retry-for", type=float, default=0.0, metavar="S",
        help="after joining, retry an absent coordinator for S seconds (default 0: forever)",
    )  # fmt: skip
    parser.add_argument("--shard", type=int, default=0)
    parser.add_argument("--num-shards", type=int, default=1)
    parser.add_argument("--examples", type=int, default=600, help="VADER movie snippets split across shards")
    parser.add_argument("--model", default="minilm", choices=sorted(models.DEFAULT_TRAINABLE))
    parser.add_argument("--trainable", action="append", default=None, help="default: the model's (see code)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    group = parser.add_argument_group("data curriculum (fedseed.curriculum)")
    group.add_argument("--ordering", default="vanilla", choices=ORDERINGS)
    group.add_argument("--scoring", default="loss", choices=SCORINGS)
    group.add_argument("--pacing", default="linear", choices=PACINGS)
    group.add_argument("--pacing-a", type=float, default=0.8)
    group.add_argument("--pacing-b", type=float, default=0.2)
    args = parser.parse_args(argv)
    try:
        token = read_token_file(args.token_file) if args.token_file else args.token
        root_certificates = read_pem(args.tls_ca, "CA certificate (--tls-ca)") if args.tls_ca else None
        if root_certificates is None and not is_loopback(args.coordinator) and not args.insecure:
            raise ConfigError(
                f"refusing to send the bearer token to {args.coordinator} without TLS: pass --tls-ca "
                "with the CA that signed the coordinator's certificate, or --insecure"
            )
        if args.config:
            engine, task, shard, manifest, curriculum, name = _from_simulation_config(args)
            batch_size = simulate.load_config(Path(args.config)).batch_size
        else:
            if not args.name:
                parser.error("--name is required (or --config with --client-index)")
            curriculum = CurriculumConfig(
                args.ordering, args.scoring, args.pacing, args.pacing_a, args.pacing_b
            )
            name, batch_size = args.name, args.batch_size
            torch.set_num_threads(1)
            model, tokenizer = models.load_model(args.model, num_labels=2, init_seed=0)
            trainable = TrainableSet.from_model(
                model, include=models.trainable_patterns(args.model, args.trainable or ())
            )
            task = tasks.for_model(args.model, model, tokenizer, args.max_length)
            manifest = build_manifest(model, trainable.names, tasks.TASK_IDS[args.model])
            examples = data.load_vader("movies")[: args.examples]
            shard = examples[args.shard :: args.num_shards]
            engine = ZOEngine(model, trainable)  # eps: the run's, set at join
    except FedseedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure(f"client {name}", json_lines=args.log_json)
    if root_certificates is not None:
        credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        channel = grpc.secure_channel(args.coordinator, credentials)
    else:
        channel = grpc.insecure_channel(args.coordinator)
    client = EdgeClient(
        pb_grpc.CoordinatorStub(channel), name, task, engine, shard,
        manifest, batch_size=batch_size, token=token, curriculum=curriculum,
        connect_timeout_s=args.connect_timeout, retry_for_s=args.retry_for,
    )  # fmt: skip
    try:
        summary = client.run()
    except grpc.RpcError as exc:  # e.g. a wrong token or a manifest mismatch: one line, no traceback
        print(f"error: the coordinator answered {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 2
    except (FedseedError, ConnectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        channel.close()
    print_json_line(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
