"""What differential privacy on the scalars costs in accuracy (issue 7).

    .venv/bin/python bench/privacy.py            # 4 arms of the default simulation (~15 min on 2 cores)

The built-in default simulation (SmolLM2-135M, VADER movie snippets, 20 IID clients, 4 per
round, 10 rounds of 5 one-byte steps), without DP and with per-example clipping at C = 1.0
(the median per-example |g_i| here is about 0.55, the 90th percentile 1.8) and noise
multipliers 0.5, 1 and 2. Epsilon (delta 1e-5) is the most exposed client's, from the RDP
accountant of dp-accounting. Writes ``bench/results/privacy.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
ARMS: dict[str, dict[str, Any]] = {
    "no DP": {},
    "C=1, sigma=0.5": {"dp_clip": 1.0, "dp_noise": 0.5},
    "C=1, sigma=1": {"dp_clip": 1.0, "dp_noise": 1.0},
    "C=1, sigma=2": {"dp_clip": 1.0, "dp_noise": 2.0},
}


def run_one(name: str, settings: dict[str, Any], out: Path) -> dict[str, Any]:
    from fedseed import simulate

    raw = {"run_name": "privacy-" + name.replace(" ", "").replace(",", "-").replace("=", ""),
           "out_dir": str(out), "progress": False, **settings}  # fmt: skip
    started = time.perf_counter()
    report = simulate.run_simulation(simulate.config_from_dict(raw))
    summary = json.loads((report.run_dir / "summary.json").read_text())
    privacy = summary.get("privacy", {})
    return {
        "arm": name, **settings, "loss_before": report.loss_before, "loss_after": report.loss_after,
        "accuracy_before": report.accuracy_before, "accuracy_after": report.accuracy_after,
        "epsilon": privacy.get("epsilon"), "delta": privacy.get("delta"),
        "steps_of_worst_client": privacy.get("steps_of_worst_client"),
        "seconds": time.perf_counter() - started,
    }  # fmt: skip


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| arm | epsilon (delta 1e-5) | held-out loss | accuracy |", "| --- | --- | --- | --- |"]
    for r in results:
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f} ({r['steps_of_worst_client']} steps)"
        lines.append(
            f"| {r['arm']} | {eps} | {r['loss_before']:.3f} -> {r['loss_after']:.3f} | "
            f"{r['accuracy_before']:.3f} -> {r['accuracy_after']:.3f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(REPO / "runs" / "privacy"))
    parser.add_argument("--json", default=str(REPO / "bench" / "results" / "privacy.json"))
    args = parser.parse_args()
    results = []
    for name, settings in ARMS.items():
        results.append(run_one(name, settings, Path(args.out)))
        print(json.dumps(results[-1]), flush=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
