"""``fedseed export`` / ``status`` / ``report`` on real runs.

The export must load in a process that cannot import fedseed (plain
transformers) and give the logits of the in-memory model of the run, bit for
bit; bad runs and bad databases end in one ``error:`` line.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedseed import cli, simulate
from fedseed.export import PROVENANCE_FILE, export_run
from fedseed.ledger import model_hash
from fedseed.runs import RunError

TEXTS = ["A warm, funny and wise film.", "Dull. I left early.", "It has moments, and then none."]

# Runs in a fresh interpreter where importing fedseed fails: the checkpoint must stand alone.
LOADER = """
import importlib.abc, json, sys

class NoFedseed(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "fedseed" or name.startswith("fedseed."):
            raise ImportError("fedseed is blocked in this process")
        return None

sys.meta_path.insert(0, NoFedseed())
try:
    import fedseed  # noqa: F401
    sys.exit("fedseed was importable")
except ImportError:
    pass
import numpy as np, torch, transformers

folder, kind, texts, out = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
auto = getattr(transformers, kind)  # AutoModelForCausalLM | AutoModelForSequenceClassification
tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
model = auto.from_pretrained(folder).eval()
enc = tokenizer(texts, padding=True, return_tensors="pt")
with torch.no_grad():
    logits = model(**enc).logits
np.savez(out, logits=logits.numpy(), input_ids=enc["input_ids"].numpy())
"""

TINY = {
    "rounds": 3, "num_clients": 4, "clients_per_round": 2, "local_steps": 2, "examples": 64,
    "test_size": 16, "eval_every": 1, "progress": False,
}  # fmt: skip


def _simulate(tmp: Path, model: str) -> tuple[simulate.SimulationReport, Any, Any]:
    config = simulate.config_from_dict(
        {**TINY, "model": model, "run_name": f"tiny-{model}", "out_dir": str(tmp / "runs"),
         "trainable": ["LayerNorm", "^classifier\\."] if model == "minilm" else []}
    )  # fmt: skip
    setup = simulate.build(config)
    report = simulate.run_simulation(config, setup)
    return report, setup.engine.model, setup.task.tokenizer


@pytest.fixture(scope="module")
def smollm2_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[simulate.SimulationReport, Any, Any]:
    return _simulate(tmp_path_factory.mktemp("smollm2"), "smollm2")


@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[simulate.SimulationReport, Any, Any]:
    return _simulate(tmp_path_factory.mktemp("minilm"), "minilm")


def _run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("fixture", "kind"),
    [("smollm2_run", "AutoModelForCausalLM"), ("minilm_run", "AutoModelForSequenceClassification")],
)
def test_export_loads_with_plain_transformers_and_gives_the_same_logits(
    fixture: str, kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    report, model, tokenizer = request.getfixturevalue(fixture)
    out = tmp_path / "checkpoint"
    exported = export_run(report.run_dir, out, progress=False)
    assert exported.model_hash == report.final_hash == model_hash(model) != report.base_hash
    assert exported.verified_at == exported.rounds == 3
    provenance = json.loads((out / PROVENANCE_FILE).read_text())
    assert provenance["model_hash"] == report.final_hash
    assert (out / "model.safetensors").stat().st_mode & 0o044 == 0o044  # others may read it
    script = tmp_path / "load.py"
    script.write_text(LOADER)
    result_path = tmp_path / "logits.npz"
    proc = subprocess.run(
        [sys.executable, str(script), str(out), kind, json.dumps(TEXTS), str(result_path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = np.load(result_path)
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**enc).logits.numpy()
    np.testing.assert_array_equal(loaded["input_ids"], enc["input_ids"].numpy())
    np.testing.assert_array_equal(loaded["logits"], expected)


def test_export_of_an_earlier_round_is_verified_against_that_round(
    smollm2_run: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, _, _ = smollm2_run
    code, out, err = _run_cli(
        ["export", "--run", str(report.run_dir), "--out", str(tmp_path / "r1"), "--rounds", "1",
         "--no-progress"], capsys,
    )  # fmt: skip
    assert code == 0, err
    metrics = [json.loads(line) for line in (report.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[1]["start_hash"] in out and "verified against the run's record" in out
    # Exporting over it needs --force.
    code, _, err = _run_cli(
        ["export", "--run", str(report.run_dir), "--out", str(tmp_path / "r1"), "--no-progress"], capsys
    )
    assert code == 2 and "--force" in err
    code, _, err = _run_cli(["export", "--run", str(report.run_dir), "--rounds", "9", "--out", "x"], capsys)
    assert code == 2 and "--rounds must be in [0, 3]" in err


def test_export_refuses_a_run_whose_base_hash_differs_naming_both(
    smollm2_run: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, _, _ = smollm2_run
    run = tmp_path / "run"
    shutil.copytree(report.run_dir, run)
    summary = json.loads((run / "summary.json").read_text())
    wrong = "sha256:" + "0" * 64
    summary["base_hash"] = wrong
    (run / "summary.json").write_text(json.dumps(summary))
    code, _, err = _run_cli(["export", "--run", str(run), "--out", str(tmp_path / "x")], capsys)
    assert code == 2
    assert wrong in err and report.base_hash in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_export_detects_an_altered_ledger(smollm2_run: Any, tmp_path: Path) -> None:
    report, _, _ = smollm2_run
    run = tmp_path / "run"
    shutil.copytree(report.run_dir, run)
    lines = (run / "ledger.jsonl").read_text().splitlines()
    entry = json.loads(lines[-1])
    entry["coef"] = -entry["coef"]
    (run / "ledger.jsonl").write_text("\n".join([*lines[:-1], json.dumps(entry)]) + "\n")
    with pytest.raises(RunError, match=f"after round 3: the run recorded {report.final_hash}"):
        export_run(run, tmp_path / "x", progress=False)


def test_status_and_report_of_a_simulation(
    minilm_run: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, _, _ = minilm_run
    code, out, err = _run_cli(["status", str(report.run_dir)], capsys)
    assert code == 0, err
    assert "rounds: 3 of 3" in out and f"{report.bytes_up + report.bytes_down:,}" in out
    assert report.final_hash in out
    code, out, _ = _run_cli(["status", "--json", str(report.run_dir)], capsys)
    status = json.loads(out)
    assert status["rounds"] == 3 and status["finished"] and status["latest_eval"]["round"] == 2
    code, out, err = _run_cli(["report", str(report.run_dir), "--out", str(tmp_path / "plots")], capsys)
    assert code == 0, err
    written = sorted(Path(line).name for line in out.split())
    assert written == ["accuracy-vs-bytes.png", "participation.png", "progress.png"]
    for name in written:
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_status_of_an_unfinished_simulation(minilm_run: Any, tmp_path: Path) -> None:
    report, _, _ = minilm_run
    run = tmp_path / "run"
    shutil.copytree(report.run_dir, run)
    (run / "summary.json").unlink()  # as if it was killed after its second round
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])  # torn tail
    from fedseed.report import status
    from fedseed.runs import open_run

    s = status(open_run(run))
    assert s["rounds"] == 2 and not s["finished"]
    # Its model after 2 rounds can still be exported; the hash round 2 started from was in the
    # torn line, so the export is verified up to round 1 (and says so).
    exported = export_run(run, tmp_path / "x", progress=False)
    assert (exported.rounds, exported.verified_at) == (2, 1)


@pytest.mark.parametrize("command", ["status", "report", "export"])
def test_missing_and_corrupt_databases_are_clear_errors(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(path: Path) -> str:
        args = [command, str(path)] if command != "export" else [command, "--run", str(path), "--out", "o"]
        code, _, err = _run_cli(args, capsys)
        assert code == 2 and err.startswith("error: ") and "Traceback" not in err
        return err

    assert "no run at" in run(tmp_path / "missing.db")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite at all" * 100)
    assert "not a readable coordinator database" in run(garbage)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    assert "not a coordinator's" in run(other)
    not_a_run = tmp_path / "notes.txt"
    not_a_run.write_text("hello")
    assert "no installed reader" in run(not_a_run)
    assert "not a run folder" in run(tmp_path)


def test_a_run_recorded_with_the_old_byzantine_settings_still_reads(minilm_run: Any, tmp_path: Path) -> None:
    # Before the Byzantine experiment moved to bench/, every config.json carried these two keys.
    report, _, _ = minilm_run
    run = tmp_path / "old"
    shutil.copytree(report.run_dir, run)
    summary = json.loads((run / "summary.json").read_text())
    summary["config"] |= {"byzantine": 0, "attack": "sign-flip"}
    (run / "summary.json").write_text(json.dumps(summary))
    from fedseed.report import status
    from fedseed.runs import open_run

    assert status(open_run(run))["rounds"] == report.rounds
