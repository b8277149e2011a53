"""Do curricula help seed-only federated ZO fine-tuning? (issue 4's experiment)

    .venv/bin/python bench/curriculum.py                 # the full grid (about 45 min on 2 cores)
    .venv/bin/python bench/curriculum.py --seeds 0 --rounds 2   # a smoke run

SmolLM2-135M (label words, final RMSNorm weight), VADER all four domains, 20
clients, two partitions: by natural domain (5 clients per domain) and
Dirichlet(0.1) over labels. The same budget of client-steps for every arm:
``rounds x clients_per_round x local_steps``. Arms:

- data ordering with uniform selection: vanilla, curriculum, anti, random
  (loss under the global model, linear pacing a=0.8, b=0.2, as the paper);
- client selection with vanilla ordering: power-of-choice (d = 2m), disparity
  (the paper's client curriculum, linear pacing);
- both: curriculum ordering + disparity selection.

Writes ``bench/results/curriculum.json`` (every run), ``docs/curriculum.md``'s
table (``--table``) and ``docs/img/curriculum.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
ARMS: dict[str, dict[str, Any]] = {
    "vanilla": {},
    "curriculum": {"curriculum": {"ordering": "curriculum"}},
    "anti": {"curriculum": {"ordering": "anti"}},
    "random": {"curriculum": {"ordering": "random"}},
    "power-of-choice": {"selection": {"policy": "power-of-choice"}},
    "disparity": {"selection": {"policy": "disparity"}},
    "curriculum+disparity": {"curriculum": {"ordering": "curriculum"}, "selection": {"policy": "disparity"}},
}
PARTITIONS: dict[str, dict[str, Any]] = {
    "domain": {"scheme": "domain"},
    "dirichlet-0.1": {"scheme": "dirichlet", "alpha": 0.1},
}


def base_config(rounds: int, out: Path) -> dict[str, Any]:
    return {
        "model": "smollm2", "dataset": "vader-all", "examples": 1200, "test_size": 160,
        "num_clients": 20, "clients_per_round": 4, "rounds": rounds, "local_steps": 4,
        "lr": 0.1, "batch_size": 8, "max_length": 40, "eval_every": rounds, "threads": 1,
        "out_dir": str(out), "progress": False,
    }  # fmt: skip


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    from fedseed import simulate

    settings = dict(job["config"])
    for table in ("curriculum", "selection", "partition"):
        settings[table] = dict(settings.get(table, {}))
    settings["curriculum"].setdefault("min_samples", 8)
    config = simulate.config_from_dict(settings)
    started = time.perf_counter()
    report = simulate.run_simulation(config)
    return {
        "partition": job["partition"], "arm": job["arm"], "seed": job["seed"],
        "loss_before": report.loss_before, "loss_after": report.loss_after,
        "accuracy_before": report.accuracy_before, "accuracy_after": report.accuracy_after,
        "client_steps": report.client_steps, "bytes": report.bytes_up + report.bytes_down,
        "seconds": time.perf_counter() - started,
    }  # fmt: skip


def jobs(seeds: list[int], rounds: int, out: Path, arms: list[str]) -> list[dict[str, Any]]:
    result = []
    for seed in seeds:
        for pname, ptable in PARTITIONS.items():
            for arm in arms:
                config = {**base_config(rounds, out), **ARMS[arm], "partition": dict(ptable)}
                # The seed changes the run key (perturbation seeds), data split, partition and order.
                config.update(seed=seed, run_name=f"curriculum-{pname}-{arm}-s{seed}")
                result.append({"partition": pname, "arm": arm, "seed": seed, "config": config})
    return result


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):+.3f} ± {sd:.3f}"


def summarize(rows: list[dict[str, Any]]) -> str:
    """Paired by seed: each seed has its own test set, so compare gains, not levels."""
    lines = [
        "| partition | arm | accuracy gain (after - before) | held-out loss change | "
        "accuracy vs vanilla, same seed | runs |",
        "|---|---|---|---|---|---|",
    ]
    for pname in PARTITIONS:
        vanilla = {r["seed"]: r for r in rows if r["partition"] == pname and r["arm"] == "vanilla"}
        for arm in ARMS:
            sel = [r for r in rows if r["partition"] == pname and r["arm"] == arm]
            if not sel:
                continue
            gain = [r["accuracy_after"] - r["accuracy_before"] for r in sel]
            loss = [r["loss_after"] - r["loss_before"] for r in sel]
            paired = [
                r["accuracy_after"] - vanilla[r["seed"]]["accuracy_after"]
                for r in sel
                if r["seed"] in vanilla
            ]
            vs = _mean_sd(paired) if paired and arm != "vanilla" else "-"
            lines.append(f"| {pname} | {arm} | {_mean_sd(gain)} | {_mean_sd(loss)} | {vs} | {len(sel)} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PARTITIONS), figsize=(12, 4.2), sharey=True)
    for ax, pname in zip(axes, PARTITIONS, strict=True):
        arms = [a for a in ARMS if any(r["arm"] == a and r["partition"] == pname for r in rows)]
        for i, arm in enumerate(arms):
            sel = [r for r in rows if r["arm"] == arm and r["partition"] == pname]
            gains = [r["accuracy_after"] - r["accuracy_before"] for r in sel]
            ax.bar(i, statistics.mean(gains), color="#4C72B0" if arm == "vanilla" else "#DD8452", alpha=0.8)
            ax.scatter([i] * len(gains), gains, color="black", s=12, zorder=3)
        ax.axhline(0.0, color="grey", linewidth=1)
        ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right")
        ax.set_title(f"partition: {pname}")
    fig.suptitle("SmolLM2-135M, VADER (4 domains), 20 clients, same client-step budget per arm")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "curriculum.json")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "img" / "curriculum.png")
    parser.add_argument("--runs-dir", type=Path, default=Path("/tmp/fedseed-curriculum-runs"))
    parser.add_argument("--table", action="store_true", help="only print the table of an existing --out")
    args = parser.parse_args()
    if args.table:
        rows = json.loads(args.out.read_text())["runs"]
        print(summarize(rows))
        plot(rows, args.plot)
        return
    todo = jobs(args.seeds, args.rounds, args.runs_dir, args.arms)
    rows: list[dict[str, Any]] = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for row in pool.map(run_one, todo):
            rows.append(row)
            print(
                f"[{len(rows)}/{len(todo)}] {row['partition']:>13} {row['arm']:>20} seed {row['seed']}: "
                f"acc {row['accuracy_before']:.3f} -> {row['accuracy_after']:.3f}, "
                f"loss {row['loss_before']:.4f} -> {row['loss_after']:.4f} ({row['seconds']:.0f} s)",
                flush=True,
            )
            args.out.write_text(
                json.dumps({"grid": {"seeds": args.seeds, "rounds": args.rounds}, "runs": rows}, indent=1)
            )
    print(summarize(rows))
    plot(rows, args.plot)


if __name__ == "__main__":
    main()
