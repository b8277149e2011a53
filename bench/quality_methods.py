"""The methods bench/quality.py compares, each on the same task, data, partition and test split.

Every method returns a curve: points of (client-steps, bytes on the wire, held-out loss and
accuracy), the first at step 0. A *client-step* is one minibatch one participant processed:
two forward passes for zeroth-order (ZO) methods, a forward and a backward pass (counted as
three forwards, the usual estimate) for first-order (FO) ones.

- ``adamw-full`` / ``adamw-lora``: centralized FO fine-tuning on the union of all clients'
  data (``torch.optim.AdamW``; LoRA adapters from ``peft``): the ceiling.
- ``fedavg-full`` / ``fedavg-lora``: FedAvg with local AdamW steps, the same clients selected
  per round as fedseed's uniform policy; bytes = the float32 tensors a client downloads
  and uploads each round (the model or the adapters + head).
- ``mezo``: centralized MeZO as its reference code does it: Gaussian ``z`` regenerated from
  the global torch RNG reseeded per step, perturbations applied in place.
- ``fedkseed`` / ``fedkseed-pro``: FedKSeed as published: K-seed pool, Gaussian ``z``,
  float32 scalars, no clipping; Pro samples seeds by importance. Bytes as the paper counts
  them per client per round: the K accumulated scalars down (4K) and (seed, scalar) pairs up.
- ``fedseed`` (one byte per step, Rademacher stream, clipping on), ``fedseed-curriculum``
  (loss-scored easy-first data), ``fedseed-disparity`` (disparity-aware client selection):
  ``fedseed simulate`` itself; bytes are what its gRPC wire would carry.

ZO methods train the model's default trainable set (fedseed.train.DEFAULT_TRAINABLE); the
federated ZO arms of one (task, partition, seed) share the run name, so they draw the same
pool seeds, schedules and minibatches: they differ only in what the method changes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from fedseed import simulate, tasks
from fedseed.data import Example
from fedseed.local import LocalClient
from fedseed.report import fedkseed_round_bytes
from fedseed.rounds import FedKSeedRounds
from fedseed.seeds import run_key
from fedseed.selection import Candidate, select
from fedseed.zo import ZOEngine

FO_FORWARD_EQUIVALENTS = 3  # forward + backward ~ 3 forwards
ZO_FORWARD_EQUIVALENTS = 2
FLOAT32_B = 4


@dataclass(frozen=True)
class Budget:
    """How much work each family of methods gets (client-steps = rounds x clients x local steps)."""

    zo_rounds: int
    zo_local_steps: int
    fo_rounds: int
    fo_local_steps: int
    evals: int = 4  # held-out evaluations after step 0


@dataclass(frozen=True)
class FOSettings:
    lr_full: float
    lr_lora: float
    lr_same: float = 1e-3  # AdamW on exactly ZO's trainable set (norms, biases: a larger rate)
    lora_r: int = 8
    lora_alpha: int = 16
    weight_decay: float = 0.0


@dataclass
class Point:
    client_steps: int
    bytes: int
    loss: float
    accuracy: float


@dataclass
class Curve:
    points: list[Point]
    forwards_per_step: int
    bytes_per_client_round: float
    trainable_params: int
    seconds: float = 0.0

    def add(self, steps: int, sent: int, task: tasks.Task, test_set: list[Example]) -> None:
        loss, accuracy = simulate.evaluate(task, test_set)
        self.points.append(Point(steps, sent, loss, accuracy))


def eval_rounds(rounds: int, evals: int) -> set[int]:
    """Rounds (1-based, after which) to evaluate: ``evals`` of them, evenly spread, the last included."""
    return {max(1, round(rounds * (i + 1) / evals)) for i in range(evals)}


# -- data and models --------------------------------------------------------------------


def union(shards: list[list[Example]]) -> list[Example]:
    return [e for shard in shards for e in shard]


def batches(examples: list[Example], size: int, seed: int | list[int]) -> Iterator[list[Example]]:
    rng = np.random.Generator(np.random.PCG64(seed))
    while True:
        picks = rng.choice(len(examples), min(size, len(examples)), replace=False)
        yield [examples[i] for i in picks]


def fresh_task(config: simulate.SimulationConfig) -> tuple[tasks.Task, ZOEngine]:
    torch.manual_seed(config.seed)
    return simulate.build_model(config)


def with_lora(task: tasks.Task, model_name: str, fo: FOSettings) -> tasks.Task:
    """The task with ``peft`` LoRA adapters on the attention's query and value projections."""
    from peft import LoraConfig, TaskType, get_peft_model

    if model_name == "smollm2":
        lora = LoraConfig(
            task_type=TaskType.CAUSAL_LM, r=fo.lora_r, lora_alpha=fo.lora_alpha,
            target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
        )  # fmt: skip
    else:  # a new classification head trains in full beside the adapters (peft's SEQ_CLS default)
        lora = LoraConfig(
            task_type=TaskType.SEQ_CLS, r=fo.lora_r, lora_alpha=fo.lora_alpha,
            target_modules=["query", "value"], lora_dropout=0.0,
        )  # fmt: skip
    task.model = get_peft_model(task.model, lora)
    return task


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def fo_step(task: tasks.Task, optimizer: torch.optim.Optimizer, batch: list[Example]) -> None:
    encoded = task.encode(batch)
    loss = F.cross_entropy(task.logits(encoded).float(), encoded["labels"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def fo_model(config: simulate.SimulationConfig, variant: str, fo: FOSettings) -> tuple[tasks.Task, float]:
    """variant full: every parameter; lora: peft adapters; same: exactly ZO's trainable set (the
    ceiling of that set: what separates the estimator from the set's capacity)."""
    task, engine = fresh_task(config)
    if variant == "lora":
        return with_lora(task, config.model, fo), fo.lr_lora
    chosen = {id(t.param) for t in engine.trainable.tensors}
    for p in task.model.parameters():
        p.requires_grad_(variant == "full" or id(p) in chosen)
    return task, fo.lr_full if variant == "full" else fo.lr_same


# -- first order ------------------------------------------------------------------------


def adamw_centralized(
    config: simulate.SimulationConfig, variant: str, budget: Budget, fo: FOSettings
) -> Curve:
    shards, test_set = simulate.load_data(config)
    task, lr = fo_model(config, variant, fo)
    params = trainable_parameters(task.model)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=fo.weight_decay)
    steps = budget.fo_rounds * config.clients_per_round * budget.fo_local_steps
    curve = Curve([], FO_FORWARD_EQUIVALENTS, 0.0, sum(p.numel() for p in params))
    curve.add(0, 0, task, test_set)
    checkpoints = {round(steps * (i + 1) / budget.evals) for i in range(budget.evals)}
    stream = batches(union(shards), config.batch_size, config.seed)
    for step in range(1, steps + 1):
        fo_step(task, optimizer, next(stream))
        if step in checkpoints:
            curve.add(step, 0, task, test_set)
    return curve


def fedavg(config: simulate.SimulationConfig, variant: str, budget: Budget, fo: FOSettings) -> Curve:
    """FedAvg (McMahan et al.): each selected client starts from the global weights, runs local
    AdamW steps (fresh optimizer state each round), and the server averages the new weights
    by sample count. Only trainable tensors travel (all of them for full fine-tuning)."""
    shards, test_set = simulate.load_data(config)
    task, lr = fo_model(config, variant, fo)
    params = dict((n, p) for n, p in task.model.named_parameters() if p.requires_grad)
    numel = sum(p.numel() for p in params.values())
    per_client_round = 2 * FLOAT32_B * numel  # the weights down, the new weights up
    curve = Curve([], FO_FORWARD_EQUIVALENTS, per_client_round, numel)
    curve.add(0, 0, task, test_set)
    key = run_key(config.run_name)
    candidates = [Candidate(simulate.client_name(i), len(s)) for i, s in enumerate(shards)]
    at = eval_rounds(budget.fo_rounds, budget.evals)
    steps = sent = 0
    for r in range(budget.fo_rounds):
        chosen = select(config.selection, key, r, budget.fo_rounds, candidates, config.clients_per_round)
        start = {n: p.detach().clone() for n, p in params.items()}
        total = {n: torch.zeros_like(p) for n, p in params.items()}
        weight_sum = 0
        for slot, name in enumerate(chosen):
            shard = shards[int(name.rsplit("-", 1)[1])]
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(start[n])
            optimizer = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=fo.weight_decay)
            stream = batches(shard, config.batch_size, [config.seed, r, slot])
            for _ in range(budget.fo_local_steps):
                fo_step(task, optimizer, next(stream))
            with torch.no_grad():
                for n, p in params.items():
                    total[n] += len(shard) * p
            weight_sum += len(shard)
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(total[n] / weight_sum)
        steps += len(chosen) * budget.fo_local_steps
        sent += len(chosen) * per_client_round
        if r + 1 in at:
            curve.add(steps, sent, task, test_set)
    return curve


