"""fedseed as a Flower App on Flower's Deployment Engine, for real: a SuperLink and three
SuperNodes on loopback (insecure, runtime dependency installation off), ``flwr run`` of
deploy/flower, and the same ledger and final model hash as the in-process simulator.

Every process the test starts runs in its own session and is killed with its children
(Flower's SuperExec, ServerApp and ClientApp processes) at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedseed import simulate

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CONFIG = """run_name = "flower-deployment"
model = "minilm"
trainable = ["LayerNorm", "^classifier\\\\."]
rounds = 2
num_clients = 3
clients_per_round = 2
local_steps = 2
examples = 48
test_size = 16
eval_every = 2
batch_size = 4
max_length = 24
progress = false
"""

pytestmark = pytest.mark.skipif(
    shutil.which("flower-superlink", path=str(BIN)) is None, reason="no Flower CLI"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """A SuperLink and 3 SuperNodes (one per client of CONFIG); yields flwr's environment."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    superlink_port = _free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{superlink_port}"\n'
        "insecure = true\n"
    )
    sim = tmp_path / "sim.toml"
    sim.write_text(CONFIG)
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop(simulate_config_env(), None)
    processes: list[subprocess.Popen[bytes]] = []

    def start(*command: str, log: str) -> None:
        with open(tmp_path / log, "wb") as out:
            processes.append(subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True
            ))  # fmt: skip

    try:
        start(
            "flower-superlink",
            "--insecure",
            "--disable-runtime-dependency-installation",
            "--database",
            str(tmp_path / "superlink.db"),
            "--port",
            str(superlink_port),
            log="superlink.log",
        )
        _wait_for_port(superlink_port, processes[0], tmp_path / "superlink.log")  # flwr run needs it up
        for i in range(3):
            start("flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{superlink_port}",
                  "--node-config", f"partition-id={i} simulation-config='{sim}'", "--port", str(_free_port()),
                  log=f"supernode-{i}.log")  # fmt: skip
        yield env, sim
    finally:
        for proc in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the process and everything it started
            proc.wait(timeout=30)


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 120.0) -> None:
    """Until the SuperLink accepts connections (its HTTP API starts a few seconds after launch)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.3)
    raise AssertionError(f"the SuperLink did not listen on {port} within {timeout_s:.0f} s")


def simulate_config_env() -> str:
    from fedseed.client.flower_app import CONFIG_ENV

    return CONFIG_ENV


@pytest.mark.slow
def test_flwr_run_on_a_superlink_and_supernodes_matches_the_simulator(
    federation: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, sim = federation
    out = tmp_path / "runs"
    run_config = f"simulation-config='{sim}' out-dir='{out}' join-timeout-s=120"
    started = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "flwr"), "run", str(REPO / "deploy" / "flower"), "local", "--stream",
         "--run-config", run_config], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    run_dir = out / "flower-deployment"
    assert (run_dir / "summary.json").exists(), (proc.stdout + proc.stderr)[-3000:]
    deployed = json.loads((run_dir / "summary.json").read_text())
    # The same run in process: identical ledger, entry for entry, and the same final hash.
    config = simulate.load_config(sim, {"out_dir": str(tmp_path / "inprocess")})
    report = simulate.run_simulation(config)
    assert deployed["final_hash"] == report.final_hash != report.base_hash
    assert (run_dir / "ledger.jsonl").read_text() == (report.run_dir / "ledger.jsonl").read_text()
    print(f"Deployment Engine run: {time.monotonic() - started:.0f} s")
