"""bench/quality.py on a tiny slice: every method runs on the same data and reports what the
tables are built from (curves from step 0, client-steps, bytes by each method's own count).

The figures themselves come from the full grid (docs/benchmarks.md); this checks the
accounting and that each baseline really trains (its model moves), on real MiniLM weights.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import quality_methods as qm  # noqa: E402

from fedseed import simulate  # noqa: E402

BUDGET = qm.Budget(zo_rounds=2, zo_local_steps=3, fo_rounds=2, fo_local_steps=2, evals=1)
FO = qm.FOSettings(lr_full=1e-3, lr_lora=1e-2)


@pytest.fixture(scope="module")
def curves(tmp_path_factory: pytest.TempPathFactory) -> dict[str, qm.Curve]:
    config = simulate.config_from_dict(
        {
            "run_name": "quality-test", "model": "minilm", "dataset": "vader-movies", "examples": 48,
            "test_size": 16, "num_clients": 4, "clients_per_round": 2, "batch_size": 4, "max_length": 24,
            "lr": 1e-2, "seed": 0, "progress": False, "partition": {"scheme": "dirichlet", "alpha": 0.1},
        }
    )  # fmt: skip
    out = tmp_path_factory.mktemp("quality")
    return {m: qm.run_method(m, config, BUDGET, FO, out / m, RECIPES) for m in (*qm.METHODS, *RECIPES)}


RECIPES = {"fedseed-q2": {"directions": 2, "trainable": ["LayerNorm"]}}  # a config's own arm


@pytest.mark.slow
def test_every_method_reports_a_curve_with_its_own_budget(curves: dict[str, qm.Curve]) -> None:
    zo_steps = BUDGET.zo_rounds * 2 * BUDGET.zo_local_steps
    fo_steps = BUDGET.fo_rounds * 2 * BUDGET.fo_local_steps
    starts = set()
    for method, curve in curves.items():
        assert curve.points[0].client_steps == 0 and curve.points[0].bytes == 0, method
        expected = fo_steps if method.startswith(("adamw", "fedavg")) else zo_steps
        assert curve.points[-1].client_steps == expected, method
        starts.add(round(curve.points[0].accuracy, 6))
    assert len(starts) == 1  # one model, one held-out split: every method starts from the same place


@pytest.mark.slow
def test_bytes_are_each_methods_own_count(curves: dict[str, qm.Curve]) -> None:
    for method in qm.CENTRALIZED:
        assert curves[method].points[-1].bytes == 0
    full, lora = curves["fedavg-full"], curves["fedavg-lora"]
    assert full.trainable_params > 20_000_000 > lora.trainable_params > 0  # all of MiniLM vs adapters + head
    for curve in (full, lora):  # float32 weights down and up, per selected client per round
        assert curve.points[-1].bytes == BUDGET.fo_rounds * 2 * 8 * curve.trainable_params
    kseed = curves["fedkseed"]
    assert kseed.points[-1].bytes == BUDGET.zo_rounds * 2 * (4 * 4096 + 8 * BUDGET.zo_local_steps)
    one_byte = curves["fedseed"].points[-1].bytes
    assert 0 < one_byte < 0.15 * kseed.points[-1].bytes
    # A recipe arm runs with its own settings: two bytes per step up, its own trainable set.
    q2 = curves["fedseed-q2"]
    up_extra = BUDGET.zo_rounds * 2 * BUDGET.zo_local_steps  # one more byte per client-step
    assert q2.points[-1].bytes - one_byte >= up_extra
    assert q2.trainable_params != curves["fedseed"].trainable_params


@pytest.mark.slow
def test_every_method_moves_the_model(curves: dict[str, qm.Curve]) -> None:
    for method, curve in curves.items():
        assert curve.points[-1].loss != curve.points[0].loss, method


@pytest.mark.slow
def test_the_grid_runs_arms_in_fresh_processes_and_reports(tmp_path: Path) -> None:
    config = (REPO / "bench" / "configs" / "quality-cpu.toml").read_text()
    config = config.replace('results = "bench/results/quality-cpu.json"', f'results = "{tmp_path}/r.json"')
    config = config.replace('plots = "docs/img/quality"', f'plots = "{tmp_path}/img"')
    for key, value in (("zo_rounds", 1), ("zo_local_steps", 2), ("fo_rounds", 1), ("fo_local_steps", 1),
                       ("examples", 40), ("test_size", 8), ("evals", 1)):  # fmt: skip
        config = "\n".join(
            f"{key} = {value}" if line.startswith(f"{key} =") else line for line in config.splitlines()
        )
    path = tmp_path / "tiny.toml"
    path.write_text(config)
    cmd = [sys.executable, str(REPO / "bench" / "quality.py"), "--config", str(path), "--seeds", "0",
           "--tasks", "vader-minilm", "--methods", "fedseed,adamw-lora"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads((tmp_path / "r.json").read_text())["runs"]
    assert {(r["method"], r["partition"]) for r in runs} == {
        ("adamw-lora", "-"), ("fedseed", "iid"), ("fedseed", "dirichlet-0.1"),
    }  # fmt: skip
    assert all(r["peak_rss_mb"] > 100 for r in runs)
    assert "| fedseed | dirichlet-0.1 |" in done.stdout
    assert (tmp_path / "img" / "vader-minilm-iid.png").stat().st_size > 10_000
    # Resuming runs nothing twice.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert "3 already in" in again.stdout and len(json.loads((tmp_path / "r.json").read_text())["runs"]) == 3
    bad = subprocess.run([*cmd[:-1], "fedsed"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "unknown method(s) fedsed" in bad.stderr and "Traceback" not in bad.stderr