# -- zeroth order -----------------------------------------------------------------------


def mezo(config: simulate.SimulationConfig, budget: Budget) -> Curve:
    """MeZO's reference loop: z ~ N(0, I) from the global RNG seeded per step, in place:
    +eps -> f+, -2eps -> f-, +eps (restored), then theta -= lr * g * z with z regenerated."""
    shards, test_set = simulate.load_data(config)
    task, engine = fresh_task(config)
    params = [t.param for t in engine.trainable.tensors]
    steps = budget.zo_rounds * config.clients_per_round * budget.zo_local_steps
    curve = Curve([], ZO_FORWARD_EQUIVALENTS, 0.0, engine.trainable.numel)
    curve.add(0, 0, task, test_set)
    checkpoints = {round(steps * (i + 1) / budget.evals) for i in range(budget.evals)}
    stream = batches(union(shards), config.batch_size, config.seed)
    seeds = np.random.Generator(np.random.PCG64(config.seed)).integers(0, 2**31 - 1, size=steps)

    def perturb(seed: int, scale: float) -> None:
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in params:
                p.add_(torch.normal(mean=0.0, std=1.0, size=p.shape, dtype=p.dtype), alpha=scale)

    for step in range(1, steps + 1):
        encoded = task.encode(next(stream))
        seed = int(seeds[step - 1])
        perturb(seed, config.eps)
        loss_plus = float(tasks.loss(task, encoded))
        perturb(seed, -2 * config.eps)
        loss_minus = float(tasks.loss(task, encoded))
        perturb(seed, config.eps)
        g = (loss_plus - loss_minus) / (2 * config.eps)
        perturb(seed, -config.lr * g)
        if step in checkpoints:
            curve.add(step, 0, task, test_set)
    return curve


