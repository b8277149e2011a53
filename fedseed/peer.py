"""Serverless one-byte SPSA (Just One Byte): peers under ``torchrun`` exchange one byte per step.

    torchrun --nproc-per-node 3 -m fedseed.peer --config sim.toml --steps 20 --out runs/peers

Every peer holds the model and its own data shard (client ``rank`` of the
simulation config's partition, with as many clients as peers). At step ``t``
peer ``p`` evaluates the direction of seed ``derive(PURPOSE_PERTURB, t, p, 0)``
(a keyed hash of (step, peer, sample): nobody picks a seed), encodes its
projected gradient as one byte (log codec, stochastic rounding from a derived
draw), and all peers ``all_gather`` one byte each. Then every peer regenerates
every other peer's seed and applies the same ledger step: ``W`` entries with
``coef_p = float32(-lr · decode(byte_p) / W)``, in peer order, so every
replica holds the same bits. Each peer appends the step to its own ledger
file (fsynced) before the next step.

Every ``hash_every`` steps the peers compare model hashes (a mismatch stops
the run with an error). A peer that dies stalls the others for at most
``timeout_s`` (gloo's collective timeout): they stop with their ledgers saved.
A (re)started peer replays its own ledger, then catches up from the longest
ledger among the peers (entries broadcast as tensors: a ledger, never a
weight copy), so a relaunch, with ``torchrun``'s elastic restarts or by
hand, continues where the run stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from fedseed import simulate, tasks
from fedseed.codec import LogCodec, uniform_from_seed
from fedseed.errors import ConfigError, FedseedError
from fedseed.ledger import Ledger, LedgerEntry, model_hash, replay
from fedseed.logs import print_json_line
from fedseed.manifest import build_manifest
from fedseed.seeds import PURPOSE_PERTURB, PURPOSE_ROUNDING, derive_seed, run_key

log = logging.getLogger(__name__)


class PeerLost(FedseedError):
    """A collective did not complete in time: a peer left or died."""


def peer_seed(key: bytes, step: int, peer: int) -> int:
    return derive_seed(key, PURPOSE_PERTURB, step, peer, 0)


PEER_CONFIG = "peer-config.json"  # the run's settings, beside each peer's ledger and summary


def step_entries(
    key: bytes, step: int, payload: Sequence[int], lr: float, codec: LogCodec
) -> list[LedgerEntry]:
    """The ledger step every peer applies from the gathered bytes (one per peer, peer order)."""
    world = len(payload)
    entries = []
    for peer, byte in enumerate(payload):
        g = codec.decode(byte)
        if g != 0.0:
            coef = float(np.float32(-lr * g / world))
            entries.append(LedgerEntry.make(0, step, peer_seed(key, step, peer), coef))
    return entries


def _ledger_tensor(entries: Sequence[LedgerEntry]) -> torch.Tensor:
    """(step, seed as two 32-bit halves, coef bits) per entry, as int64: exact through any backend."""
    rows = [
        [e.step, e.seed >> 32, e.seed & 0xFFFFFFFF, int(np.float32(e.coef).view(np.uint32))] for e in entries
    ]
    return torch.tensor(rows, dtype=torch.int64).reshape(-1, 4)


def _entries_from(tensor: torch.Tensor) -> list[LedgerEntry]:
    out = []
    for step, hi, lo, bits in tensor.tolist():
        coef = float(np.uint32(bits).view(np.float32))
        out.append(LedgerEntry.make(0, int(step), (int(hi) << 32) | int(lo), coef))
    return out


def _steps_in(ledger: Ledger) -> int:
    return max((e.step for e in ledger), default=-1) + 1


def run_peer(
    config: simulate.SimulationConfig, steps: int, out_dir: Path, hash_every: int = 5
) -> dict[str, object]:
    rank, world = dist.get_rank(), dist.get_world_size()
    config = dataclasses.replace(
        config, num_clients=world, partition=dataclasses.replace(config.partition, num_clients=world)
    )
    shards, test_set = simulate.load_data(config)
    task, engine = simulate.build_model(config)
    key, codec = run_key(config.run_name), LogCodec()
    base = model_hash(engine.model)
    # 1. Everyone runs the same model, trainable set, task and run.
    mine = {"manifest": dataclasses.asdict(build_manifest(engine.model, engine.trainable.names,
                                                            simulate.task_id(config))),
            "run": config.run_name, "lr": config.lr, "eps": config.eps}  # fmt: skip
    everyone: list[object] = [None] * world
    dist.all_gather_object(everyone, mine)
    differs = [peer for peer, theirs in enumerate(everyone) if theirs != mine]
    if differs:
        # Every peer sees the difference; leave together, so that the store's host (rank 0)
        # does not exit while another peer still talks to it.
        dist.barrier()
        other = differs[0]
        raise ConfigError(
            f"peer {other}'s manifest or run differs from peer {rank}'s: {everyone[other]} vs {mine}"
        )
    # 2. My own ledger (a restart), then the longest ledger among us.
    out_dir.mkdir(parents=True, exist_ok=True)
    # What a reader of the folder needs to rebuild the base model (fedseed export / status).
    (out_dir / PEER_CONFIG).write_text(
        json.dumps(simulate.jsonable(dataclasses.asdict(config)), indent=2) + "\n"
    )
    path = out_dir / f"peer-{rank}.ledger.jsonl"
    own = Ledger.load(path) if path.exists() else Ledger()
    replay(engine, list(own))
    counts = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([_steps_in(own)], dtype=torch.int64))
    have = [int(c) for c in counts]
    source = int(np.argmax(have))
    tensor = _ledger_tensor(list(own)) if rank == source else torch.zeros(0, 4, dtype=torch.int64)
    size = torch.tensor([tensor.shape[0]], dtype=torch.int64)
    dist.broadcast(size, src=source)
    if rank != source:
        tensor = torch.zeros(int(size), 4, dtype=torch.int64)
    dist.broadcast(tensor, src=source)
    longest = _entries_from(tensor)
    missing = [e for e in longest if e.step >= _steps_in(own)]
    if missing:
        log.info("peer %d: catching up %d steps from peer %d's ledger", rank, max(have) - have[rank], source)
        replay(engine, missing)
    ledger = Ledger(list(own) + missing, path=None)
    ledger.save(path)
    ledger = Ledger(list(ledger), path=path)
    start = max(have)
    shard = shards[rank]
    # 3. The steps.
    lost = False
    try:
        for step in range(start, steps):
            rng = np.random.Generator(np.random.PCG64([step, rank]))
            picks = rng.choice(len(shard), min(config.batch_size, len(shard)), replace=False)
            encoded = task.encode([shard[i] for i in picks])

            def batch_loss(enc: tasks.Encoded = encoded) -> torch.Tensor:
                return tasks.loss(task, enc)

            result = engine.estimate(peer_seed(key, step, rank), batch_loss)
            byte = 0
            if result is not None:
                draw = uniform_from_seed(derive_seed(key, PURPOSE_ROUNDING, step, rank, 0))
                byte = codec.encode(result.projected_grad, draw)
            gathered = [torch.zeros(1, dtype=torch.uint8) for _ in range(world)]
            dist.all_gather(gathered, torch.tensor([byte], dtype=torch.uint8))
            entries = step_entries(key, step, [int(b) for b in gathered], config.lr, codec)
            if entries:
                engine.apply([e.seed for e in entries], [e.coef for e in entries])
                ledger.extend(entries)
            if (step + 1) % hash_every == 0 or step + 1 == steps:
                hashes: list[object] = [None] * world
                dist.all_gather_object(hashes, model_hash(engine.model))
                if len(set(hashes)) != 1:
                    raise FedseedError(f"step {step}: peers disagree on the model: {hashes}")
                log.info("peer %d: step %d/%d, all %d peers at %s", rank, step + 1, steps, world, hashes[0])
    except (RuntimeError, dist.DistBackendError) as exc:  # gloo's timeout or a closed connection
        lost = True
        log.error("peer %d: a peer was lost at step %d (%s); stopping with the ledger saved", rank, step, exc)
    finally:
        ledger.close()
    loss, accuracy = simulate.evaluate(task, test_set)
    summary = {"peer": rank, "world": world, "steps": _steps_in(ledger), "lost_peer": lost,
               "base_hash": base, "model_hash": model_hash(engine.model), "test_loss": loss,
               "test_accuracy": accuracy, "ledger": str(path)}  # fmt: skip
    # Also a file: peers share one stdout under torchrun, where lines can interleave.
    (out_dir / f"peer-{rank}.summary.json").write_text(json.dumps(summary) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fedseed peer", description="One peer of a serverless one-byte run (launch with torchrun)."
    )
    parser.add_argument("--config", help="simulation config (TOML): model, data, partition, lr, eps")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--hash-every", type=int, default=5)
    parser.add_argument("--timeout-s", type=float, default=60.0, help="longest wait for a lost peer")
    parser.add_argument("--out", default="runs/peers", help="folder for each peer's ledger")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        # One client of the partition per peer: the world size sets the client count.
        world = int(os.environ.get("WORLD_SIZE", "1"))
        overrides = {**simulate.parse_overrides(args.set), "num_clients": world, "clients_per_round": world}
        config = simulate.load_config(Path(args.config) if args.config else None, overrides)
        if args.steps < 1 or args.hash_every < 1 or args.timeout_s <= 0:
            raise ConfigError("--steps, --hash-every and --timeout-s must be positive")
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.timeout_s))
    except FedseedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # no torchrun environment
        print(f"error: launch peers with torchrun (e.g. torchrun --nproc-per-node 3 -m fedseed.peer): {exc}",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        summary = run_peer(config, args.steps, Path(args.out), args.hash_every)
    except FedseedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    print_json_line(summary)
    return 3 if summary["lost_peer"] else 0


if __name__ == "__main__":
    sys.exit(main())
