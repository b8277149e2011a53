"""Issue 18's ZO recipes (q directions, ZO-SGD-Sign, Sparse MeZO masks, trainable presets).

Each variant must be replayable: the ledger a run wrote, applied to the base model by a
reader that knows only the run's settings, gives the run's bits and hash. Each must also
change what is learned (a setting that silently does nothing would pass the first check).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from fedseed import cli, models, simulate
from fedseed.errors import ConfigError
from fedseed.ledger import model_hash, replay
from fedseed.rounds import FedKSeedRounds, run_local_round
from fedseed.runs import open_run
from fedseed.seeds import run_key
from fedseed.settings import RunSettings
from fedseed.zo import TrainableSet, ZOEngine

TINY = {
    "model": "minilm", "rounds": 2, "num_clients": 4, "clients_per_round": 2, "local_steps": 2,
    "examples": 48, "test_size": 16, "eval_every": 2, "progress": False, "batch_size": 4,
    "max_length": 24, "trainable": ["LayerNorm", "^classifier\\."],
}  # fmt: skip

VARIANTS: dict[str, dict[str, Any]] = {
    "q-directions": {"directions": 3},
    "sign": {"estimator": "sign", "lr": 1e-4},
    "sparse-mask": {"mask_fraction": 0.25},
    "momentum": {"momentum": 0.9},
    "all-three": {"directions": 2, "estimator": "sign", "lr": 1e-4, "mask_fraction": 0.5},
}


def _run(tmp: Path, name: str, overrides: dict[str, Any]) -> tuple[simulate.SimulationReport, Any]:
    config = simulate.config_from_dict({**TINY, **overrides, "run_name": name, "out_dir": str(tmp)})
    setup = simulate.build(config)
    return simulate.run_simulation(config, setup), setup.engine.model


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> simulate.SimulationReport:
    report, _ = _run(tmp_path_factory.mktemp("base"), "recipe", {})
    return report


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_recipe_replays_bit_for_bit_and_changes_the_result(
    variant: str, baseline: simulate.SimulationReport, tmp_path: Path
) -> None:
    report, model = _run(tmp_path, "recipe", VARIANTS[variant])  # same run name: same seeds
    assert report.final_hash != baseline.final_hash != report.base_hash
    # The export path: base model + the run's ledger under the run's settings (mask included).
    record = open_run(report.run_dir)
    base = record.load_base()
    assert model_hash(base.model) == report.base_hash
    replay(base.engine, record.entries)
    assert model_hash(base.model) == report.final_hash
    assert all(torch.equal(a, b) for a, b in zip(base.model.parameters(), model.parameters(), strict=True))


@pytest.mark.slow
def test_q_directions_send_q_bytes_per_step_and_a_mask_freezes_the_rest(minilm: Any) -> None:
    model, tokenizer = minilm
    import copy

    from fedseed import data, tasks

    model = copy.deepcopy(model)
    settings = RunSettings(pool_size=16, local_steps=2, directions=3, lr=1e-2, mask_fraction=0.25)
    rounds = FedKSeedRounds(settings, run_key("q"))
    engine = ZOEngine(model, TrainableSet.from_model(model, include=["LayerNorm"]))
    engine.follow(settings)
    task = tasks.SequenceClassificationTask(model, tokenizer, max_length=24)
    encoded = task.encode(data.load_vader("movies")[:4])
    before = engine.snapshot()
    plan = rounds.plan(0, [4])
    assert len(plan.schedules[0]) == 6
    batches_drawn: list[int] = []

    def loss_for_step(step: int) -> Any:
        batches_drawn.append(step)  # a real client draws a new minibatch per call
        return lambda: tasks.loss(task, encoded)

    payload = run_local_round(engine, rounds, plan, 0, loss_for_step)
    assert len(payload) == 6 and len(rounds.aggregate(plan, {0: payload})) > 0
    assert batches_drawn == [0, 1]  # one minibatch per step, shared by its 3 directions
    with pytest.raises(ValueError, match="needs 6"):
        rounds.aggregate(plan, {0: payload[:2]})
    # Only the smallest-|θ| quarter of each tensor moved.
    for t in engine.trainable.tensors:
        moved = (t.param.detach() != before[t.name]).float().mean().item()
        assert 0 < moved <= 0.25 + 1 / t.param.numel()


def test_trainable_presets_resolve_per_model() -> None:
    assert models.trainable_patterns("smollm2", ()) == models.DEFAULT_TRAINABLE["smollm2"]
    assert models.trainable_patterns("smollm2", ["all"]) == ("",)
    assert (
        models.trainable_patterns("minilm", ["norms-biases"])
        == models.TRAINABLE_PRESETS["norms-biases"]["minilm"]
    )
    assert models.trainable_patterns("minilm", ["LayerNorm"]) == ("LayerNorm",)
    with pytest.raises(ConfigError, match="must stand alone"):
        models.trainable_patterns("minilm", ["all", "LayerNorm"])
    with pytest.raises(ConfigError, match="neither a preset"):
        models.trainable_patterns("minilm", ["norms("])


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("estimator=adam", "error: unknown estimator 'adam'; choose one of spsa, sign"),
        ("directions=0", "error: directions must be in [1, 64], got 0"),
        ("mask_fraction=1.5", "error: mask_fraction must be in (0, 1], got 1.5"),
        ("mask_fraction=0", "error: mask_fraction must be in (0, 1], got 0.0"),
        ("momentum=1", "error: momentum must be in [0, 1), got 1.0"),
        ('trainable=["norms("]', "error: trainable: 'norms(' is neither a preset"),
        ('trainable=["every"]', "error: no trainable tensors selected"),
    ],
)
def test_bad_recipe_settings_are_one_line_and_exit_2(
    setting: str, message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli.main(["simulate", "--set", setting, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_cuda_run_on_a_machine_without_one_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["simulate", "--set", 'device="cuda"']) == 2
    assert "this machine has no CUDA device" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_simulation_replays_to_its_hash(tmp_path: Path) -> None:
    # Losses differ between devices in their last bits, so a CUDA run learns other bytes than a
    # CPU run; what must hold is that its ledger, replayed (fedseed export), gives its bits.
    report, _ = _run(tmp_path, "cuda", {"device": "cuda", "mask_fraction": 0.5})
    record = open_run(report.run_dir)
    base = record.load_base()
    replay(base.engine, record.entries)
    assert model_hash(base.model) == report.final_hash
