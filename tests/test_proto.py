"""The wire schema: committed generated code is current; serde round-trips exactly."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from fedseed.manifest import Manifest
from fedseed.rounds import ClosedRound
from fedseed.serde import (
    RunParams,
    closed_round_from_proto,
    closed_round_to_proto,
    manifest_from_proto,
    manifest_to_proto,
    run_params_from_proto,
    run_params_to_proto,
)
from fedseed.settings import RunSettings
from tests.conftest import REPO

GENERATED = [
    "coordinator_pb2.py",
    "coordinator_pb2.pyi",
    "coordinator_pb2_grpc.py",
    "coordinator_pb2_grpc.pyi",
]


def test_committed_generated_code_is_not_stale(tmp_path: Path) -> None:
    # Execute: regenerate with the pinned generator into a scratch folder.
    subprocess.run(
        ["bash", str(REPO / "scripts" / "gen_proto.sh"), str(tmp_path)],
        check=True, capture_output=True, cwd=REPO, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    # Assert
    for name in GENERATED:
        fresh = (tmp_path / "fedseed" / "proto" / name).read_bytes()
        committed = (REPO / "fedseed" / "proto" / name).read_bytes()
        assert fresh == committed, f"fedseed/proto/{name} is stale: run scripts/gen_proto.sh"


def test_serde_round_trips() -> None:
    manifest = Manifest("philox4x32-10/rademacher/v1", "sha256:ab", "vader/label-word", ("a.weight", "b"))
    assert manifest_from_proto(manifest_to_proto(manifest)) == manifest
    params = RunParams("run-1", RunSettings(pool_size=4096, local_steps=200, lr=3e-7, eps=5e-4))
    assert run_params_from_proto(run_params_to_proto(params)) == params  # lr travels exactly
    closed = ClosedRound(7, (10, 20, 30), (0, 2), bytes(range(8)), "sha256:cd")
    assert closed_round_from_proto(closed_round_to_proto(closed)) == closed
    assert closed.replies(4) == {0: bytes([0, 1, 2, 3]), 2: bytes([4, 5, 6, 7])}


def test_manifest_mismatch_names_what_differs() -> None:
    run = Manifest("philox4x32-10/rademacher/v1", "sha256:aa", "t", ("w",))
    client = Manifest("philox4x32-10/rademacher/v1", "sha256:bb", "t", ("w",))
    assert run.mismatches(run) == []
    assert run.mismatches(client) == ["base_model_hash: run has 'sha256:aa', client has 'sha256:bb'"]


def test_run_params_that_cannot_work_are_refused() -> None:
    from fedseed.errors import ConfigError
    from fedseed.proto import coordinator_pb2 as pb

    settings = b'{"run_name":"r","settings":{"pool_size":0}}'
    announced = "sha256:" + hashlib.sha256(settings).hexdigest()
    with pytest.raises(ConfigError, match="pool_size"):
        run_params_from_proto(pb.RunParams(run_name="r", settings=settings, settings_hash=announced))
