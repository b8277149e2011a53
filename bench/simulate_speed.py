"""Client-steps per second: in-process simulation vs Flower's Simulation Engine vs one ZO loop.

    .venv/bin/python bench/simulate_speed.py            # 100 clients, MiniLM, side by side

The same work three ways, in one run: 100 virtual clients (IID shards of VADER
movie snippets, all-MiniLM-L6-v2 with its default trainable set), 10 per
round, ``--rounds`` rounds of ``--local-steps`` one-byte ZO steps.

- ``single-process ZO loop`` (the ceiling): the same number of ZO steps
  (two forwards + one update each, same batch size) in a plain loop, no rounds;
- ``in-process``: ``fedseed simulate`` (selection, per-client round work with
  restore, byte aggregation, ledger step, ledger file);
- ``flower``: ``fedseed simulate --engine flower`` (Ray workers, one per core,
  each building its model once; Flower messages carry bytes only).

Reported: client-steps per second over the rounds (after every client joined;
``summary.json``'s ``seconds``) and over the whole command (model loads, Ray's
start, evaluation: what a user waits for), and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]


def settings(rounds: int, local_steps: int, out: Path, engine: str) -> dict[str, object]:
    return {
        "run_name": f"speed-{engine}", "model": "minilm", "dataset": "vader-movies", "examples": 2000,
        "test_size": 32, "num_clients": 100, "clients_per_round": 10, "rounds": rounds,
        "local_steps": local_steps, "lr": 0.01, "batch_size": 8, "max_length": 32, "eval_every": rounds,
        "out_dir": str(out), "progress": False, "engine": engine,
    }  # fmt: skip


def ceiling(steps: int) -> float:
    """Client-steps per second of a bare ZO loop on one model (same task and batch)."""
    from fedseed import simulate, tasks
    from fedseed.seeds import PURPOSE_PERTURB, derive_seed

    config = simulate.config_from_dict(settings(1, 1, Path("/tmp"), "inprocess"))
    shards, _ = simulate.load_data(config)
    task, engine = simulate.build_model(config)
    data = [e for shard in shards for e in shard]
    key = b"speed"
    started = time.perf_counter()
    for i in range(steps):  # tokenising each batch is part of a step, as in the simulators
        enc = task.encode(data[(8 * i) % len(data) : (8 * i) % len(data) + 8])
        engine.step(derive_seed(key, PURPOSE_PERTURB, 0, 0, i), lambda e=enc: tasks.loss(task, e), lr=1e-2)
    return steps / (time.perf_counter() - started)


def simulated(rounds: int, local_steps: int, engine: str, out: Path) -> dict[str, float]:
    """Runs one simulation in a fresh process; returns its rates."""
    code = (
        "import json, resource, sys; from fedseed import simulate; "
        f"config = simulate.config_from_dict({settings(rounds, local_steps, out, engine)!r}); "
        "from importlib.metadata import entry_points; "
        "run = simulate.run_simulation if config.engine == 'inprocess' else "
        "{e.name: e for e in entry_points(group='fedseed.engines')}[config.engine].load(); "
        "import time; t = time.perf_counter(); r = run(config); wall = time.perf_counter() - t; "
        "print(json.dumps({'steps': r.client_steps, 'rounds_s': r.seconds, 'wall_s': wall, "
        "'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "
        "'children_peak_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["steps_per_s"] = result["steps"] / result["rounds_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-steps", type=int, default=4)
    parser.add_argument("--engines", nargs="+", default=["inprocess", "flower"])
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "simulate_speed.json")
    args = parser.parse_args()
    steps = args.rounds * 10 * args.local_steps
    rows: dict[str, dict[str, float]] = {}
    rate = ceiling(steps)
    rows["single-process ZO loop"] = {
        "steps_per_s": rate,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    for engine in args.engines:
        rows[engine] = simulated(args.rounds, args.local_steps, engine, Path("/tmp/fedseed-speed"))
    print(
        f"\n{steps} client-steps (100 clients, 10 per round, "
        f"{args.rounds} rounds x {args.local_steps} steps)\n"
    )
    print(
        "| path | client-steps/s (rounds) | vs ceiling | client-steps/s (whole command) "
        "| peak RSS MB (main / workers) |"
    )
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        peak = f"{row['peak_mb']:.0f}" + (
            f" / {row['children_peak_mb']:.0f}" if "children_peak_mb" in row else ""
        )
        whole = f"{row['steps'] / row['wall_s']:.2f}" if "wall_s" in row else "-"
        print(f"| {name} | {row['steps_per_s']:.2f} | {row['steps_per_s'] / rate:.2f}x | {whole} | {peak} |")
    if "inprocess" in rows and "flower" in rows:
        print(
            f"\nin-process / flower: {rows['inprocess']['steps_per_s'] / rows['flower']['steps_per_s']:.1f}x"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