def fedkseed_published(config: simulate.SimulationConfig, budget: Budget, importance: bool) -> Curve:
    """FedKSeed's algorithm and wire format: Gaussian z from the K-seed pool, float32 scalars
    summed per seed with the clients' sample shares, no clipping; -Pro samples seeds by the
    importance of their recorded scalars (fedseed.rounds.Importance: FedKSeed's formula).
    Schedules and minibatches are fedseed's, so only the method differs."""
    config = dataclasses.replace(config, importance=importance, local_steps=budget.zo_local_steps)
    shards, test_set = simulate.load_data(config)
    task, rademacher = fresh_task(config)
    engine = ZOEngine(task.model, rademacher.trainable, eps=config.eps, distribution="gaussian")
    rounds = FedKSeedRounds(config.fedkseed, run_key(config.run_name), codec=_UNUSED_CODEC)
    clients = [
        LocalClient(simulate.client_name(i), engine, task, s, rounds, config.batch_size)
        for i, s in enumerate(shards)
    ]
    per_client_round = fedkseed_round_bytes(1, config.pool_size, config.local_steps)
    curve = Curve([], ZO_FORWARD_EQUIVALENTS, per_client_round, engine.trainable.numel)
    curve.add(0, 0, task, test_set)
    candidates = [Candidate(c.name, c.num_samples) for c in clients]
    by_name = {c.name: c for c in clients}
    at = eval_rounds(budget.zo_rounds, budget.evals)
    steps = sent = 0
    for r in range(budget.zo_rounds):
        chosen = select(
            config.selection, rounds.key, r, budget.zo_rounds, candidates, config.clients_per_round
        )
        counts = tuple(by_name[n].num_samples for n in chosen)
        plan = rounds.plan(r, counts)
        start = engine.snapshot()
        totals: dict[int, float] = {}
        for slot, name in enumerate(chosen):
            loss_for_step = by_name[name].loss_for(r, slot)
            share = counts[slot] / sum(counts)
            for step, pool_index in enumerate(plan.schedules[slot]):
                seed = rounds.seeds[pool_index]
                result = engine.estimate(seed, loss_for_step(step))
                g = 0.0 if result is None else float(np.float32(result.projected_grad))
                engine.apply([seed], [float(np.float32(-config.lr * g))])
                totals[pool_index] = totals.get(pool_index, 0.0) + share * g
                rounds.importance.record(pool_index, g)
            engine.restore(start)
        entries = sorted(totals)
        engine.apply([rounds.seeds[j] for j in entries], [-config.lr * totals[j] for j in entries])
        steps += len(chosen) * config.local_steps
        sent += len(chosen) * per_client_round
        if r + 1 in at:
            curve.add(steps, sent, task, test_set)
    return curve


