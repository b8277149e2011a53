"""Does seed-only training learn as well as the alternatives? (issue 8's harness)

    .venv/bin/python bench/quality.py          # the CPU config, bench/configs/quality-cpu.toml
    .venv/bin/python bench/quality.py --config bench/configs/quality-large.toml   # longer, many cores
    .venv/bin/python bench/quality.py --seeds 0 --tasks vader-minilm --methods fedseed,adamw-lora  # a slice
    .venv/bin/python bench/quality.py --report                          # tables + plots from the results file

Runs every (task, partition, method, seed) of a config, one fresh process each (so each has
its own peak memory), a few at a time, and appends each result to the config's results file
as it finishes (an interrupted grid resumes where it stopped; ``--fresh`` starts over).
``--report`` prints the Markdown tables docs/benchmarks.md carries and writes the plots
(accuracy vs bytes, accuracy vs client-steps) to docs/img/quality/. The methods:
bench/quality_methods.py.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import sys
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "bench" / "configs" / "quality-cpu.toml"
PARTITIONS: dict[str, dict[str, Any]] = {
    "iid": {"scheme": "iid"},
    "dirichlet-0.1": {"scheme": "dirichlet", "alpha": 0.1},
    "dirichlet-0.5": {"scheme": "dirichlet", "alpha": 0.5},
    "domain": {"scheme": "domain"},
}


def load(path: Path) -> dict[str, Any]:
    config = tomllib.loads(path.read_text())
    for name in ("seeds", "methods", "tasks", "data", "budget", "fo", "results"):
        if name not in config:
            raise SystemExit(f"error: {path}: missing '{name}'")
    return config


def jobs(config: dict[str, Any], seeds: list[int], task_names: set[str] | None, methods: set[str] | None):
    import quality_methods as qm

    out = []
    for task in config["tasks"]:
        if task_names and task["name"] not in task_names:
            continue
        for method in task.get("methods", config["methods"]):
            if methods and method not in methods:
                continue
            # Centralized methods see the union of the clients' data: one run per seed serves
            # every partition.
            partitions = ["-"] if method in qm.CENTRALIZED else task["partitions"]
            for part in partitions:
                for seed in seeds:
                    out.append({"task": task["name"], "partition": part, "method": method, "seed": seed})
    return out


def job_key(job: dict[str, Any]) -> tuple[str, str, str, int]:
    return (job["task"], job["partition"], job["method"], job["seed"])


def sim_config(config: dict[str, Any], job: dict[str, Any], out_dir: Path):
    from fedseed import simulate

    task = next(t for t in config["tasks"] if t["name"] == job["task"])
    part = job["partition"] if job["partition"] != "-" else "iid"
    settings = {
        **config["data"],
        **task.get("data", {}),
        "run_name": f"q-{job['task']}-{part}-s{job['seed']}",
        "model": task["model"], "dataset": task["dataset"], "lr": task["zo_lr"], "eps": task["zo_eps"],
        "seed": job["seed"], "threads": config.get("threads_per_job", 1), "out_dir": str(out_dir),
        "progress": False, "partition": PARTITIONS[part],
    }  # fmt: skip
    if "trainable" in task:
        settings["trainable"] = task["trainable"]
    return simulate.config_from_dict(settings)


def run_job(config: dict[str, Any], job: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """One arm in this (fresh) process; peak RSS is this process's own."""
    import quality_methods as qm
    import torch

    torch.set_num_threads(config.get("threads_per_job", 1))
    task = next(t for t in config["tasks"] if t["name"] == job["task"])
    budget = qm.Budget(**{**config["budget"], **task.get("budget", {})})
    fo = qm.FOSettings(**{**config["fo"], **task.get("fo", {})})
    sim = sim_config(config, job, Path(out_dir))
    recipes = {**config.get("recipes", {}), **task.get("recipes", {})}
    curve = qm.run_method(job["method"], sim, budget, fo, Path(out_dir) / job["method"], recipes)
    return {
        **job, "points": [asdict(p) for p in curve.points], "forwards_per_step": curve.forwards_per_step,
        "bytes_per_client_round": curve.bytes_per_client_round, "trainable_params": curve.trainable_params,
        "seconds": curve.seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }  # fmt: skip


