"""Flower's Deployment Engine as a user meets it when something is wrong: one line, no
traceback. The run itself (a SuperLink, SuperNodes and ``flwr run`` of deploy/flower
reaching the same ledger and hash as the other paths) is tests/test_equivalence.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.flower_federation import BIN, HAVE_FLOWER_CLI, REPO, flwr_home, free_port

pytestmark = pytest.mark.skipif(not HAVE_FLOWER_CLI, reason="no Flower CLI")


def test_a_superlink_that_does_not_answer_is_one_line(tmp_path: Path) -> None:
    home = flwr_home(tmp_path / "flwr-home", free_port())  # nothing listens there
    env = {**os.environ, "FLWR_HOME": str(home)}
    proc = subprocess.run([str(BIN / "flwr"), "run", str(REPO / "deploy" / "flower"), "local"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)  # fmt: skip
    output = proc.stdout + proc.stderr
    assert "Connection to the SuperLink is unavailable" in output, output[-3000:]
    assert "Traceback" not in output