class _NoCodec:
    """FedKSeed sends float32 scalars; nothing is encoded to a byte on this path."""

    name = "float32"

    def encode(self, g: float, u: float = 0.5) -> int:
        raise NotImplementedError("FedKSeed as published sends float32 scalars")

    def decode(self, byte: int) -> float:
        raise NotImplementedError("FedKSeed as published sends float32 scalars")


_UNUSED_CODEC = _NoCodec()


def fedseed_simulated(
    config: simulate.SimulationConfig, budget: Budget, out_dir: Path, overrides: dict[str, Any]
) -> Curve:
    """``fedseed simulate`` with this budget; the curve comes from its metrics.jsonl."""
    settings = json.loads(json.dumps(dataclasses.asdict(config), default=str))  # as a TOML file gives it
    settings.update(
        rounds=budget.zo_rounds, local_steps=budget.zo_local_steps, out_dir=str(out_dir), progress=False,
        eval_every=max(1, budget.zo_rounds // budget.evals),
    )  # fmt: skip
    for name, value in overrides.items():  # a table merges into its table; a value replaces
        settings[name] = {**settings[name], **value} if isinstance(value, dict) else value
    run_config = simulate.config_from_dict(settings)
    torch.manual_seed(config.seed)
    report = simulate.run_simulation(run_config)
    curve = Curve(
        [Point(0, 0, report.loss_before, report.accuracy_before)], ZO_FORWARD_EQUIVALENTS,
        (report.bytes_up + report.bytes_down) / max(1, run_config.rounds * run_config.clients_per_round),
        0,
    )  # fmt: skip
    sent = 0
    for line in (report.run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        sent = row["bytes_total"]
        if "test_accuracy" in row:
            curve.points.append(Point(row["client_steps"], sent, row["test_loss"], row["test_accuracy"]))
    summary = json.loads((report.run_dir / "summary.json").read_text())
    curve.trainable_params = summary["trainable_params"]
    return curve


FEDSEED_VARIANTS: dict[str, dict[str, Any]] = {
    "fedseed": {},
    "fedseed-curriculum": {"curriculum": {"ordering": "curriculum", "min_samples": 8}},
    "fedseed-disparity": {"selection": {"policy": "disparity"}},
}


def run_method(
    method: str,
    config: simulate.SimulationConfig,
    budget: Budget,
    fo: FOSettings,
    out_dir: Path,
    recipes: dict[str, dict[str, Any]] | None = None,
) -> Curve:
    """``recipes``: a config's own fedseed arms, name -> simulate settings (e.g. a trainable
    preset, directions, estimator and their lr), run like ``fedseed``."""
    started = time.perf_counter()
    recipes = recipes or {}
    if method in FEDSEED_VARIANTS or method in recipes:
        overrides = FEDSEED_VARIANTS[method] if method in FEDSEED_VARIANTS else recipes[method]
        curve = fedseed_simulated(config, budget, out_dir, overrides)
    elif method.startswith("adamw-"):
        curve = adamw_centralized(config, method.removeprefix("adamw-"), budget, fo)
    elif method.startswith("fedavg-"):
        curve = fedavg(config, method.removeprefix("fedavg-"), budget, fo)
    elif method == "mezo":
        curve = mezo(config, budget)
    elif method in ("fedkseed", "fedkseed-pro"):
        curve = fedkseed_published(config, budget, importance=method == "fedkseed-pro")
    else:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join((*METHODS, *recipes))}")
    curve.seconds = time.perf_counter() - started
    return curve


METHODS = (
    "adamw-full", "adamw-lora", "adamw-same", "fedavg-full", "fedavg-lora", "mezo",
    "fedkseed", "fedkseed-pro", "fedseed", "fedseed-curriculum", "fedseed-disparity",
)  # fmt: skip
CENTRALIZED = {"adamw-full", "adamw-lora", "adamw-same", "mezo"}
