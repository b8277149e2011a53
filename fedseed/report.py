"""``fedseed status`` and ``fedseed report``: what a run did, as text and as PNG plots.

Reference lines on the bytes plot, per round with ``n`` clients, ``K`` seeds in the
pool, ``τ`` local steps and ``P`` trainable parameters (float32 everywhere):

- FedKSeed as published: each client downloads the K accumulated per-seed
  scalars and uploads τ (seed index, scalar) pairs: ``n·(4K + 8τ)``;
- FedAvg on the same trainable tensors: each client downloads and uploads them:
  ``n·8P`` (and ``n·8·|model|`` for full-model FedAvg).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedseed.runs import RunError, RunRecord, read_metrics


def fedkseed_round_bytes(clients: int, pool_size: int, local_steps: int) -> int:
    return clients * (4 * pool_size + 8 * local_steps)


def fedavg_round_bytes(clients: int, params: int) -> int:
    return clients * 8 * params


def _summary(record: RunRecord) -> dict[str, Any]:
    path = record.path / "summary.json"
    return json.loads(path.read_text()) if record.kind == "simulation" and path.exists() else {}


def status(record: RunRecord) -> dict[str, Any]:
    """What ``fedseed status`` prints (``--json``: this dict)."""
    info = {k: v for k, v in record.info.items() if k != "metrics"}
    out: dict[str, Any] = {
        "run": record.name, "kind": record.kind, "path": str(record.path), "rounds": record.rounds,
        "ledger_entries": len(record.entries), "base_hash": record.base_hash,
        "latest_hash": record.hashes[max(record.hashes)] if record.hashes else None,
        "latest_hash_after_round": max(record.hashes) if record.hashes else None, **info,
    }  # fmt: skip
    if record.kind == "simulation":
        metrics = record.info.get("metrics", [])
        summary = _summary(record)
        out["bytes_total"] = metrics[-1]["bytes_total"] if metrics else 0
        out["client_steps"] = metrics[-1]["client_steps"] if metrics else 0
        evaluated = [m for m in metrics if "test_accuracy" in m]
        if evaluated:
            out["latest_eval"] = {
                "round": evaluated[-1]["round"], "test_loss": evaluated[-1]["test_loss"],
                "test_accuracy": evaluated[-1]["test_accuracy"],
            }  # fmt: skip
        for key in ("loss_before", "accuracy_before", "final_hash", "privacy"):
            if key in summary:
                out[key] = summary[key]
    return out


def status_text(s: dict[str, Any]) -> str:
    lines = [f"run {s['run']} ({s['kind']}) at {s['path']}"]
    if s["kind"] == "simulation":
        state = "finished" if s["finished"] else "not finished (no summary.json yet)"
        lines.append(
            f"model {s['model']}, data {s['dataset']}, {s['clients']} clients, "
            f"{s['clients_per_round']} per round; {state}"
        )
        lines.append(f"rounds: {s['rounds']} of {s['rounds_planned']}, {s['client_steps']:,} client steps")
        lines.append(f"bytes on the wire: {s['bytes_total']:,}")
        if "latest_eval" in s:
            e = s["latest_eval"]
            before = (
                f"from loss {s['loss_before']:.4f}, accuracy {s['accuracy_before']:.4f} "
                if "loss_before" in s
                else ""
            )
            lines.append(
                f"held-out {before}to loss {e['test_loss']:.4f}, accuracy {e['test_accuracy']:.4f} "
                f"(after round {e['round']})"
            )
    elif s["kind"] == "training":
        lines.append(f"model {s['model']}, data {s['dataset']}, {s['steps']} steps")
        lines.append(f"accuracy {s['accuracy_before']:.4f} -> {s['accuracy_after']:.4f}")
    elif s["kind"] == "peers":
        state = "finished" if s["finished"] else "not finished (a peer was lost or is still running)"
        lines.append(
            f"model {s['model']}, data {s['dataset']}, {s['peers']} peers, {s['steps']} steps; {state}"
        )
    else:
        lines.append(
            f"task {s['task']} (model {s['model']}), K={s['pool_size']}, {s['local_steps']} local steps"
        )
        lines.append(f"clients: {s['clients']} ({s['active_clients']} active)")
        open_round = s["open_round"]
        lines.append(
            f"rounds closed: {s['rounds']}; "
            + (
                "no round open"
                if open_round is None
                else f"round {open_round['round']} open: {open_round['replies']}/{open_round['slots']} "
                f"replies, deadline in {open_round['deadline_in_s']} s"
            )
        )
        lines.append(f"reply bytes recorded: {s['reply_bytes']:,}")
        scores = {n: v for n, v in s["scores"].items() if v is not None}
        if scores:
            lines.append("latest scores: " + ", ".join(f"{n} {v:.4f}" for n, v in sorted(scores.items())))
        mismatches = s.get("mismatches", [])
        lines.append(f"hash mismatches recorded: {len(mismatches)}")
        for m in mismatches[-10:]:
            agreed = m["agreed_hash"] or "no majority"
            lines.append(
                f"  round {m['round']}: {m['client']} started from {m['claimed_hash']}, round's: {agreed}"
            )
        final = s.get("final_reports")
        if final is not None:
            agreed = final["agreed"] or "no majority of two or more yet"
            lines.append(f"final hash reports: {final['reports']} (agreed: {agreed})")
    if "privacy" in s:
        p = s["privacy"]
        lines.append(
            f"privacy: epsilon {p['epsilon']:.2f} at delta {p['delta']:g} for the most exposed client "
            f"({p['worst_client']}, {p['steps_of_worst_client']} steps; clip {p['dp_clip']:g}, "
            f"noise multiplier {p['dp_noise']:g})"
        )
    lines.append(f"ledger: {s['ledger_entries']} entries; base model {s['base_hash']}")
    if s["latest_hash"]:
        lines.append(f"model after round {s['latest_hash_after_round']}: {s['latest_hash']}")
    return "\n".join(lines)


# -- plots ---------------------------------------------------------------------------------


_NO_MODEL = "a coordinator holds no model, so it records no held-out metrics (a simulation does)"


@dataclass(frozen=True)
class Report:
    """What ``fedseed report`` drew, and each plot it could not draw with the reason."""

    written: list[Path]
    not_drawn: dict[str, str]  # file name -> why


def report(record: RunRecord, out_dir: Path) -> Report:
    """PNG plots of a federated run: those its record can support, and why the others are missing.

    Raises :class:`RunError` (one line) when no plot at all can be drawn."""
    import matplotlib

    matplotlib.use("Agg")
    written: list[Path] = []
    not_drawn: dict[str, str] = {}
    if record.kind == "simulation":
        metrics = read_metrics(record.path)
        if not metrics:
            raise RunError(f"{record.path} has no closed round yet (metrics.jsonl is empty)")
        out_dir.mkdir(parents=True, exist_ok=True)
        if any("test_accuracy" in m for m in metrics):
            written.append(_progress_plot(record, metrics, out_dir / "progress.png"))
            written.append(_bytes_plot(record, metrics, out_dir / "accuracy-vs-bytes.png"))
        else:
            why = "no round was evaluated on held-out data yet (see the run's eval settings)"
            not_drawn |= {"progress.png": why, "accuracy-vs-bytes.png": why}
        counts = _participation_from_metrics(metrics, record.info["clients"])
        written.append(_participation_plot(counts, out_dir / "participation.png"))
    elif record.kind == "coordinator":
        if not record.info["participation"]:
            raise RunError(f"{record.path}: no round has started yet, so there is nothing to plot")
        out_dir.mkdir(parents=True, exist_ok=True)
        not_drawn |= {"progress.png": _NO_MODEL, "accuracy-vs-bytes.png": _NO_MODEL}
        written.append(_participation_plot(record.info["participation"], out_dir / "participation.png"))
    elif record.kind == "peers":
        raise RunError(
            f"{record.path} is a serverless (peer) run: peers record no held-out metrics and no "
            "selection by round, so fedseed report has nothing to plot; see fedseed status"
        )
    else:
        raise RunError(
            "fedseed report plots federated runs (simulation folders, coordinator databases); "
            f"{record.path} is a single-process training run: see fedseed status"
        )
    return Report(written, not_drawn)


def _participation_from_metrics(metrics: list[dict[str, Any]], clients: int) -> dict[str, dict[str, int]]:
    from fedseed.simulate import client_name

    # Every client, the never-selected ones too (a gap in the plot is the point).
    counts = {client_name(i): {"selected": 0, "replied": 0} for i in range(clients)}
    for row in metrics:
        for name in row["selected"]:
            counts.setdefault(name, {"selected": 0, "replied": 0})["selected"] += 1
        for name in row["replied"]:
            counts[name]["replied"] += 1
    return counts


def _before(record: RunRecord) -> tuple[float, float] | None:
    summary = _summary(record)
    return (summary["loss_before"], summary["accuracy_before"]) if summary else None


def _progress_plot(record: RunRecord, metrics: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    evaluated = [m for m in metrics if "test_accuracy" in m]
    rounds = [m["round"] + 1 for m in evaluated]
    loss = [m["test_loss"] for m in evaluated]
    acc = [m["test_accuracy"] for m in evaluated]
    before = _before(record)
    if before:
        rounds, loss, acc = [0, *rounds], [before[0], *loss], [before[1], *acc]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    ax_acc.plot(rounds, acc, "o-", color="tab:blue")
    ax_acc.set(xlabel="rounds closed", ylabel="held-out accuracy", title="accuracy")
    ax_loss.plot(rounds, loss, "o-", color="tab:red")
    ax_loss.set(xlabel="rounds closed", ylabel="held-out loss", title="loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{record.name}: held-out metrics by round")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bytes_plot(record: RunRecord, metrics: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib.pyplot as plt

    summary = _summary(record)
    info = record.info
    evaluated = [m for m in metrics if "test_accuracy" in m]
    xs = [m["bytes_total"] for m in evaluated]
    ys = [m["test_accuracy"] for m in evaluated]
    before = _before(record)
    if before:
        xs, ys = [1, *xs], [before[1], *ys]  # 1 byte: a log axis has no zero
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(xs, ys, "o-", color="tab:blue", label=f"fedseed ({metrics[-1]['bytes_total']:,} B in all)")
    config = summary.get("config") or json.loads((record.path / "config.json").read_text())
    n = info["clients_per_round"]
    fedkseed = fedkseed_round_bytes(n, config["pool_size"], config["local_steps"])
    references = [("one FedKSeed round", fedkseed, "tab:orange")]
    if "trainable_params" in summary:
        trainable, full = summary["trainable_params"], summary["model_params"]
        references.append(("one FedAvg round (same tensors)", fedavg_round_bytes(n, trainable), "tab:green"))
        references.append(("one FedAvg round (full model)", fedavg_round_bytes(n, full), "tab:red"))
    for label, value, color in references:
        ax.axvline(value, color=color, linestyle="--", label=f"{label}: {value:,} B")
    ax.set_xscale("log")
    ax.set(
        xlabel="bytes on the wire, cumulative (log scale)",
        ylabel="held-out accuracy",
        title=f"{record.name}: accuracy against bytes sent ({n} clients per round)",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _participation_plot(counts: dict[str, dict[str, int]], path: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    names = sorted(counts)
    selected = [counts[n]["selected"] for n in names]
    replied = [counts[n]["replied"] for n in names]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names) + 2), 4))
    positions = range(len(names))
    ax.bar([p - 0.2 for p in positions], selected, width=0.4, label="selected", color="tab:gray")
    ax.bar([p + 0.2 for p in positions], replied, width=0.4, label="replied", color="tab:blue")
    ax.set_xticks(list(positions), names, rotation=60, ha="right", fontsize=7)
    ax.set(ylabel="rounds", title=f"participation per client ({len(names)} clients)")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
