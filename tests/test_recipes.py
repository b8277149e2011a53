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
    "lora": {"lora_rank": 4, "lr": 1e-3},
    "fzoo": {"estimator": "fzoo", "directions": 3, "lr": 1e-3},  # q + 1 forwards, std-normalised
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


@pytest.mark.slow
def test_fzoo_costs_q_plus_one_forwards_per_step_and_sends_unitless_scalars(minilm: Any) -> None:
    import copy

    from fedseed import data, tasks

    model, tokenizer = minilm
    model = copy.deepcopy(model)
    forwards = {}
    for estimator in ("spsa", "fzoo"):
        settings = RunSettings(pool_size=16, local_steps=2, directions=4, lr=1e-2, estimator=estimator)
        rounds = FedKSeedRounds(settings, run_key("fzoo"))
        engine = ZOEngine(model, TrainableSet.from_model(model, include=["LayerNorm"]))
        engine.follow(settings)
        task = tasks.SequenceClassificationTask(model, tokenizer, max_length=24)
        encoded = task.encode(data.load_vader("movies")[:8])
        calls = [0]

        def loss_for_step(
            step: int, task: Any = task, encoded: Any = encoded, calls: list[int] = calls
        ) -> Any:
            def loss() -> Any:
                calls[0] += 1
                return tasks.loss(task, encoded)

            return loss

        start = engine.snapshot()
        payload = run_local_round(engine, rounds, rounds.plan(0, [8]), 0, loss_for_step)
        engine.restore(start)
        assert len(payload) == 2 * 4  # q bytes per step either way
        forwards[estimator] = calls[0]
        if estimator == "fzoo":  # (f_i - f_0) / std(f): about unit size, so the codec's middle range
            values = [abs(rounds.codec.decode(b)) for b in payload]
            assert 0.05 < max(values) < 10 and all(b != 0 for b in payload)
    assert forwards == {"spsa": 2 * 2 * 4, "fzoo": 2 * (4 + 1)}


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
        ("estimator=adam", "error: unknown estimator 'adam'; choose one of spsa, sign, fzoo"),
        (
            "estimator=fzoo",
            "error: estimator fzoo normalises by the std of a step's q losses: it needs directions >= 2",
        ),
        ("directions=0", "error: directions must be in [1, 64], got 0"),
        ("mask_fraction=1.5", "error: mask_fraction must be in (0, 1], got 1.5"),
        ("mask_fraction=0", "error: mask_fraction must be in (0, 1], got 0.0"),
        ("momentum=1", "error: momentum must be in [0, 1), got 1.0"),
        ('trainable=["norms("]', "error: trainable: 'norms(' is neither a preset"),
        ('trainable=["every"]', "error: no trainable tensors selected"),
        (
            "trainable=norms-biases",
            'error: config: trainable must be a list of strings, e.g. ["norms-biases"]',
        ),
        ("lora_rank=-1", "error: lora_rank must be in [1, 4096] for LoRA (0 = no adapters), got -1"),
        ('lora_targets=["q_proj"]', "error: lora_targets is set but lora_rank is 0"),
        ("lora_alpha=0", "error: lora_alpha must be in [1, 65536], got 0"),
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


LORA = {**TINY, "model": "minilm-proto", "trainable": [], "lora_rank": 4, "lr": 1e-3}


@pytest.mark.slow
def test_lora_adapters_start_from_the_run_key_and_export_merged_and_as_a_peft_adapter(tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from fedseed.export import export_run

    def build(name: str) -> Any:
        return simulate.build_model(simulate.config_from_dict({**LORA, "run_name": name}))[1]

    engine = build("lora")
    names = engine.trainable.names
    assert names and all(".lora_" in n for n in names)  # adapters only: 6 layers x query/value x A/B
    assert len(names) == 24
    params = dict(engine.model.named_parameters())
    assert all(not params[n].any() for n in names if ".lora_B." in n)  # B = 0: the base model's function
    assert all(params[n].abs().unique().numel() == 1 for n in names if ".lora_A." in n)  # ±1/sqrt(in)
    assert model_hash(build("lora").model) == model_hash(engine.model)  # every replica: the same bits
    assert model_hash(build("another-run").model) != model_hash(engine.model)  # derived from the run key
    # A run, replayed by the export path; merged weights plus a peft adapter that loads anywhere.
    config = simulate.config_from_dict({**LORA, "run_name": "lora", "out_dir": str(tmp_path)})
    report = simulate.run_simulation(config)
    assert report.final_hash != report.base_hash
    exported = export_run(report.run_dir, tmp_path / "exported", progress=False)
    assert exported.model_hash == report.final_hash and exported.verified_at == exported.rounds
    out = tmp_path / "exported"
    merged = AutoModelForSequenceClassification.from_pretrained(out)
    assert not any(".lora_" in n for n, _ in merged.named_parameters())  # an ordinary checkpoint
    plain, _ = models.load_model("minilm-proto", num_labels=2, init_seed=config.seed)
    adapted = PeftModel.from_pretrained(plain, out / "adapter").merge_and_unload()
    for (name, a), (_, b) in zip(adapted.named_parameters(), merged.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    query = "bert.encoder.layer.0.attention.self.query.weight"
    untouched, _ = models.load_model("minilm-proto", num_labels=2, init_seed=config.seed)
    assert not torch.equal(dict(merged.named_parameters())[query], dict(untouched.named_parameters())[query])


def test_lora_on_modules_the_model_lacks_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = [
        "simulate",
        "--set",
        "model=minilm-proto",
        "--set",
        "lora_rank=2",
        "--set",
        'lora_targets=["q_proj"]',
    ]
    assert cli.main([*args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("error: lora_targets q_proj are not linear layers of minilm-proto;")
        and "\n" not in err
    )
    assert "query" in err  # it names what the model has


def test_manifest_of_a_lora_simulation_config_lists_its_adapters(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "lora.toml"
    config.write_text('model = "minilm-proto"\nlora_rank = 2\nrun_name = "lora-manifest"\n')
    assert cli.main(["manifest", "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    built = simulate.build_model(simulate.load_config(config))[1]
    assert f'base_model_hash = "{model_hash(built.model)}"' in printed
    assert all(f'"{name}"' in printed for name in built.trainable.names) and ".lora_A." in printed
    assert cli.main(["manifest"]) == 2  # neither --trainable nor --config: one line
    assert "needs --trainable" in capsys.readouterr().err


@pytest.mark.slow
def test_fedseed_train_with_lora_exports_merged_and_adapter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--model", "minilm-proto", "--lora-rank", "2", "--steps", "3", "--batch-size", "4",
            "--eval-size", "16", "--max-length", "24", "--out", str(tmp_path), "--no-progress"]  # fmt: skip
    assert cli.main(args) == 0
    trained_hash = capsys.readouterr().out.split("model hash: ")[1].split()[0]
    out = tmp_path / "exported"
    assert cli.main(["export", "--run", str(tmp_path / "default"), "--out", str(out)]) == 0
    assert f"model hash: {trained_hash} (verified" in capsys.readouterr().out
    assert (out / "adapter" / "adapter_model.safetensors").exists() and (out / "model.safetensors").exists()
    assert cli.main([*args[:3], "--lora-rank", "-1", "--out", str(tmp_path / "x")]) == 2
    assert "lora_rank must be in [1, 4096]" in capsys.readouterr().err