def run_grid(config: dict[str, Any], todo: list[dict[str, Any]], results_path: Path, workers: int) -> None:
    results = read_results(results_path)
    done = {job_key(r) for r in results}
    # The slowest model's arms first: the pool's last minutes are not one long arm alone.
    slow = {t["name"] for t in config["tasks"] if t["model"] == "smollm2"}
    pending = sorted((j for j in todo if job_key(j) not in done), key=lambda j: j["task"] not in slow)
    print(f"{len(todo)} arms, {len(todo) - len(pending)} already in {results_path}, {len(pending)} to run")
    out_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "fedseed-quality-runs"
    started = time.perf_counter()
    # A fresh process per arm: its own peak memory, no state left from the last arm.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, max_tasks_per_child=1) as pool:
        futures = {pool.submit(run_job, config, job, str(out_dir)): job for job in pending}
        for i, future in enumerate(as_completed(futures), 1):
            job = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # one failed arm is reported, the grid goes on
                print(f"[{i}/{len(pending)}] {job_key(job)} FAILED: {exc!r}", flush=True)
                continue
            results.append(result)
            write_results(results_path, results)  # after every arm: an interruption loses one arm at most
            last = result["points"][-1]
            print(
                f"[{i}/{len(pending)}] {job['task']} {job['partition']} {job['method']} seed {job['seed']}: "
                f"acc {result['points'][0]['accuracy']:.3f} -> {last['accuracy']:.3f}, "
                f"{last['bytes']:,} B, {result['seconds']:.0f} s "
                f"(elapsed {time.perf_counter() - started:.0f} s)",
                flush=True,
            )


