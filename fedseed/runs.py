"""Reading a finished (or running) run back: what ``fedseed export``, ``status`` and ``report`` share.

A run is one of:

- a ``fedseed simulate`` folder (``config.json``, ``ledger.jsonl``, ``metrics.jsonl``,
  ``summary.json`` once finished);
- a ``fedseed train`` folder (``manifest.json``, ``ledger.jsonl``);
- a coordinator database (SQLite). The core cannot read it (the store belongs to
  the coordinator); readers register under the entry-point group
  ``fedseed.run_readers`` and :func:`open_run` asks them. ``fedseed.server`` installs one.

Every kind becomes a :class:`RunRecord`: how to rebuild the base model, the
ledger, and the model hashes the run recorded on its way (``hashes[n]`` = the
model after its first ``n`` rounds), against which an export is verified.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from torch import nn

from fedseed import data, models, tasks
from fedseed.errors import ConfigError, FedseedError, LedgerError
from fedseed.ledger import Ledger, LedgerEntry
from fedseed.manifest import Manifest
from fedseed.replica import ledger_of
from fedseed.rounds import ClosedRound, FedKSeedRounds
from fedseed.seeds import run_key
from fedseed.settings import RunParams, RunSettings
from fedseed.zo import TrainableSet, ZOEngine


class RunError(FedseedError):
    """A path that is not a readable run, or a run that does not fit its base model."""


@dataclass
class BaseModel:
    """The base model of a run, rebuilt locally (nothing is downloaded)."""

    model: nn.Module
    tokenizer: Any
    engine: ZOEngine


@dataclass
class RunRecord:
    kind: str  # "simulation" | "training" | "coordinator" | "peers"
    path: Path
    name: str
    base_hash: str
    load_base: Callable[[], BaseModel]
    entries: list[LedgerEntry]
    rounds: int  # rounds the ledger covers (a training run is one round of steps)
    hashes: dict[int, str] = field(default_factory=dict)  # n -> hash after the first n rounds
    info: dict[str, Any] = field(default_factory=dict)  # what `fedseed status` prints

    def entries_through(self, rounds: int) -> list[LedgerEntry]:
        """The ledger entries of the first ``rounds`` rounds."""
        return [e for e in self.entries if e.round < rounds]


# -- rebuilding base models -------------------------------------------------------------------


def _exact(names: Sequence[str]) -> list[str]:
    return [f"^{re.escape(n)}$" for n in names]


def build_base(
    model_name: str,
    num_labels: int,
    init_seed: int,
    trainable: Sequence[str],
    distribution: str,
    settings: RunSettings | None = None,
) -> BaseModel:
    """A built-in model with exactly the named trainable tensors (in the run's order)."""
    model, tokenizer = models.load_model(model_name, num_labels=num_labels, init_seed=init_seed)
    chosen = TrainableSet.from_model(model, include=_exact(trainable))
    if chosen.names != list(trainable):
        raise RunError(
            f"the run trains {len(trainable)} tensors that {model_name} does not have in that order "
            f"(found {len(chosen.names)}): was it made with another model?"
        )
    engine = ZOEngine(model, chosen, distribution=distribution)  # type: ignore[arg-type]
    if settings is not None:
        engine.follow(settings)  # a replay applies under the run's mask
    return BaseModel(model, tokenizer, engine)


def model_for_task(task: str) -> tuple[str, int, int]:
    """(model name, number of labels, new-head init seed) behind a manifest's task id.

    Task ids: ``fedseed.tasks.TASK_IDS`` (the plain ``fedseed client``) or
    ``fedseed.simulate.task_id`` (``dataset/model/partition/seedN``, a client built from a
    simulation config).
    """
    for name, task_id in tasks.TASK_IDS.items():
        if task == task_id:
            return name, 2, 0
    parts = task.split("/")
    if len(parts) == 4 and parts[1] in models.MODEL_NAMES and parts[0] in data.DATASETS:
        match = re.fullmatch(r"seed(\d+)", parts[3])
        if match:
            return parts[1], data.NUM_CLASSES[parts[0]], int(match.group(1))
    raise RunError(
        f"cannot tell which base model task {task!r} uses; known: {', '.join(tasks.TASK_IDS.values())} "
        "or dataset/model/partition/seedN"
    )


def entries_from_rounds(params: RunParams, closed: Sequence[ClosedRound]) -> list[LedgerEntry]:
    """Each closed round's ledger step, derived from its reply bytes as every participant does."""
    return ledger_of(FedKSeedRounds(params.settings, run_key(params.run_name)), closed)


# -- the folder kinds ----------------------------------------------------------------------


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"{path} is not valid JSON ({exc}); the run folder is damaged") from exc


