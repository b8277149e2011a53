"""The simulator's config: documented defaults equal the code's; bad input is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedseed import cli, simulate
from fedseed.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_the_documented_default_config_is_the_built_in_default() -> None:
    assert simulate.load_config(REPO / "configs" / "simulate-default.toml") == simulate.SimulationConfig()


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"clients_per_round": 30}, "clients_per_round \\(30\\) exceeds num_clients \\(20\\)"),
        ({"engine": "ray"}, "unknown engine 'ray'; choose one of inprocess, flower"),
        ({"dataset": "imdb"}, "unknown dataset 'imdb'"),
        ({"dataset": "bbcnews"}, "smollm2 uses binary label words; bbcnews has more classes: use minilm"),
        ({"roundz": 3}, "unknown setting\\(s\\) roundz"),
        ({"curriculum": {"pacing": "cosine"}}, "unknown pacing 'cosine'"),
        ({"curriculum": {"a": 0}}, "pacing a must be in \\(0, 1\\]"),
        ({"partition": {"alpha": -1}}, "alpha must be a positive number"),
        ({"partition": {"scheme": "zipf"}}, "unknown partition 'zipf'"),
        ({"selection": {"policy": "oort"}}, "unknown selection policy 'oort'"),
        ({"selection": {"d": 3}}, "unknown \\[selection\\] setting\\(s\\) d"),
        ({"dropout": 1.0}, "dropout must be in \\[0, 1\\)"),
        ({"device": "tpu"}, "device must be cpu, cuda or cuda:N, got 'tpu'"),
    ],
)
def test_bad_simulation_settings_are_clear_errors(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        simulate.load_config(None, overrides)


def test_cli_reports_bad_settings_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["simulate", "--set", "clients_per_round=99"]) == 2
    assert capsys.readouterr().err.strip() == "error: clients_per_round (99) exceeds num_clients (20)"
    assert cli.main(["simulate", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "no config file at" in capsys.readouterr().err
    assert cli.main(["simulate", "--engine", "ray"]) == 2
    assert "unknown engine 'ray'" in capsys.readouterr().err