def read_results(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["runs"] if path.exists() else []


def write_results(path: Path, runs: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    runs = sorted(runs, key=job_key)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    tmp.replace(path)


# -- report -----------------------------------------------------------------------------


def mean_spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def human_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} B"


def table(config: dict[str, Any], runs: list[dict[str, Any]], task: dict[str, Any]) -> str:
    """One task's table: a row per (method, partition), mean ± sd over seeds."""
    mine = [r for r in runs if r["task"] == task["name"]]
    ceiling = [r["points"][-1]["accuracy"] for r in mine if r["method"] == "adamw-full"]
    lines = [
        "| method | partition | accuracy (start -> end) | of AdamW-full | bytes/client/round "
        "| total bytes | client-steps | fwd-equiv | wall s | peak MB | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method in task.get("methods", config["methods"]):
        parts = sorted({r["partition"] for r in mine if r["method"] == method})
        for part in parts:
            group = [r for r in mine if r["method"] == method and r["partition"] == part]
            end = [r["points"][-1]["accuracy"] for r in group]
            start = statistics.mean(r["points"][0]["accuracy"] for r in group)
            steps = group[0]["points"][-1]["client_steps"]
            share = f"{statistics.mean(end) / statistics.mean(ceiling):.0%}" if ceiling else "-"
            total = statistics.mean(r["points"][-1]["bytes"] for r in group)
            per_round = group[0]["bytes_per_client_round"]
            lines.append(
                f"| {method} | {part} | {start:.3f} -> {mean_spread(end)} | {share} "
                f"| {human_bytes(per_round) if per_round else '-'} | {human_bytes(total) if total else '-'} "
                f"| {steps:,} | {steps * group[0]['forwards_per_step']:,} "
                f"| {statistics.mean(r['seconds'] for r in group):.0f} "
                f"| {max(r['peak_rss_mb'] for r in group):,.0f} | {len(group)} |"
            )
    return "\n".join(lines)


def plots(config: dict[str, Any], runs: list[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for task in config["tasks"]:
        mine = [r for r in runs if r["task"] == task["name"]]
        for part in task["partitions"]:
            fig, (by_bytes, by_steps) = plt.subplots(1, 2, figsize=(12, 4.5))
            for method in task.get("methods", config["methods"]):
                group = [r for r in mine if r["method"] == method and r["partition"] in (part, "-")]
                if not group:
                    continue
                n = min(len(r["points"]) for r in group)
                acc = [statistics.mean(r["points"][i]["accuracy"] for r in group) for i in range(n)]
                steps = [group[0]["points"][i]["client_steps"] for i in range(n)]
                sent = [statistics.mean(r["points"][i]["bytes"] for r in group) for i in range(n)]
                style = "--" if group[0]["partition"] == "-" else "-"
                (line,) = by_steps.plot([max(s, 1) for s in steps], acc, style, marker="o", label=method)
                if group[0]["partition"] != "-":
                    by_bytes.plot([max(b, 1) for b in sent], acc, style, marker="o", label=method,
                                  color=line.get_color())  # fmt: skip
                else:  # centralized: nothing on the wire; its final accuracy as a reference level
                    by_bytes.axhline(
                        acc[-1], linestyle=":", color=line.get_color(), label=f"{method} (final)"
                    )
            for ax, label in (
                (by_bytes, "bytes on the wire, all clients (log)"),
                (by_steps, "client-steps (log)"),
            ):
                ax.set_xscale("log")
                ax.set_xlabel(label)
                ax.set_ylabel("held-out accuracy")
                ax.grid(alpha=0.3)
            by_steps.legend(fontsize=7, loc="lower right")
            by_bytes.legend(fontsize=7, loc="lower right")
            fig.suptitle(f"{task['name']} ({task['dataset']}, {task['model']}), partition {part}: "
                         f"mean of {len(config['seeds'])} seeds")  # fmt: skip
            fig.tight_layout()
            path = out / f"{task['name']}-{part}.png"
            fig.savefig(path, dpi=90)
            plt.close(fig)
            written.append(path)
    return written


def report(config: dict[str, Any], results_path: Path) -> None:
    runs = read_results(results_path)
    if not runs:
        raise SystemExit(f"error: no results in {results_path}: run the grid first")
    for task in config["tasks"]:
        print(f"\n### {task['name']}: {task['dataset']}, {task['model']}\n")
        print(table(config, runs, task))
    for path in plots(config, runs, REPO / config.get("plots", "docs/img/quality")):
        print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--seeds", help="comma-separated; default: the config's")
    parser.add_argument("--tasks", help="comma-separated task names; default: all")
    parser.add_argument("--methods", help="comma-separated; default: the config's")
    parser.add_argument("--workers", type=int, help="arms run at once; default: the config's")
    parser.add_argument("--results", type=Path, help="default: the config's results file")
    parser.add_argument("--fresh", action="store_true", help="discard earlier results of this config")
    parser.add_argument("--report", action="store_true", help="only print tables and write plots")
    args = parser.parse_args(argv)
    if not args.config.exists():
        raise SystemExit(f"error: no config file at {args.config}")
    config = load(args.config)
    results_path = args.results or REPO / config["results"]
    if args.report:
        report(config, results_path)
        return
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(config["seeds"])
    task_names = set(args.tasks.split(",")) if args.tasks else None
    methods = set(args.methods.split(",")) if args.methods else None
    import quality_methods as qm

    known = set(qm.METHODS) | set(config.get("recipes", {}))
    known |= {name for task in config["tasks"] for name in task.get("recipes", {})}
    for task in config["tasks"]:  # a typo in a config fails now, not after an hour of other arms
        bad = set(task.get("methods", config["methods"])) - known
        if bad:
            raise SystemExit(f"error: task {task['name']}: unknown method(s) {', '.join(sorted(bad))}")
    unknown = (methods or set()) - known
    if unknown:
        raise SystemExit(
            f"error: unknown method(s) {', '.join(sorted(unknown))}; choose from {', '.join(sorted(known))}"
        )
    todo = jobs(config, seeds, task_names, methods)
    if not todo:
        raise SystemExit("error: nothing to run (check --tasks / --methods)")
    if args.fresh:
        results_path.unlink(missing_ok=True)
    started = time.perf_counter()
    run_grid(config, todo, results_path, args.workers or config.get("workers", 2))
    print(f"grid done in {time.perf_counter() - started:.0f} s; results in {results_path}")
    report(config, results_path)


if __name__ == "__main__":
    main()
