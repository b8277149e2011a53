"""Single-process ZO fine-tuning: the engine end to end on a real model and task.

    fedseed train                      # built-in default: SmolLM2-135M, VADER movie snippets
    fedseed train --model minilm --steps 500

Each step derives its seed from ``(run, round 0, client 0, step)``, estimates the
projected gradient on a minibatch with two perturbed forwards, applies
``coef = -lr*g`` and appends ``(0, step, seed, coef)`` to the run's ledger.
The run folder holds ``manifest.json`` (settings, base and final model
hashes, accuracies) and ``ledger.jsonl``: replaying the ledger onto the base
model gives the trained model bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from fedseed import data, lora, models, tasks
from fedseed.codec import LogCodec, ScaledInt8Codec, uniform_from_seed
from fedseed.errors import ConfigError
from fedseed.ledger import Ledger, LedgerEntry, model_hash
from fedseed.seeds import PURPOSE_PERTURB, PURPOSE_ROUNDING, derive_seed, run_key
from fedseed.zo import STREAM_NAMES, TrainableSet, ZOEngine

log = logging.getLogger(__name__)

# Per model: the ZO learning rate of its default trainable set.
DEFAULT_LR = {"minilm": 1e-2, "minilm-proto": 1e-3, "smollm2": 1e-1}


@dataclass
class TrainConfig:
    model: str = "smollm2"  # smollm2 | minilm | minilm-proto (MiniLM scored against class prototypes)
    domain: str = "movies"  # VADER domain
    trainable: tuple[str, ...] = ()  # a preset (all | norms-biases | default) or regexes; empty = default
    lora_rank: int = 0  # > 0: ZO over LoRA adapters of this rank (fedseed.lora), plus `trainable` if set
    lora_alpha: int = 16  # LoRA scale alpha (the update is alpha/r x B A)
    lora_targets: tuple[str, ...] = ()  # module names to adapt; empty = the attention's query and value
    steps: int = 80  # ZO steps (two forward passes each)
    batch_size: int = 16  # examples per step
    max_length: int = 48  # tokens per example
    lr: float | None = None  # ZO-SGD learning rate; None = the model's default (full-model runs need ~1e-6)
    eps: float = 1e-3  # SPSA perturbation scale
    eval_size: int = 128  # held-out examples for accuracy before/after
    codec: str = "none"  # none | log | int8: send g as one byte; everyone applies the decoded value
    distribution: str = "rademacher"  # rademacher | gaussian (gaussian is not bit-exact across devices)
    seed: int = 0  # data split, minibatch order and new-head init
    run_name: str = "default"  # names the run folder; seeds derive from it
    out_dir: Path = field(default_factory=lambda: Path("runs"))  # parent of the run folder
    progress: bool = True  # a progress bar on a terminal, ten log lines elsewhere

    def validate(self) -> None:
        if self.model not in models.MODEL_NAMES:
            raise ConfigError(f"unknown model {self.model!r}; choose one of {', '.join(models.MODEL_NAMES)}")
        models.trainable_patterns(self.model, self.trainable)  # an unknown preset or a bad regex
        lora.check_settings(self.lora_rank, self.lora_alpha, self.lora_targets)
        for name in ("steps", "batch_size", "max_length", "eval_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not ((self.lr is None or self.lr > 0) and self.eps > 0):
            raise ConfigError("lr and eps must be positive")
        if self.distribution not in STREAM_NAMES:
            raise ConfigError(
                f"distribution must be one of {', '.join(STREAM_NAMES)}, got {self.distribution!r}"
            )
        if self.codec not in ("none", "log", "int8"):
            raise ConfigError(f"codec must be none, log or int8, got {self.codec!r}")


@dataclass
class TrainReport:
    accuracy_before: float
    accuracy_after: float
    base_hash: str
    final_hash: str
    steps_applied: int
    steps_skipped: int
    seconds_per_step: float
    run_dir: Path


class OneByteQuantizer:
    """What a step applies: ``g`` itself, or ``decode(encode(g))`` of a one-byte codec.

    ``int8`` needs a scale everyone knows before the step: 8x the median
    |decoded g| of the last 32 steps, over 127 (``initial_scale`` until there is
    history); its stochastic-rounding draw comes from ``(run, step)``.
    """

    def __init__(self, codec: str, key: bytes, initial_scale: float = 0.01, window: int = 32) -> None:
        self.codec = codec
        self.key = key
        self.log_codec = LogCodec()
        self.initial_scale = initial_scale
        self.history: list[float] = []
        self.window = window

    def __call__(self, g: float, step: int) -> float:
        if self.codec == "none":
            return g
        if self.codec == "log":
            decoded = self.log_codec.decode(self.log_codec.encode(g))
        else:
            recent = [abs(v) for v in self.history[-self.window :] if v != 0.0]
            scale = 8.0 * float(np.median(recent)) / 127 if recent else self.initial_scale
            codec = ScaledInt8Codec(scale)
            draw = uniform_from_seed(derive_seed(self.key, PURPOSE_ROUNDING, 0, 0, step))
            decoded = codec.decode(codec.encode(g, draw))
        self.history.append(decoded)
        return decoded


def build_task(config: TrainConfig) -> tasks.Task:
    model, tokenizer = models.load_model(config.model, num_labels=2, init_seed=config.seed)
    if config.lora_rank:  # adapters initialised from the run key (fedseed.lora)
        model = lora.add_adapters(
            model, config.model, config.lora_rank, config.lora_alpha, config.lora_targets, config.run_name
        )
    return tasks.for_model(config.model, model, tokenizer, config.max_length)


def trainable_patterns(config: TrainConfig, model: object) -> list[str]:
    patterns = list(models.trainable_patterns(config.model, config.trainable))
    if config.lora_rank:
        return lora.trainable_patterns(model, patterns if config.trainable else [])  # type: ignore[arg-type]
    return patterns


def run_training(config: TrainConfig) -> TrainReport:
    config.validate()
    # 1. data and model
    train_set, test_set = data.split(data.load_vader(config.domain), config.eval_size, config.seed)
    task = build_task(config)
    trainable = TrainableSet.from_model(task.model, include=trainable_patterns(config, task.model))
    engine = ZOEngine(
        task.model,
        trainable,
        eps=config.eps,
        distribution=config.distribution,  # type: ignore[arg-type]
    )
    lr = config.lr if config.lr is not None else DEFAULT_LR[config.model]
    run_dir = config.out_dir / config.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    log.info("%s: %d trainable tensors, %d parameters", config.model, len(trainable), trainable.numel)

    # 2. where we start
    base_hash = model_hash(task.model)
    accuracy_before = tasks.accuracy(task, test_set)
    log.info("accuracy before: %.4f on %d held-out examples", accuracy_before, len(test_set))

    # 3. ZO steps, each logged to the ledger before the next starts
    key = run_key(config.run_name)
    quantizer = OneByteQuantizer(config.codec, key)
    order = np.random.Generator(np.random.PCG64(config.seed))
    ledger_path = run_dir / "ledger.jsonl"
    ledger_path.unlink(missing_ok=True)
    skipped = 0
    started = time.perf_counter()
    losses: list[float] = []
    on_terminal = config.progress and sys.stderr.isatty()
    log_every = max(1, config.steps // 10)  # off a terminal: ten progress lines, not a bar
    with (
        Ledger(path=ledger_path) as ledger,
        tqdm(total=config.steps, disable=not on_terminal, desc="zo steps", unit="step") as bar,
    ):
        for step in range(config.steps):
            batch = [train_set[i] for i in order.choice(len(train_set), config.batch_size, replace=False)]
            encoded = task.encode(batch)
            seed = derive_seed(key, PURPOSE_PERTURB, 0, 0, step)  # (round 0, client 0, step)

            def batch_loss(enc: tasks.Encoded = encoded) -> torch.Tensor:
                return tasks.loss(task, enc)

            result = engine.estimate(seed, batch_loss)
            if result is None:
                skipped += 1
            else:
                g = quantizer(result.projected_grad, step)
                coef = float(np.float32(-lr * g))
                engine.apply([seed], [coef])
                ledger.append(LedgerEntry.make(0, step, seed, coef))
                losses.append(result.loss)
            bar.update(1)
            recent_loss = float(np.mean(losses[-20:])) if losses else float("nan")
            bar.set_postfix(loss=f"{recent_loss:.4f}")
            if config.progress and not on_terminal and (step + 1) % log_every == 0:
                log.info("step %d/%d: loss %.4f (mean of last 20)", step + 1, config.steps, recent_loss)
    seconds_per_step = (time.perf_counter() - started) / config.steps

    # 4. where we ended
    accuracy_after = tasks.accuracy(task, test_set)
    final_hash = model_hash(task.model)
    report = TrainReport(
        accuracy_before, accuracy_after, base_hash, final_hash,
        config.steps - skipped, skipped, seconds_per_step, run_dir,
    )  # fmt: skip
    manifest: dict[str, Any] = {
        "stream": STREAM_NAMES[engine.distribution],
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()},
        "trainable": trainable.names,
        "distribution": engine.distribution,
        "lr": lr,
        "torch": torch.__version__,
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(report).items()},
    }
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return report
