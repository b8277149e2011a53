"""Run settings are defined once (fedseed.settings) and survive every representation unchanged.

TOML -> coordinator config -> SQLite -> restart on the same file -> wire -> what a client parses,
for every field with non-default values; the simulator's top level carries the same keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedseed import serde, simulate
from fedseed.errors import ConfigError
from fedseed.manifest import Manifest
from fedseed.perturb.stream import STREAM_NAME
from fedseed.proto import coordinator_pb2 as pb
from fedseed.rounds import FedKSeedRounds
from fedseed.seeds import run_key
from fedseed.server.cli import load_config
from fedseed.server.store import CoordinatorStore
from fedseed.settings import (
    AGGREGATORS,
    ESTIMATORS,
    SETTING_NAMES,
    RunParams,
    RunSettings,
    settings_from_mapping,
)

MANIFEST = Manifest(STREAM_NAME, "sha256:" + "0" * 64, "settings", ("w",))
positive = st.floats(min_value=1e-9, max_value=10.0, allow_nan=False, allow_infinity=False)
non_negative = st.floats(min_value=0.0, max_value=100.0, allow_nan=False, allow_infinity=False)


@st.composite
def run_settings(draw: st.DrawFn) -> RunSettings:
    estimator = draw(st.sampled_from(ESTIMATORS))
    dp_clip = 0.0 if estimator == "fzoo" else draw(non_negative)  # fzoo has no DP form
    return RunSettings(
        pool_size=draw(st.integers(1, 4096)),
        local_steps=draw(st.integers(1, 1000)),
        lr=draw(positive),
        eps=draw(positive),
        importance=draw(st.booleans()),
        clip_factor=draw(non_negative),
        replicas=draw(st.integers(1, 16)),
        aggregator=draw(st.sampled_from(AGGREGATORS)),
        trim=draw(st.floats(min_value=0.0, max_value=0.49)),
        reject_anomaly=draw(non_negative),
        weight_cap=draw(st.sampled_from([0.0, 1.0, 2.0]) | st.floats(min_value=1.0, max_value=1e6)),
        dp_clip=dp_clip,
        dp_noise=draw(non_negative) if dp_clip > 0 else 0.0,
        directions=draw(st.integers(2 if estimator == "fzoo" else 1, 8)),
        estimator=estimator,
        momentum=draw(st.floats(min_value=0.0, max_value=0.999)),
        mask_fraction=draw(st.floats(min_value=1e-3, max_value=1.0)),
        codec="log",
    )


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)  # ints, and floats written shortest-round-trip (valid TOML)


def _coordinator_toml(name: str, run: RunSettings) -> str:
    lines = ["[run]", f"name = {json.dumps(name)}", "rounds = 3", "clients_per_round = 2"]
    lines += [f"{f.name} = {_toml_value(getattr(run, f.name))}" for f in dataclasses.fields(run)]
    trainable = ", ".join(json.dumps(t) for t in MANIFEST.trainable)
    lines += ["", "[manifest]", f'stream = "{MANIFEST.stream}"',
              f'base_model_hash = "{MANIFEST.base_model_hash}"', f'task = "{MANIFEST.task}"',
              f"trainable = [{trainable}]"]  # fmt: skip
    return "\n".join(lines) + "\n"


def test_a_non_default_draw_differs_from_the_defaults_in_every_field() -> None:
    # The strategy must reach non-default values of every field, or the round trip proves little.
    defaults = RunSettings()
    changed = RunSettings(
        pool_size=17, local_steps=9, lr=0.25, eps=0.003, importance=True, clip_factor=0.0, replicas=3,
        aggregator="median", trim=0.1, reject_anomaly=2.5, weight_cap=0.0, dp_clip=1.5, dp_noise=0.7,
        directions=4, estimator="sign", momentum=0.9, mask_fraction=0.3, codec="log",
    )  # fmt: skip
    same = [n for n in SETTING_NAMES if getattr(changed, n) == getattr(defaults, n)]
    assert same == ["codec"]  # the only codec replicas replay today


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(run=run_settings(), name=st.text(st.characters(codec="ascii", exclude_categories=["Cc"]), min_size=1))
def test_every_setting_survives_toml_store_restart_wire_and_client(
    tmp_path: Path, run: RunSettings, name: str
) -> None:
    # TOML -> the coordinator's config
    config_path = tmp_path / "coordinator.toml"
    config_path.write_text(_coordinator_toml(name, run))
    config, _ = load_config(config_path)
    assert config.params == RunParams(name, run)
    # -> the SQLite row -> a restart on the same file
    db = tmp_path / "run.db"
    db.unlink(missing_ok=True)
    store = CoordinatorStore(db)
    store.init_run(MANIFEST, config.params)
    store.close()
    restarted = CoordinatorStore(db)
    restarted.init_run(MANIFEST, config.params)  # the same run: accepted
    stored = restarted.run()
    restarted.close()
    assert stored is not None and stored[1] == config.params
    assert CoordinatorStore.open_readonly(db).run() == stored  # what export and status read
    # -> the wire -> what a client parses and builds its round logic from
    wire = pb.RunParams.FromString(serde.run_params_to_proto(stored[1]).SerializeToString())
    client = serde.run_params_from_proto(wire)
    assert client == config.params
    assert FedKSeedRounds(client.settings, run_key(client.run_name)).config == run


def test_a_restart_with_other_settings_is_refused_naming_each_difference(tmp_path: Path) -> None:
    store = CoordinatorStore(tmp_path / "run.db")
    store.init_run(MANIFEST, RunParams("r", RunSettings(replicas=3, aggregator="median", clip_factor=0.0)))
    with pytest.raises(ConfigError) as info:
        store.init_run(MANIFEST, RunParams("r", RunSettings()))
    message = str(info.value)
    assert "replicas: database has 3, config has 1" in message
    assert "aggregator: database has 'median', config has 'mean'" in message
    assert "clip_factor: database has 0.0, config has 8.0" in message


def test_a_client_refuses_settings_it_would_not_reproduce() -> None:
    params = RunParams("r", RunSettings(lr=0.01))
    good = serde.run_params_to_proto(params)
    assert serde.run_params_from_proto(good) == params
    # A setting this version does not know (a newer coordinator): refused, named.
    newer = json.loads(params.canonical())
    newer["settings"]["hessian_smoothing"] = 0.9
    raw = json.dumps(newer, sort_keys=True, separators=(",", ":")).encode()
    raw_hash = "sha256:" + hashlib.sha256(raw).hexdigest()
    with pytest.raises(ConfigError, match=r"unknown setting.*hessian_smoothing"):
        serde.run_params_from_proto(pb.RunParams(run_name="r", settings=raw, settings_hash=raw_hash))
    # Bytes that do not hash to what the sender announced (altered in between): refused.
    spaced = json.dumps(json.loads(params.canonical()), indent=1).encode()
    with pytest.raises(ConfigError, match="not the announced"):
        serde.run_params_from_proto(
            pb.RunParams(run_name="r", settings=spaced, settings_hash=good.settings_hash)
        )
    # Bytes this version would write differently (another encoder, another version): refused.
    spaced_hash = "sha256:" + hashlib.sha256(spaced).hexdigest()
    with pytest.raises(ConfigError, match="cannot reproduce run 'r' exactly"):
        serde.run_params_from_proto(pb.RunParams(run_name="r", settings=spaced, settings_hash=spaced_hash))
    with pytest.raises(ConfigError, match="not valid JSON"):
        serde.run_params_from_proto(pb.RunParams(run_name="r", settings=b"\xff", settings_hash="x"))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"lr": "0.1"}, "lr must be a float, got '0.1'"),
        ({"pool_size": 2.5}, "pool_size must be an int, got 2.5"),
        ({"importance": 1}, "importance must be a bool, got 1"),
        ({"codec": "int8"}, "unknown codec 'int8'"),
        ({"dp_noise": 1.0}, "dp_noise needs dp_clip > 0"),
        ({"learning_rate": 0.1}, "unknown setting.*learning_rate"),
    ],
)
def test_bad_settings_are_one_clear_line(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_mapping(raw, "[run]")
    assert settings_from_mapping({"lr": 1}).lr == 1.0  # a TOML integer where a float is meant


def test_the_simulator_carries_the_same_keys_and_hands_them_to_its_rounds() -> None:
    sim_fields = {f.name for f in dataclasses.fields(simulate.SimulationConfig)}
    assert set(SETTING_NAMES) <= sim_fields
    raw = {
        "replicas": 2,
        "aggregator": "trimmed-mean",
        "trim": 0.2,
        "clip_factor": 0.0,
        "dp_clip": 3.0,
        "lr": 0.05,
    }
    config = simulate.config_from_dict(raw)
    assert config.fedkseed == RunSettings(local_steps=5, eps=1e-3, **raw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="replicas must be an int"):
        simulate.config_from_dict({"replicas": "2"})
