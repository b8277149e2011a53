"""The ``fedseed`` command as a user runs it: output, run folder, clean errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedseed.ledger import Ledger

FEDSEED = [sys.executable, "-m", "fedseed"]


def _run(
    args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        FEDSEED + args,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


@pytest.mark.slow
def test_train_prints_metrics_and_leaves_a_replayable_run(tmp_path: Path) -> None:
    # Execute
    proc = _run(["train", "--model", "minilm", "--steps", "6", "--eval-size", "16", "--batch-size", "4",
                 "--run-name", "tiny", "--out", str(tmp_path)])  # fmt: skip
    # Assert
    assert proc.returncode == 0, proc.stderr
    assert "accuracy before:" in proc.stdout and "accuracy after:" in proc.stdout
    manifest = json.loads((tmp_path / "tiny" / "manifest.json").read_text())
    assert manifest["stream"] == "philox4x32-10/rademacher/v1"
    assert manifest["steps_applied"] + manifest["steps_skipped"] == 6
    assert manifest["final_hash"] != manifest["base_hash"]
    assert len(Ledger.load(tmp_path / "tiny" / "ledger.jsonl")) == manifest["steps_applied"]
    assert "step 6/6" in proc.stderr  # progress lines off a terminal


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--steps", "0"], "steps must be positive"),
        (["train", "--model", "minilm", "--trainable", "no-such-tensor", "--steps", "1", "--eval-size", "4"],
         "no trainable tensors selected"),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_line_not_a_traceback(args: list[str], message: str, tmp_path: Path) -> None:
    proc = _run([*args, "--out", str(tmp_path)])
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_data_names_the_fix(tmp_path: Path) -> None:
    proc = _run(["train", "--out", str(tmp_path)], env={"FEDSEED_CACHE": str(tmp_path / "empty")})
    assert proc.returncode == 2
    assert "fedseed fetch-assets" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_gaussian_run_says_in_its_manifest_that_it_is_not_portable(tmp_path: Path) -> None:
    proc = _run(["train", "--model", "minilm", "--steps", "2", "--eval-size", "8", "--batch-size", "2",
                 "--distribution", "gaussian", "--run-name", "g", "--out", str(tmp_path)])  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    assert "not bit-exact across devices" in manifest["stream"]
