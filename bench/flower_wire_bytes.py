"""Bytes per client per round on Flower's Deployment Engine vs fedseed's own coordinator.

    .venv/bin/python bench/flower_wire_bytes.py                 # 3 clients, 3 rounds, 20 local steps

The same round shape both ways, in one run, counted at the socket by the same byte-counting
TCP relay (bench/fault_injection.py's DelayProxy, no delay): HTTP framing, headers and keep-alives included.

- **Flower**: a real SuperLink, ``--clients`` SuperNodes that reach it only through the
  relay, and ``flwr run deploy/flower`` of a small MiniLM simulation (the CLI talks to the
  SuperLink directly, so uploading the app and streaming logs are not counted). Each round
  every client gets a message with the closed rounds' bytes and replies with its own.
- **fedseed's coordinator**: bench/wire_bytes.py's protocol clients (join, poll, submit,
  sync) with the same number of clients, rounds and one-byte steps.

Reported: up and down per client per round for both, and the ratio. The Flower figure
includes each SuperNode's registration and heartbeats, spread over the rounds, as the
coordinator's includes Join.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fault_injection import DelayProxy
from wire_bytes import measure

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_bytes(clients: int, rounds: int, local_steps: int, work: Path) -> dict[str, Any]:
    home = work / "flwr-home"
    home.mkdir()
    port = _free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{port}"\n'
        "insecure = true\n"
    )
    sim = work / "sim.toml"
    sim.write_text(
        f'run_name = "flower-bytes"\nmodel = "minilm"\ntrainable = ["LayerNorm", "^classifier\\\\."]\n'
        f"rounds = {rounds}\nnum_clients = {clients}\nclients_per_round = {clients}\n"
        f"local_steps = {local_steps}\nexamples = {16 * clients}\ntest_size = 16\neval_every = {rounds}\n"
        "batch_size = 4\nmax_length = 24\nprogress = false\n"
    )
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    processes: list[subprocess.Popen[bytes]] = []

    def start(*command: str, log: str) -> None:
        with open(work / log, "wb") as out:
            processes.append(subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work, start_new_session=True
            ))  # fmt: skip

    relay = None
    try:
        start("flower-superlink", "--insecure", "--disable-runtime-dependency-installation", "--database",
              str(work / "superlink.db"), "--port", str(port), log="superlink.log")  # fmt: skip
        time.sleep(3)
        relay = DelayProxy(port)  # no delay: it only counts the bytes each way
        for i in range(clients):
            start("flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{relay.port}",
                  "--node-config", f"partition-id={i} simulation-config='{sim}'", "--port", str(_free_port()),
                  log=f"supernode-{i}.log")  # fmt: skip
        run_config = f"simulation-config='{sim}' out-dir='{work / 'runs'}' join-timeout-s=120"
        proc = subprocess.run(
            [str(BIN / "flwr"), "run", str(REPO / "deploy" / "flower"), "local", "--stream",
             "--run-config", run_config], capture_output=True, text=True, env=env, cwd=work, timeout=1200,
        )  # fmt: skip
        summary = work / "runs" / "flower-bytes" / "summary.json"
        if proc.returncode != 0 or not summary.exists():
            raise RuntimeError(f"flwr run failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        per = clients * rounds
        return {
            "up": relay.bytes["up"] / per,
            "down": relay.bytes["down"] / per,
            "final_hash": json.loads(summary.read_text())["final_hash"],
        }
    finally:
        for p in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
        if relay is not None:
            relay.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=20)
    parser.add_argument("--pool-size", type=int, default=4096)
    parser.add_argument("--json", default=str(REPO / "bench" / "results" / "flower_wire_bytes.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        flower = flower_bytes(args.clients, args.rounds, args.local_steps, Path(tmp))
    ours = measure(args.pool_size, args.local_steps, args.clients, args.rounds)
    rows = {
        "Flower Deployment Engine (SuperLink + SuperNodes)": (flower["up"], flower["down"]),
        "fedseed coordinator (gRPC)": (ours["socket_up"], ours["socket_down"]),
    }
    print(f"{args.clients} clients, all selected, {args.rounds} rounds, {args.local_steps} one-byte steps; "
          "bytes per client per round at the socket:")  # fmt: skip
    print("| path | up | down | up + down |\n|---|---|---|---|")
    for name, (up, down) in rows.items():
        print(f"| {name} | {up:,.0f} | {down:,.0f} | {up + down:,.0f} |")
    ratio = (flower["up"] + flower["down"]) / (ours["socket_up"] + ours["socket_down"])
    print(f"Flower / coordinator: {ratio:.1f}x")
    result = {
        "clients": args.clients, "rounds": args.rounds, "local_steps": args.local_steps,
        "flower": {"up": flower["up"], "down": flower["down"]},
        "coordinator": {"up": ours["socket_up"], "down": ours["socket_down"]}, "ratio": ratio,
    }  # fmt: skip
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
