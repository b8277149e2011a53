"""``fedseed simulate``: many FedKSeed clients in one process, sharing one model copy.

ZO clients differ only by their data and the seeds they are told to use, and
every client's round ends where it started (:mod:`fedseed.local`), so the
virtual clients of a round can run one after another on a single model: memory
is one model plus the data shards, whatever the number of clients.

Each round runs the same code as a deployment: the coordinator's selection
policy (:mod:`fedseed.selection`) over the clients' reported scores, each
selected client's :meth:`~fedseed.local.LocalClient.train_round`, then
:meth:`~fedseed.rounds.FedKSeedRounds.aggregate` over the reply bytes and the
agreed ledger step. A client may drop out of a round (a derived draw against
``dropout``), exactly as a straggler past the deadline.

Output in ``out_dir/run_name``: ``ledger.jsonl`` (every entry, appended and
fsynced as rounds close), ``metrics.jsonl`` (one line per round: selected and
replied clients, mean score, bytes that would travel, held-out loss/accuracy
when evaluated, wall time), ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from fedseed import data, lora, models, partition, privacy, tasks
from fedseed.curriculum import CurriculumConfig
from fedseed.errors import ConfigError
from fedseed.ledger import Ledger, model_hash
from fedseed.local import LocalClient, RoundResult
from fedseed.replica import Replica
from fedseed.rounds import ClosedRound, FedKSeedRounds
from fedseed.seeds import PURPOSE_DROPOUT, derive_seed, run_key
from fedseed.selection import Candidate, SelectionConfig, select
from fedseed.settings import RunSettings, settings_of
from fedseed.zo import TrainableSet, ZOEngine

log = logging.getLogger(__name__)

ENGINES = ("inprocess", "flower")


# Bytes per round besides the scalars, as measured on the gRPC wire (bench/wire_bytes.py):
# a task message down and a submit envelope up; sync carries the other clients' bytes.
TASK_OVERHEAD_B = 40
SUBMIT_OVERHEAD_B = 120


def check_host_port(name: str, address: str) -> tuple[str, int]:
    """``host:port`` (an IPv6 host in brackets), or a ConfigError that shows the expected form."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in address:
        raise ConfigError(f"{name} must be host:port (e.g. 10.0.0.5:6379), got {address!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class SimulationConfig(RunSettings):
    """A simulation: the run's settings (RunSettings, the same keys at the top level) and its world."""

    run_name: str = "simulate-default"  # names the run folder; every seed and schedule derives from it
    model: str = "smollm2"  # smollm2 (label words) | minilm (new head) | minilm-proto (class prototypes)
    dataset: str = "vader-movies"  # vader-movies|tweets|amazon|nyt, vader-all (4 domains), bbcnews (minilm)
    examples: int = 1200  # use the first N of the dataset's seeded shuffle (0 = all)
    test_size: int = 128  # held-out examples (never in any client's shard)
    num_clients: int = 20  # virtual clients, one data shard each
    clients_per_round: int = 4  # clients selected per round
    rounds: int = 10  # rounds to run
    # RunSettings' keys, with defaults sized for a 2-core simulation (the rest keep RunSettings').
    local_steps: int = 5  # ZO steps per selected client per round: one byte each on the wire
    lr: float = 0.1  # ZO-SGD learning rate
    eps: float = 1e-3  # SPSA perturbation scale
    dp_delta: float = 1e-5  # DP: the delta at which epsilon is reported
    batch_size: int = 8  # examples per ZO step
    max_length: int = 48  # tokens per example
    trainable: tuple[str, ...] = ()  # a preset (all | norms-biases | default) or regexes; empty = default
    # ZO over LoRA adapters (fedseed.lora): rank r > 0 wraps the model in peft adapters initialised
    # from the run key; the adapters train, plus `trainable` if it is set explicitly.
    lora_rank: int = 0  # LoRA rank r; 0 = no adapters
    lora_alpha: int = 16  # LoRA scale alpha (the update is alpha/r x B A)
    lora_targets: tuple[str, ...] = ()  # module names to adapt; empty = the attention's query and value
    dropout: float = 0.0  # probability that a selected client never replies in a round
    eval_every: int = 5  # rounds between held-out evaluations (the last round always)
    seed: int = 0  # data shuffle, partition, new-head init
    threads: int = 0  # torch threads; 0 = torch's default
    device: str = "cpu"  # where the model and batches live: cpu | cuda | cuda:N (same bits: spec v1)
    engine: str = "inprocess"  # inprocess | flower (Flower's Simulation Engine, Ray)
    ray_address: str = ""  # flower engine: a running Ray cluster's head (host:port); empty = start one here
    out_dir: Path = Path("runs")  # parent of the run folder
    progress: bool = True  # a progress bar on a terminal, a log line per round elsewhere
    partition: partition.PartitionConfig = field(default_factory=partition.PartitionConfig)  # table, below
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)  # table, below
    selection: SelectionConfig = field(default_factory=SelectionConfig)  # table, below

    def __post_init__(self) -> None:
        if self.model not in models.MODEL_NAMES:
            raise ConfigError(f"unknown model {self.model!r}; choose one of {', '.join(models.MODEL_NAMES)}")
        if self.dataset not in data.DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(data.DATASETS)}")
        if self.engine not in ENGINES:
            raise ConfigError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        if self.model == "smollm2" and data.NUM_CLASSES[self.dataset] != 2:
            raise ConfigError(
                f"model smollm2 uses binary label words; {self.dataset} has more classes: use minilm"
            )
        for name in ("num_clients", "clients_per_round", "rounds", "local_steps", "batch_size", "test_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.ray_address and self.engine != "flower":
            raise ConfigError(f"ray_address attaches Flower's engine to Ray; engine is {self.engine!r}")
        if self.ray_address:
            check_host_port("ray_address", self.ray_address)
        if self.ray_address and self.curriculum.needs_scores:
            raise ConfigError(
                f"a {self.curriculum.ordering!r} ordering keeps each client's difficulty scores in the Ray "
                "worker that scored it, which a cluster cannot pin; use ordering vanilla or random, or a "
                "local Ray (no ray_address)"
            )
        if self.clients_per_round > self.num_clients:
            raise ConfigError(
                f"clients_per_round ({self.clients_per_round}) exceeds num_clients ({self.num_clients})"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        models.trainable_patterns(self.model, self.trainable)  # an unknown preset or a bad regex, now
        lora.check_settings(self.lora_rank, self.lora_alpha, self.lora_targets)
        check_device(self.device)
        if self.partition.num_clients != self.num_clients:  # one setting, at the top level
            object.__setattr__(
                self, "partition", dataclasses.replace(self.partition, num_clients=self.num_clients)
            )
        if not 0 < self.dp_delta < 1:
            raise ConfigError(f"dp_delta must be in (0, 1), got {self.dp_delta}")
        super().__post_init__()

    @property
    def fedkseed(self) -> RunSettings:
        """The run's settings alone: what a coordinator of the same run is given."""
        return settings_of(self)


def load_config(path: Path | None, overrides: Mapping[str, Any] | None = None) -> SimulationConfig:
    """A config from TOML (top-level keys plus [partition], [curriculum], [selection] tables)."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"no config file at {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    raw.update(overrides or {})
    return config_from_dict(raw, str(path or "config"))


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs (values parsed as TOML; bare words as strings; ``a.b=`` for tables)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        table, dot, leaf = name.partition(".")
        if dot:
            out.setdefault(table, {})[leaf] = value
        else:
            out[name] = value
    return out


def config_from_dict(raw: Mapping[str, Any], where: str = "config") -> SimulationConfig:
    raw = dict(raw)
    known = {f.name for f in dataclasses.fields(SimulationConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
        )
    nested: dict[str, Any] = {}
    tables = {
        "partition": partition.PartitionConfig,
        "curriculum": CurriculumConfig,
        "selection": SelectionConfig,
    }
    for name, cls in tables.items():
        values = dict(raw.pop(name, {}))
        if name == "partition":
            values.setdefault("num_clients", raw.get("num_clients", SimulationConfig.num_clients))
            values.setdefault("seed", raw.get("seed", SimulationConfig.seed))
        valid = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(values) - valid)
        if bad:
            raise ConfigError(
                f"{where}: unknown [{name}] setting(s) {', '.join(bad)}; valid: {', '.join(sorted(valid))}"
            )
        nested[name] = cls(**values)
    for name in ("trainable", "lora_targets"):
        if name in raw:
            if isinstance(raw[name], str) or not isinstance(raw[name], (list, tuple)):
                raise ConfigError(
                    f"{where}: {name} must be a list of strings, e.g. [{json.dumps(raw[name])}]"
                )
            raw[name] = tuple(raw[name])
    if "out_dir" in raw:
        raw["out_dir"] = Path(raw["out_dir"])
    return SimulationConfig(**raw, **nested)


@dataclass
class SimulationSetup:
    """What a simulation (in-process or Flower) is built from, shared by both engines."""

    config: SimulationConfig
    task: tasks.Task
    engine: ZOEngine
    clients: list[LocalClient]
    test_set: list[data.Example]
    rounds: FedKSeedRounds


def client_name(index: int) -> str:
    return f"client-{index:04d}"


def load_data(config: SimulationConfig) -> tuple[list[list[data.Example]], list[data.Example]]:
    """(each client's shard, the held-out set): a pure function of the config.

    A client process rebuilds its own shard from the same config and its index
    (``fedseed client --config FILE --client-index I``); no data travels.
    """
    examples = data.load_dataset(config.dataset)
    order = np.random.Generator(np.random.PCG64(config.seed)).permutation(len(examples))
    shuffled = [examples[i] for i in order]
    test_set = shuffled[: config.test_size]
    pool = shuffled[config.test_size :]
    if config.examples:
        pool = pool[: config.examples]
    if len(pool) < config.num_clients:
        raise ConfigError(f"{config.num_clients} clients but only {len(pool)} training examples")
    shards = partition.partition([e.label for e in pool], config.partition, [e.domain for e in pool])
    return [[pool[j] for j in shard] for shard in shards], test_set


def check_device(device: str) -> None:
    """A device this machine has, or one line saying why not."""
    if device == "cpu":
        return
    if not re.fullmatch(r"cuda(:\d+)?", device):
        raise ConfigError(f"device must be cpu, cuda or cuda:N, got {device!r}")
    if not torch.cuda.is_available():
        raise ConfigError(f'device {device!r}: this machine has no CUDA device (use device = "cpu")')
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")


def build_model(config: SimulationConfig) -> tuple[tasks.Task, ZOEngine]:
    if config.threads:
        torch.set_num_threads(config.threads)
    model, tokenizer = models.load_model(
        config.model, num_labels=data.NUM_CLASSES[config.dataset], init_seed=config.seed
    )
    patterns = list(models.trainable_patterns(config.model, config.trainable))
    if config.lora_rank:  # adapters built on the CPU from the run key, then moved with the model
        model = lora.add_adapters(
            model, config.model, config.lora_rank, config.lora_alpha, config.lora_targets, config.run_name
        )
        patterns = lora.trainable_patterns(model, patterns if config.trainable else [])
    model = model.to(config.device)  # the base hash is of the bits, wherever they are
    task = tasks.for_model(
        config.model, model, tokenizer, config.max_length, data.NUM_CLASSES[config.dataset]
    )
    trainable = TrainableSet.from_model(model, include=patterns)
    engine = ZOEngine(model, trainable)
    engine.follow(config)  # the run's eps and mask (a SimulationConfig is a RunSettings)
    return task, engine


def task_id(config: SimulationConfig) -> str:
    """What the run's manifest calls its task (model and data must match across participants)."""
    return f"{config.dataset}/{config.model}/{config.partition.scheme}/seed{config.seed}"


def build(config: SimulationConfig) -> SimulationSetup:
    shards, test_set = load_data(config)
    task, engine = build_model(config)
    rounds = FedKSeedRounds(config.fedkseed, run_key(config.run_name))
    clients = [
        LocalClient(
            client_name(i), engine, task, shard, rounds, config.batch_size, config.curriculum,
            total_rounds=config.rounds,
        )
        for i, shard in enumerate(shards)
    ]  # fmt: skip
    return SimulationSetup(config, task, engine, clients, test_set, rounds)


def evaluate(task: tasks.Task, examples: list[data.Example]) -> tuple[float, float]:
    """(mean loss, accuracy) on held-out examples."""
    losses, correct = [], 0
    for start in range(0, len(examples), 32):
        encoded = task.encode(examples[start : start + 32])
        with torch.no_grad():
            logits = task.logits(encoded).float()
        losses.append(float(torch.nn.functional.cross_entropy(logits, encoded["labels"], reduction="sum")))
        correct += int((logits.argmax(-1) == encoded["labels"]).sum())
    return sum(losses) / len(examples), correct / len(examples)


def dropped(key: bytes, round_index: int, slot: int, probability: float) -> bool:
    if probability <= 0:
        return False
    return derive_seed(key, PURPOSE_DROPOUT, round_index, slot) < probability * 2.0**64


@dataclass
class SimulationReport:
    run_dir: Path
    final_hash: str
    base_hash: str
    rounds: int
    client_steps: int
    loss_before: float
    accuracy_before: float
    loss_after: float
    accuracy_after: float
    bytes_up: int
    bytes_down: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


class Transport(Protocol):
    """How the driver reaches its clients: in process, or through Flower's engine."""

    def join(self, with_scores: bool) -> dict[str, tuple[int, float | None]]:
        """Every client's name -> (sample count, score at join or None)."""
        ...

    def train(
        self,
        round_index: int,
        slots: dict[int, str],
        sample_counts: tuple[int, ...],
        history: list[ClosedRound],
    ) -> dict[int, RoundResult]:
        """Run the round's local work of the clients in ``slots`` (slot -> name); replies by slot."""
        ...


@dataclass
class InProcess:
    """Virtual clients sharing the driver's own model copy."""

    clients: list[LocalClient]

    def join(self, with_scores: bool) -> dict[str, tuple[int, float | None]]:
        return {c.name: (c.num_samples, c.initial_score() if with_scores else None) for c in self.clients}

    def train(
        self,
        round_index: int,
        slots: dict[int, str],
        sample_counts: tuple[int, ...],
        history: list[ClosedRound],
    ) -> dict[int, RoundResult]:
        by_name = {c.name: c for c in self.clients}
        return {
            slot: by_name[name].train_round(round_index, slot, sample_counts) for slot, name in slots.items()
        }


def run_simulation(config: SimulationConfig, setup: SimulationSetup | None = None) -> SimulationReport:
    """The in-process engine (``engine = "inprocess"``)."""
    if config.engine != "inprocess":
        raise ConfigError(
            f"run_simulation is the in-process engine; {config.engine!r} runs through its plugin"
        )
    setup = setup or build(config)
    return drive(config, setup, InProcess(setup.clients))


@dataclass
class _Tally:
    """What a run accumulates over its rounds (for metrics.jsonl, the report and privacy)."""

    scores: dict[str, float | None]  # each client's latest reported score (selection reads them)
    history: list[ClosedRound] = field(default_factory=list)  # the closed rounds, as they travel
    client_steps: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    steps_by_client: dict[str, int] = field(default_factory=dict)


def drive(config: SimulationConfig, setup: SimulationSetup, transport: Transport) -> SimulationReport:
    """The round loop every engine shares: select, train, aggregate, apply, record.

    ``setup.engine`` is the driver's model: it follows the agreed ledger (for
    evaluation and the final hash). In process it is also the clients' model.
    """
    # 1. The run folder: config.json first, so that a run that stops early still reads back.
    run_dir = config.out_dir / config.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("ledger.jsonl", "metrics.jsonl", "summary.json"):  # no stale summary of an old run
        (run_dir / name).unlink(missing_ok=True)
    (run_dir / "config.json").write_text(json.dumps(jsonable(dataclasses.asdict(config)), indent=2) + "\n")

    # 2. Where we start: the base model's hash and held-out metrics; the clients join. They
    # report a score at join, measured only for score-driven policies (uniform selects the same
    # clients either way).
    base_hash = model_hash(setup.engine.model)
    loss_before, acc_before = evaluate(setup.task, setup.test_set)
    log.info("before: held-out loss %.4f, accuracy %.4f", loss_before, acc_before)
    joined = transport.join(with_scores=config.selection.policy != "uniform")
    tally = _Tally(scores={name: score for name, (_, score) in joined.items()})
    replica = Replica(setup.rounds, setup.engine)  # the driver's copy follows the agreed rounds
    started = time.perf_counter()
    loss_after, acc_after = loss_before, acc_before

    # 3. The rounds, each in the ledger and metrics.jsonl before the next one starts.
    on_terminal = config.progress and sys.stderr.isatty()
    with (
        Ledger(path=run_dir / "ledger.jsonl") as ledger,
        open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as metrics,
        tqdm(total=config.rounds, disable=not on_terminal, desc="rounds", unit="round") as bar,
    ):
        for r in range(config.rounds):
            row = _run_round(r, config, setup, transport, replica, joined, tally, ledger)
            if (r + 1) % config.eval_every == 0 or r + 1 == config.rounds:
                loss_after, acc_after = evaluate(setup.task, setup.test_set)
                row.update(test_loss=loss_after, test_accuracy=acc_after)
                log.info("round %d: held-out loss %.4f, accuracy %.4f", r, loss_after, acc_after)
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
            bar.update(1)
            if config.progress and not on_terminal:
                log.info(
                    "round %d/%d closed: %d replies, %d entries",
                    r + 1, config.rounds, len(row["replied"]), row["entries"],
                )  # fmt: skip

    # 4. Where we ended: summary.json (its presence marks the run finished).
    report = SimulationReport(
        run_dir, model_hash(setup.engine.model), base_hash, config.rounds, tally.client_steps,
        loss_before, acc_before, loss_after, acc_after, tally.bytes_up, tally.bytes_down,
        time.perf_counter() - started,
    )  # fmt: skip
    summary = {
        "config": jsonable(dataclasses.asdict(config)), **report.to_dict(),
        "trainable_params": setup.engine.trainable.numel,
        "model_params": sum(p.numel() for p in setup.engine.model.parameters()),  # tied weights once
    }  # fmt: skip
    if config.dp_clip > 0:
        summary["privacy"] = privacy_report(config, setup, tally.steps_by_client)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return report


def _run_round(
    r: int,
    config: SimulationConfig,
    setup: SimulationSetup,
    transport: Transport,
    replica: Replica,
    joined: Mapping[str, tuple[int, float | None]],
    tally: _Tally,
    ledger: Ledger,
) -> dict[str, Any]:
    """One round: select, train the live slots, close it from their bytes, apply and log its
    ledger step; returns its metrics row (held-out metrics are added by the caller)."""
    round_started = time.perf_counter()
    key = setup.rounds.key
    # a. Selection over the clients' latest scores; dropped slots never reply.
    candidates = [Candidate(name, n, tally.scores[name]) for name, (n, _) in sorted(joined.items())]
    chosen = select(config.selection, key, r, config.rounds, candidates, config.clients_per_round)
    counts = tuple(joined[n][0] for n in chosen)
    live = {slot: name for slot, name in enumerate(chosen) if not dropped(key, r, slot, config.dropout)}
    # b. Local training: each live slot's bytes, start hash and score.
    results = transport.train(r, live, counts, tally.history)
    replies = {slot: results[slot].scalars for slot in sorted(results)}
    for slot, result in results.items():
        if np.isfinite(result.score):
            tally.scores[chosen[slot]] = result.score
    # c. The closed round as it travels, and its agreed ledger step, applied and logged.
    start_hashes = {res.start_hash for res in results.values()}
    start_hash = start_hashes.pop() if len(start_hashes) == 1 else ""
    tally.history.append(ClosedRound(r, counts, tuple(replies), b"".join(replies.values()), start_hash))
    entries = replica.apply(tally.history[-1])
    diagnostics = setup.rounds.last
    for e in entries:
        ledger.append(e)
    # d. What it cost: client-steps and bytes (as measured on the gRPC wire, per message).
    tally.client_steps += len(replies) * config.local_steps
    for slot in replies:
        tally.steps_by_client[chosen[slot]] = tally.steps_by_client.get(chosen[slot], 0) + config.local_steps
    up = sum(len(p) + SUBMIT_OVERHEAD_B for p in replies.values())
    down = len(chosen) * (TASK_OVERHEAD_B + sum(len(p) for p in replies.values()))
    tally.bytes_up, tally.bytes_down = tally.bytes_up + up, tally.bytes_down + down
    return {
        "round": r, "start_hash": start_hash,
        "selected": chosen, "replied": [chosen[s] for s in replies],
        "mean_score": _mean_known([tally.scores[n] for n in chosen]), "entries": len(entries),
        "client_steps": tally.client_steps, "bytes_up": up, "bytes_down": down,
        "bytes_total": tally.bytes_up + tally.bytes_down, "seconds": time.perf_counter() - round_started,
        "clip_bound": diagnostics.clip_bound if np.isfinite(diagnostics.clip_bound) else None,
        "clipped": sum(diagnostics.clipped.values()),
        "anomaly": {chosen[s]: round(v, 4) for s, v in diagnostics.anomaly.items()},
        "rejected": [chosen[s] for s in diagnostics.rejected],
    }  # fmt: skip


def privacy_report(
    config: SimulationConfig, setup: SimulationSetup, steps_by_client: Mapping[str, int]
) -> dict[str, Any]:
    """Each client's epsilon at ``dp_delta`` for the steps it took; the run reports the largest."""
    per_client = {
        c.name: privacy.epsilon(
            config.dp_noise, min(1.0, config.batch_size / c.num_samples), steps_by_client.get(c.name, 0),
            config.dp_delta,
        )
        for c in setup.clients
    }  # fmt: skip
    worst = max(per_client, key=lambda name: per_client[name])
    return {
        "epsilon": per_client[worst], "delta": config.dp_delta, "worst_client": worst,
        "steps_of_worst_client": steps_by_client.get(worst, 0), "dp_clip": config.dp_clip,
        "dp_noise": config.dp_noise, "accountant": "RDP (dp-accounting), Poisson-sampled Gaussian",
    }  # fmt: skip


def _mean_known(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value
