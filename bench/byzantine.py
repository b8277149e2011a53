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

The attack is injected here, not in fedseed: :class:`Byzantine` wraps the simulator's
in-process transport and rewrites the attackers' reply bytes before the round aggregates them
(what a hostile client could send over any transport).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
ATTACKS = ["none", "sign-flip", "max", "random"]


def attacked(payload: bytes, attack: str, key: bytes, round_index: int, slot: int) -> bytes:
    """What a Byzantine client sends instead of its honest bytes.

    sign-flip: every nonzero byte with its sign bit toggled; max: the largest magnitude the
    codec carries, with the honest sign; random: derived uniform bytes. (NaN or infinity
    cannot be sent at all: every byte decodes to a finite value.)
    """
    from fedseed.seeds import PURPOSE_ATTACK, derive_seed

    if attack == "sign-flip":
        return bytes(b ^ 0x80 if b else 0 for b in payload)
    if attack == "max":
        return bytes((b & 0x80) | 0x7F for b in payload)
    if attack != "random":
        raise ValueError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS[1:])}")
    draws = (derive_seed(key, PURPOSE_ATTACK, round_index, slot, step) for step in range(len(payload)))
    return bytes(d & 0xFF for d in draws)


@dataclass
class Byzantine:
    """A transport whose clients in ``attackers`` send ``attack``'s bytes instead of their own."""

    inner: Any  # a fedseed.simulate.Transport
    attackers: frozenset[str]
    attack: str
    key: bytes

    def join(self, with_scores: bool) -> dict[str, tuple[int, float | None]]:
        return dict(self.inner.join(with_scores))

    def train(
        self, round_index: int, slots: dict[int, str], sample_counts: tuple[int, ...], history: Any
    ) -> Any:
        results = dict(self.inner.train(round_index, slots, sample_counts, history))
        for slot, result in results.items():
            if slots[slot] in self.attackers:
                sent = attacked(result.scalars, self.attack, self.key, round_index, slot)
                results[slot] = dataclasses.replace(result, scalars=sent)
        return results


def run_attacked(config: Any, attackers: int, attack: str) -> Any:
    """The in-process simulation with clients 0..attackers-1 sending ``attack``'s bytes."""
    from fedseed import simulate

    setup = simulate.build(config)
    names = frozenset(simulate.client_name(i) for i in range(attackers))
    transport = Byzantine(simulate.InProcess(setup.clients), names, attack, setup.rounds.key)
    return simulate.drive(config, setup, transport)


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
        "eval_every": rounds, "out_dir": str(out), "progress": False, **DEFENCES[defence],
    }  # fmt: skip
    attackers = 0 if attack == "none" else 4
    started = time.perf_counter()
    report = run_attacked(
        simulate.config_from_dict(raw), attackers, "sign-flip" if attack == "none" else attack
    )
    rows = [json.loads(line) for line in (report.run_dir / "metrics.jsonl").read_text().splitlines()]
    byzantine = {simulate.client_name(i) for i in range(attackers)}
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
