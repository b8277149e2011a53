"""``fedseed simulate --engine flower`` on a Ray cluster it did not start: a head and one
worker node, each a separate ``ray start --block`` process on loopback, one CPU each, so
Flower's actor pool spans both nodes. Same ledger, entry for entry, and the same final
hash as the in-process simulator; bad addresses give one line.

Both nodes run in their own session and temp folder and are killed with their children at
the end (a short temp path: Ray's socket paths must stay under the OS limit).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedseed import simulate
from fedseed.client import flower_sim
from fedseed.errors import ConfigError

BIN = Path(sys.executable).parent
CONFIG = """run_name = "ray-cluster"
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
threads = 1
progress = false
"""

pytestmark = pytest.mark.skipif(shutil.which("ray", path=str(BIN)) is None, reason="no Ray CLI")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive_nodes(address: str) -> int:
    probe = "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); " \
            "print(sum(n['Alive'] for n in ray.nodes()))"  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", probe, address], capture_output=True, text=True, timeout=120)
    return int(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 and proc.stdout.strip() else 0


@pytest.fixture
def ray_cluster() -> Iterator[str]:
    """A Ray head and one worker node on loopback; yields the head's address."""
    temp = Path(tempfile.mkdtemp(prefix="fsray", dir="/tmp"))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    common = ["--num-cpus", "1", "--num-gpus", "0", "--block", "--disable-usage-stats"]
    processes: list[subprocess.Popen[bytes]] = []

    def start(*args: str, log: str) -> None:
        with open(temp / log, "wb") as out:
            processes.append(subprocess.Popen(
                [str(BIN / "ray"), "start", *args, *common], stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            ))  # fmt: skip

    try:
        start("--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--temp-dir", str(temp / "t"),
              "--include-dashboard", "false", log="head.log")  # fmt: skip
        deadline = time.monotonic() + 180
        while not (temp / "t").exists() or not _port_open(port):
            assert processes[0].poll() is None, (temp / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Ray head did not listen"
            time.sleep(0.5)
        start("--address", address, "--node-ip-address", "127.0.0.1", log="worker.log")
        while _alive_nodes(address) < 2:
            assert processes[1].poll() is None, (temp / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Ray worker node did not join"
            time.sleep(1)
        yield address
    finally:
        for proc in processes[::-1]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the node and every Ray process it started
            proc.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


@pytest.mark.slow
def test_flower_engine_on_a_two_node_ray_cluster_matches_inprocess(ray_cluster: str, tmp_path: Path) -> None:
    # Prepare
    sim = tmp_path / "sim.toml"
    sim.write_text(CONFIG)
    on_cluster = simulate.load_config(
        sim, {"out_dir": str(tmp_path / "cluster"), "engine": "flower", "ray_address": ray_cluster}
    )
    # Execute
    started = time.monotonic()
    report = flower_sim.run(on_cluster)
    seconds = time.monotonic() - started
    inprocess = simulate.run_simulation(simulate.load_config(sim, {"out_dir": str(tmp_path / "inprocess")}))
    # Assert
    assert report.final_hash == inprocess.final_hash != inprocess.base_hash
    assert (report.run_dir / "ledger.jsonl").read_text() == (inprocess.run_dir / "ledger.jsonl").read_text()
    print(f"two-node Ray cluster run: {seconds:.0f} s")


def test_an_address_where_no_head_answers_is_one_line(tmp_path: Path) -> None:
    sim = tmp_path / "sim.toml"
    sim.write_text(CONFIG)
    port = _free_port()  # nothing listens there
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "fedseed", "simulate", "--config", str(sim), "--engine", "flower",
         "--ray-address", f"127.0.0.1:{port}", "--out", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - started < 120  # not Ray's minutes of retries


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"engine": "flower", "ray_address": "head-node"}, "ray_address must be host:port"),
        ({"engine": "flower", "ray_address": "ray://10.0.0.5:10001"}, "ray_address must be host:port"),
        ({"ray_address": "10.0.0.5:6379"}, "engine is 'inprocess'"),
        ({"engine": "flower", "ray_address": "10.0.0.5:6379", "curriculum": {"ordering": "curriculum"}},
         "cannot pin"),
    ],
)  # fmt: skip
def test_settings_a_cluster_cannot_run_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        simulate.load_config(None, overrides)
