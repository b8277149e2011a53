"""A real Flower federation on loopback for tests: a SuperLink and one SuperNode per client
(insecure, runtime dependency installation off), and ``flwr run`` of deploy/flower.

Every process runs in its own session and is killed with its children (Flower's SuperExec,
ServerApp and ClientApp processes) when the context ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HAVE_FLOWER_CLI = shutil.which("flower-superlink", path=str(BIN)) is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flwr_home(folder: Path, port: int) -> Path:
    """A FLWR_HOME whose default SuperLink connection is 127.0.0.1:port (insecure)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{port}"\n'
        "insecure = true\n"
    )
    return folder


@contextlib.contextmanager
def federation(folder: Path, simulation_config: Path, num_nodes: int) -> Iterator[dict[str, str]]:
    """A SuperLink and ``num_nodes`` SuperNodes (partition ids 0..n-1); yields flwr's environment."""
    from fedseed.client.flower_app import CONFIG_ENV

    superlink_port = free_port()
    home = flwr_home(folder / "flwr-home", superlink_port)
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop(CONFIG_ENV, None)
    processes: list[subprocess.Popen[bytes]] = []

    def start(*command: str, log: str) -> None:
        with open(folder / log, "wb") as out:
            processes.append(subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=folder, start_new_session=True
            ))  # fmt: skip

    try:
        start("flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
              "--database", str(folder / "superlink.db"), "--port", str(superlink_port),
              log="superlink.log")  # fmt: skip
        _wait_for_port(superlink_port, processes[0], folder / "superlink.log")  # flwr run needs it up
        for i in range(num_nodes):
            start("flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{superlink_port}",
                  "--node-config", f"partition-id={i} simulation-config='{simulation_config}'",
                  "--port", str(free_port()), log=f"supernode-{i}.log")  # fmt: skip
        yield env
    finally:
        for proc in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the process and everything it started
            proc.wait(timeout=30)


def flwr_run(env: dict[str, str], simulation_config: Path, out_dir: Path, cwd: Path) -> Path:
    """``flwr run deploy/flower`` on the federation; returns the run folder it wrote."""
    run_config = f"simulation-config='{simulation_config}' out-dir='{out_dir}' join-timeout-s=120"
    proc = subprocess.run(
        [str(BIN / "flwr"), "run", str(REPO / "deploy" / "flower"), "local", "--stream",
         "--run-config", run_config], capture_output=True, text=True, env=env, cwd=cwd, timeout=600,
    )  # fmt: skip
    output = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, output
    run_dirs = [p.parent for p in out_dir.glob("*/summary.json")]
    assert len(run_dirs) == 1, output
    return run_dirs[0]


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 120.0) -> None:
    """Until the SuperLink accepts connections (its HTTP API starts a few seconds after launch)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.3)
    raise AssertionError(f"the SuperLink did not listen on {port} within {timeout_s:.0f} s")