def _ledger(folder: Path) -> list[LedgerEntry]:
    path = folder / "ledger.jsonl"
    if not path.exists():
        raise RunError(f"{folder} has no ledger.jsonl")
    try:
        return list(Ledger.load(path))
    except LedgerError as exc:
        raise RunError(str(exc)) from exc


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    """The rows of a simulation's metrics.jsonl (a torn last line, from a crash, is skipped)."""
    path = folder / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


# Keys of a recorded config that replaying its ledger does not need: where and how it ran, and
# the experiment knobs of older versions (Byzantine clients now live in bench/byzantine.py;
# their bytes are in the ledger like any others).
NOT_REPLAYED = ("out_dir", "progress", "byzantine", "attack")


def _simulation(folder: Path) -> RunRecord:
    from fedseed import simulate

    summary = _json(folder / "summary.json") if (folder / "summary.json").exists() else None
    raw = summary["config"] if summary else _json(folder / "config.json")
    raw = {k: v for k, v in raw.items() if k not in NOT_REPLAYED}
    try:
        config = simulate.config_from_dict(raw, str(folder))
    except ConfigError as exc:
        raise RunError(f"{folder}: its config no longer loads ({exc})") from exc
    metrics = read_metrics(folder)
    hashes = {row["round"]: row["start_hash"] for row in metrics if row.get("start_hash")}
    rounds = len(metrics)
    if summary:
        hashes[0] = summary["base_hash"]
        hashes[summary["rounds"]] = summary["final_hash"]
        rounds = summary["rounds"]
    entries = [e for e in _ledger(folder) if e.round < rounds]  # a round whose metrics line was lost

    def load() -> BaseModel:
        task, engine = simulate.build_model(dataclasses.replace(config, threads=0))
        return BaseModel(task.model, task.tokenizer, engine)

    info = {
        "model": config.model, "dataset": config.dataset, "clients": config.num_clients,
        "clients_per_round": config.clients_per_round, "rounds_planned": config.rounds,
        "finished": summary is not None, "metrics": metrics,
    }  # fmt: skip
    base = summary["base_hash"] if summary else hashes.get(0, "")
    return RunRecord("simulation", folder, config.run_name, base, load, entries, rounds, hashes, info)


def _peers(folder: Path) -> RunRecord:
    """A serverless run's folder (fedseed peer): each peer's ledger and summary, one config.

    The model is the longest ledger replayed on the base model; its hash is verified when every
    peer that wrote a summary for that many steps names the same hash."""
    from fedseed import simulate

    raw = {k: v for k, v in _json(folder / "peer-config.json").items() if k not in NOT_REPLAYED}
    try:
        config = simulate.config_from_dict(raw, str(folder))
    except ConfigError as exc:
        raise RunError(f"{folder}: its config no longer loads ({exc})") from exc
    ledgers = sorted(folder.glob("peer-*.ledger.jsonl"))
    if not ledgers:
        raise RunError(f"{folder} holds a peer config but no peer-*.ledger.jsonl")
    try:
        loaded = {path: list(Ledger.load(path)) for path in ledgers}
    except LedgerError as exc:
        raise RunError(str(exc)) from exc
    longest = max(ledgers, key=lambda p: (len({e.step for e in loaded[p]}), str(p)))
    entries = loaded[longest]
    steps = len({e.step for e in entries})
    summaries = [_json(p) for p in sorted(folder.glob("peer-*.summary.json"))]
    at_end = {s["model_hash"] for s in summaries if s.get("steps") == steps}
    hashes = {0: summaries[0]["base_hash"]} if summaries else {}
    if len(at_end) == 1:
        hashes[1] = at_end.pop()

    def load() -> BaseModel:
        task, engine = simulate.build_model(dataclasses.replace(config, threads=0))
        return BaseModel(task.model, task.tokenizer, engine)

    info = {
        "model": config.model, "dataset": config.dataset, "peers": len(ledgers), "steps": steps,
        "finished": bool(summaries) and not any(s.get("lost_peer") for s in summaries),
        "metrics": [], "ledger": longest.name,
    }  # fmt: skip
    return RunRecord("peers", folder, config.run_name, hashes.get(0, ""), load, entries, 1, hashes, info)


