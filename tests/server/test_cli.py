"""`fedseed coordinator`: the example config works; mistakes are one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fedseed.manifest import build_manifest
from fedseed.models import DEFAULT_TRAINABLE
from fedseed.server.cli import load_config
from fedseed.zo import TrainableSet
from tests.conftest import REPO

EXAMPLE = REPO / "deploy" / "configs" / "coordinator.toml"


@pytest.mark.slow
def test_the_example_config_matches_the_model_clients_build(minilm: Any) -> None:
    config, server = load_config(EXAMPLE)
    base, _ = minilm
    trainable = TrainableSet.from_model(base, include=list(DEFAULT_TRAINABLE["minilm"]))
    assert config.manifest == build_manifest(base, trainable.names, "vader-movies/minilm-seqcls")
    assert server.token_env == "FEDSEED_TOKEN"


def _coordinator(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedseed", "coordinator", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--config", "/no/such.toml"], {"FEDSEED_TOKEN": "t"}, "no config file at /no/such.toml"),
        (["--config", str(EXAMPLE)], {"FEDSEED_TOKEN": ""}, "set the client token in $FEDSEED_TOKEN"),
    ],
)
def test_coordinator_mistakes_are_one_clear_line(args: list[str], env: dict[str, str], message: str) -> None:
    proc = _coordinator(args, env)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


MANIFEST = '[manifest]\nstream = "s"\nbase_model_hash = "h"\ntask = "t"\ntrainable = ["w"]\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[run]\nname = "x"\n[manifest]\n', "[manifest]: missing setting 'stream'"),
        ("[run]\npool_size = 8\n[manifest]\n", "[run]: missing setting 'name'"),
        ("[manifest]\n", "missing table [run]"),
        ('[run]\nname = "x"\npool = 8\n[manifest]\n', "[run]: unknown setting(s) pool; valid: name, pool"),
        ('[run]\nname = "x"\n' + MANIFEST + "[server]\nport = 1\n", "[server]: unknown setting(s) port"),
        ("[rnu]\n", "unknown table(s) rnu"),
        ('[run]\nname = "x"\n' + MANIFEST + '[selection]\npolicy = "best"\n', "unknown selection policy"),
    ],
)
def test_config_mistakes_name_the_setting(tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    proc = _coordinator(["--config", str(bad)], {"FEDSEED_TOKEN": "t"})
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
