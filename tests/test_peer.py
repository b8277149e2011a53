"""Serverless one-byte peers under torchrun (gloo on loopback): agreement, loss of a peer, catch-up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedseed.export import export_run
from fedseed.ledger import Ledger
from fedseed.report import report, status, status_text
from fedseed.runs import RunError, open_run

CONFIG = """
run_name = "peers"
model = "minilm"
dataset = "vader-movies"
examples = 90
test_size = 16
lr = 0.01
batch_size = 4
max_length = 24
threads = 1
"""
# Loopback only: gloo otherwise picks the interface of the host name, which can refuse connections.
LOOPBACK = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3"]


def _peers(tmp_path: Path, out: str, steps: int, *extra: str) -> list[str]:
    config = tmp_path / "peers.toml"
    config.write_text(CONFIG)
    return [*TORCHRUN, *extra, "-m", "fedseed.peer", "--config", str(config), "--steps", str(steps),
            "--hash-every", "2", "--timeout-s", "20", "--out", str(tmp_path / out)]  # fmt: skip


def _summaries(out_dir: Path) -> list[dict[str, object]]:
    """Each peer's summary file (its stdout line can interleave with the others')."""
    return [json.loads(p.read_text()) for p in sorted(out_dir.glob("peer-*.summary.json"))]


def _worker_pid(out_dir: Path, local_rank: int) -> int | None:
    """The pid of the worker with ``local_rank`` whose command line names ``out_dir``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            b"fedseed.peer" in cmdline
            and str(out_dir).encode() in cmdline
            and f"LOCAL_RANK={local_rank}".encode() in env
        ):
            return int(entry.name)
    return None


@pytest.mark.slow
def test_three_peers_agree_and_a_killed_peer_rejoins_from_the_ledgers(tmp_path: Path) -> None:
    # Execute 1: an uninterrupted run of 8 steps.
    clean = subprocess.run(
        _peers(tmp_path, "clean", 8), capture_output=True, text=True, timeout=600, env=LOOPBACK
    )
    assert clean.returncode == 0, clean.stderr[-3000:]
    summaries = _summaries(tmp_path / "clean")
    assert len(summaries) == 3
    assert len({s["model_hash"] for s in summaries}) == 1
    assert summaries[0]["model_hash"] != summaries[0]["base_hash"]
    # The folder is a run fedseed status and export read (issue 17), verified at its end.
    exported = export_run(tmp_path / "clean", tmp_path / "exported", progress=False)
    assert exported.model_hash == summaries[0]["model_hash"] and exported.verified_at == exported.rounds == 1
    assert "3 peers, 8 steps; finished" in status_text(status(open_run(tmp_path / "clean")))
    with pytest.raises(RunError, match=r"peer.*nothing to plot"):  # one line, not a wrong claim
        report(open_run(tmp_path / "clean"), tmp_path / "plots")
    # Execute 2: the same run; peer 2 is killed (SIGKILL) after step 3.
    command = _peers(tmp_path, "killed", 8)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=LOOPBACK)
    ledger = tmp_path / "killed" / "peer-2.ledger.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if ledger.exists() and max((e.step for e in Ledger.load(ledger)), default=-1) >= 3:
            break
        time.sleep(0.2)
    pid = _worker_pid(tmp_path / "killed", 2)
    assert pid is not None, "peer 2 not found"
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=600)
    # Assert: the others did not stall (torchrun ends the group), their ledgers are saved ...
    assert proc.returncode != 0
    assert time.monotonic() - killed_at < 60
    # ... and a relaunch replays them, catches up and ends where the uninterrupted run did, bit for bit.
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, env=LOOPBACK)
    assert again.returncode == 0, again.stderr[-3000:]
    after = _summaries(tmp_path / "killed")
    assert len(after) == 3 and {s["steps"] for s in after} == {8}
    assert {s["model_hash"] for s in after} == {summaries[0]["model_hash"]}
    assert Ledger.load(ledger).entries == Ledger.load(tmp_path / "clean" / "peer-0.ledger.jsonl").entries


@pytest.mark.slow
def test_a_new_peer_catches_up_from_a_peers_ledger(tmp_path: Path) -> None:
    first = subprocess.run(
        _peers(tmp_path, "run", 4), capture_output=True, text=True, timeout=600, env=LOOPBACK
    )
    assert first.returncode == 0, first.stderr[-3000:]
    (tmp_path / "run" / "peer-1.ledger.jsonl").unlink()  # peer 1 is new: no ledger of its own
    second = subprocess.run(
        _peers(tmp_path, "run", 6), capture_output=True, text=True, timeout=600, env=LOOPBACK
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "peer 1: catching up 4 steps from peer 0's ledger" in second.stderr
    summaries = _summaries(tmp_path / "run")
    assert {s["steps"] for s in summaries} == {6} and len({s["model_hash"] for s in summaries}) == 1


def test_a_peer_outside_torchrun_is_a_clear_error(tmp_path: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    proc = subprocess.run(
        [sys.executable, "-m", "fedseed.peer", "--steps", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "launch peers with torchrun" in proc.stderr


@pytest.mark.slow
def test_peers_with_different_runs_refuse_to_start(tmp_path: Path) -> None:
    # Two peers started by hand (torchrun's environment), one with another learning rate.
    config = tmp_path / "peers.toml"
    config.write_text(CONFIG)
    env = {
        **os.environ,
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(29500 + os.getpid() % 1000),
    }
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fedseed.peer",
                "--config",
                str(config),
                "--steps",
                "1",
                "--out",
                str(tmp_path / "out"),
                "--set",
                f"lr={lr}",
            ],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank, lr in enumerate(("0.01", "0.02"))
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2
        assert "manifest or run differs" in err and "'lr': 0.02" in err