def _training(folder: Path) -> RunRecord:
    from fedseed.train import TrainConfig

    manifest = _json(folder / "manifest.json")
    raw = {k: v for k, v in manifest["config"].items() if k not in ("out_dir", "progress")}
    config = TrainConfig(
        **{
            **raw,
            "trainable": tuple(raw.get("trainable", ())),
            "lora_targets": tuple(raw.get("lora_targets", ())),
        }
    )

    def load() -> BaseModel:
        if not config.lora_rank:
            return build_base(config.model, 2, config.seed, manifest["trainable"], manifest["distribution"])
        from fedseed import train

        task = train.build_task(config)  # the adapters, from the run key, as the run built them
        chosen = TrainableSet.from_model(task.model, include=_exact(manifest["trainable"]))
        engine = ZOEngine(task.model, chosen, distribution=manifest["distribution"])
        return BaseModel(task.model, task.tokenizer, engine)

    info = {
        "model": config.model, "dataset": f"vader-{config.domain}", "steps": config.steps,
        "accuracy_before": manifest["accuracy_before"], "accuracy_after": manifest["accuracy_after"],
        "finished": True,
    }  # fmt: skip
    hashes = {0: manifest["base_hash"], 1: manifest["final_hash"]}
    return RunRecord(
        "training", folder, config.run_name, manifest["base_hash"], load, _ledger(folder), 1, hashes, info
    )


def record_from_coordinator(
    path: Path,
    manifest: Manifest,
    params: RunParams,
    closed: Sequence[ClosedRound],
    info: dict[str, Any],
    final_hash: str = "",
) -> RunRecord:
    """A coordinator database's run (the database reader lives with the coordinator).

    ``final_hash``: the model after every closed round, as the clients' majority reported it
    (rounds record only the hash they *started* from, so the last one has no other record)."""
    model_name, num_labels, init_seed = model_for_task(manifest.task)
    hashes = {r.round_index: r.start_hash for r in closed if r.start_hash}
    hashes[0] = manifest.base_model_hash
    if final_hash:
        hashes[len(closed)] = final_hash

    def load() -> BaseModel:
        return build_base(
            model_name, num_labels, init_seed, manifest.trainable, "rademacher", params.settings
        )

    entries = entries_from_rounds(params, closed)
    info = {"model": model_name, "task": manifest.task, **info}
    return RunRecord("coordinator", path, params.run_name, manifest.base_model_hash, load, entries,
                     len(closed),
                     hashes, info)  # fmt: skip


def open_run(path: Path) -> RunRecord:
    """The run at ``path``: a run folder, or a file some installed reader understands."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"no run at {path} (expected a run folder or a coordinator database)")
    if path.is_dir():
        if (path / "summary.json").exists() or (path / "config.json").exists():
            return _simulation(path)
        if (path / "manifest.json").exists():
            return _training(path)
        if (path / "peer-config.json").exists():
            return _peers(path)
        raise RunError(
            f"{path} is not a run folder: it has neither summary.json/config.json (fedseed simulate), "
            "manifest.json (fedseed train) nor peer-config.json (fedseed peer)"
        )
    readers = sorted(entry_points(group="fedseed.run_readers"), key=lambda ep: ep.name)
    for reader in readers:
        record = reader.load()(path)
        if record is not None:
            return record
    raise RunError(
        f"{path} is a file but no installed reader understands it "
        f"(readers: {', '.join(ep.name for ep in readers) or 'none'})"
    )
