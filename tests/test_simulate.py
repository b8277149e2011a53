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


def test_a_new_run_never_replaces_an_old_one_unasked(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Issue 17: the README's second `fedseed simulate` overwrote the first run's folder and left
    # its old summary.json behind.
    old = tmp_path / "simulate-default"
    old.mkdir()
    (old / "summary.json").write_text('{"rounds": 10}')
    (old / "ledger.jsonl").write_text("")
    argv = ["simulate", "--out", str(tmp_path), "--set", "clients_per_round=99"]
    assert cli.main(["simulate", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {old} already holds a run (summary.json, ledger.jsonl): pass --force")
    assert (old / "summary.json").read_text() == '{"rounds": 10}'  # untouched
    assert cli.main(argv) == 2  # a bad setting is still named first
    assert "clients_per_round (99)" in capsys.readouterr().err
    assert cli.main(["train", "--out", str(tmp_path), "--run-name", "simulate-default", "--steps", "1"]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_force_replaces_the_old_run_files(tmp_path: Path) -> None:
    from fedseed.paths import claim_run_folder

    old = tmp_path / "r"
    old.mkdir()
    (old / "summary.json").write_text("{}")
    (old / "notes.txt").write_text("mine")
    assert claim_run_folder(old, force=True) == old
    assert not (old / "summary.json").exists() and (old / "notes.txt").read_text() == "mine"
