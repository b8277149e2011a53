"""Byzantine clients against seed-only FedKSeed, with and without the defences (issue 7).

    .venv/bin/python bench/byzantine.py              # 4 attacks x 3 defences (~25 min on 2 cores)
    .venv/bin/python bench/byzantine.py --rounds 1   # a smoke run

SmolLM2-135M (label words, final RMSNorm weight) on VADER movie snippets, 20 IID
clients of which the first 4 (20%) are Byzantine, 6 clients per round, the same
budget of client-steps for every arm. Attacks (what a Byzantine client's bytes
become): none, sign-flip, max (the codec's largest magnitude, honest sign),
random bytes. NaN or infinity cannot be sent: every byte decodes to a finite value.
Defences:

- off: FedKSeed's plain weighted mean (clip_factor 0);
- clip: |g| clipped to 8x the median |g| of recent rounds (the default);
- clip+vote: clip, 3 clients per seed schedule, per-seed median, replies with an
  anomaly score above 3 left out. Same client-steps, a third as many distinct seeds.

Writes ``bench/results/byzantine.json``; prints the table for docs/robustness.md.
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
ATTACKS = ["none", "sign-flip", "max", "random"]
DEFENCES: dict[str, dict[str, Any]] = {
    "off": {"clip_factor": 0.0},
    "clip": {"clip_factor": 8.0},
    "clip+vote": {"clip_factor": 8.0, "replicas": 3, "aggregator": "median", "reject_anomaly": 3.0},
}


def run_one(attack: str, defence: str, rounds: int, out: Path) -> dict[str, Any]:
    from fedseed import simulate

    raw = {
        "run_name": f"byz-{attack}-{defence}", "model": "smollm2", "dataset": "vader-movies",
        "num_clients": 20, "clients_per_round": 6, "rounds": rounds, "local_steps": 4, "lr": 0.1,
        "eval_every": rounds, "out_dir": str(out), "progress": False,
        "byzantine": 0 if attack == "none" else 4, "attack": "sign-flip" if attack == "none" else attack,
        **DEFENCES[defence],
    }  # fmt: skip
    started = time.perf_counter()
    report = simulate.run_simulation(simulate.config_from_dict(raw))
    rows = [json.loads(line) for line in (report.run_dir / "metrics.jsonl").read_text().splitlines()]
    byzantine = {simulate.client_name(i) for i in range(raw["byzantine"])}
    flagged = sum(len(set(row["rejected"]) & byzantine) for row in rows)
    wrongly = sum(len(set(row["rejected"]) - byzantine) for row in rows)
    attacker_replies = sum(len(set(row["replied"]) & byzantine) for row in rows)
    return {
        "attack": attack, "defence": defence, "rounds": rounds, "loss_before": report.loss_before,
        "loss_after": report.loss_after, "accuracy_before": report.accuracy_before,
        "accuracy_after": report.accuracy_after, "attacker_replies": attacker_replies,
        "attacker_replies_rejected": flagged, "honest_replies_rejected": wrongly,
        "clipped": sum(row["clipped"] for row in rows), "seconds": time.perf_counter() - started,
    }  # fmt: skip


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| attack | defence | held-out loss | accuracy | attacker replies rejected "
        "| honest replies rejected |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['attack']} | {r['defence']} | {r['loss_before']:.3f} -> {r['loss_after']:.3f} | "
            f"{r['accuracy_before']:.3f} -> {r['accuracy_after']:.3f} | "
            f"{r['attacker_replies_rejected']}/{r['attacker_replies']} | {r['honest_replies_rejected']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "runs" / "byzantine"))
    parser.add_argument("--json", default=str(REPO / "bench" / "results" / "byzantine.json"))
    args = parser.parse_args()
    results = []
    for attack in ATTACKS:
        for defence in DEFENCES:
            result = run_one(attack, defence, args.rounds, Path(args.out))
            print(json.dumps(result), flush=True)
            results.append(result)
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
