"""Differential privacy of the scalars: clipping, private noise, the accountant, a DP simulation."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest

from fedseed import data, simulate, tasks
from fedseed.errors import ConfigError
from fedseed.export import export_run
from fedseed.privacy import epsilon, private_scalar
from fedseed.settings import RunSettings
from fedseed.zo import TrainableSet, ZOEngine


def test_epsilon_behaves_as_an_accountant_should() -> None:
    assert epsilon(1.0, 0.1, 0, 1e-5) == 0.0
    assert epsilon(0.0, 0.1, 10, 1e-5) == math.inf
    base = epsilon(1.0, 0.1, 100, 1e-5)
    assert 0 < base < math.inf
    assert epsilon(2.0, 0.1, 100, 1e-5) < base < epsilon(0.7, 0.1, 100, 1e-5)  # more noise, less epsilon
    assert base < epsilon(1.0, 0.1, 400, 1e-5)  # more steps, more epsilon
    assert epsilon(1.0, 0.05, 100, 1e-5) < base  # rarer sampling, less epsilon
    assert epsilon(1.0, 0.1, 100, 1e-3) < base  # a looser delta, less epsilon


def test_noise_needs_a_clip() -> None:
    with pytest.raises(ConfigError, match="dp_noise needs dp_clip"):
        RunSettings(dp_noise=1.0)


@pytest.fixture(scope="module")
def minilm_task(minilm: Any) -> tuple[ZOEngine, Any]:
    model, tokenizer = minilm
    task = tasks.for_model("minilm", model, tokenizer, 24)
    engine = ZOEngine(model, TrainableSet.from_model(model, include=["LayerNorm", r"^classifier\."]))
    return engine, task.encode(data.load_vader("movies")[:8])


def test_without_noise_and_clipping_the_private_scalar_is_the_spsa_estimate(
    minilm_task: Any, minilm: Any
) -> None:
    engine, encoded = minilm_task
    task = tasks.for_model("minilm", minilm[0], minilm[1], 24)
    plain = engine.estimate(7, lambda: tasks.loss(task, encoded))
    assert plain is not None
    private = private_scalar(engine, 7, lambda: tasks.per_example_losses(task, encoded), clip=1e9, noise=0.0)
    assert private == pytest.approx(plain.projected_grad, rel=1e-4, abs=1e-6)
    tight = private_scalar(engine, 7, lambda: tasks.per_example_losses(task, encoded), clip=1e-3, noise=0.0)
    assert tight is not None and abs(tight) <= 1e-3


def test_the_noise_is_private_and_has_the_promised_scale(minilm_task: Any, minilm: Any) -> None:
    engine, encoded = minilm_task
    task = tasks.for_model("minilm", minilm[0], minilm[1], 24)
    clip, noise, batch = 0.5, 2.0, 8
    draws = [
        private_scalar(engine, 7, lambda: tasks.per_example_losses(task, encoded), clip, noise)
        for _ in range(60)
    ]
    assert len({d for d in draws}) == 60  # never the same twice: nothing reproduces it
    expected = noise * clip / batch
    assert 0.6 * expected < statistics.stdev(d for d in draws if d is not None) < 1.5 * expected


@pytest.mark.slow
def test_a_dp_simulation_reports_epsilon_and_still_rebuilds_exactly(tmp_path: Path) -> None:
    raw = {
        "model": "minilm", "trainable": ["LayerNorm", "^classifier\\."], "rounds": 2, "num_clients": 4,
        "clients_per_round": 2, "local_steps": 3, "examples": 64, "test_size": 16, "eval_every": 2,
        "progress": False, "dp_clip": 1.0, "dp_noise": 1.0,
    }  # fmt: skip
    first = simulate.run_simulation(
        simulate.config_from_dict({**raw, "run_name": "dp", "out_dir": str(tmp_path / "a")})
    )
    second = simulate.run_simulation(
        simulate.config_from_dict({**raw, "run_name": "dp", "out_dir": str(tmp_path / "b")})
    )
    assert first.final_hash != second.final_hash  # the noise is not derived from the run's seeds
    privacy = json.loads((first.run_dir / "summary.json").read_text())["privacy"]
    assert 0 < privacy["epsilon"] < math.inf and privacy["delta"] == 1e-5
    assert privacy["steps_of_worst_client"] > 0
    # Everyone applied the same noisy bytes: the ledger rebuilds the run's model bit for bit.
    assert export_run(first.run_dir, tmp_path / "export", progress=False).model_hash == first.final_hash
