"""``fedseed export``: rebuild a run's model from its base model and ledger, as a Hugging Face checkpoint.

The model is rebuilt, never copied: the base model is loaded locally, its hash
checked against the run's, and the ledger replayed step by step (the engine's
fused multi-entry update, the same arithmetic every participant used). The
result is checked against the last model hash the run recorded at or before
the exported round, then written with ``save_pretrained`` (safetensors, config,
tokenizer) into a temporary folder, loaded back and hashed once more, and only
then moved to ``--out``: a crash leaves no half-written checkpoint behind.

The checkpoint is plain transformers: ``AutoModelFor*.from_pretrained(out)``
loads it without fedseed installed. A LoRA run (``lora_rank > 0``) is written merged
(``W + (alpha/r) B A``), and its adapters also as a peft adapter folder ``adapter/``
(``PeftModel.from_pretrained(base, out / "adapter")``), checked against the run's hash.
``fedseed-export.json`` beside it records where it came from (run, rounds, hashes).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedseed import lora
from fedseed.ledger import model_hash, replay
from fedseed.runs import RunError, RunRecord, open_run

log = logging.getLogger(__name__)

PROVENANCE_FILE = "fedseed-export.json"
ADAPTER_DIR = "adapter"  # a LoRA run's peft adapter, beside the merged checkpoint


@dataclass(frozen=True)
class ExportReport:
    out: Path
    run: str
    kind: str
    rounds: int  # the model after this many rounds
    steps: int  # ledger steps replayed
    model_hash: str
    verified_at: int  # rounds after which a recorded hash matched (== rounds: the exported model itself)
    seconds: float


def _check(expected: str, actual: str, where: str) -> None:
    if expected != actual:
        raise RunError(
            f"{where}: the run recorded {expected} but the rebuilt model hashes to {actual}; "
            "the ledger does not fit this base model (another model file, transformers version "
            "or trainable set?) or the run folder was altered"
        )


def export_run(
    path: Path, out: Path, rounds: int | None = None, force: bool = False, progress: bool = True
) -> ExportReport:
    started = time.perf_counter()
    record = open_run(path)
    rounds = record.rounds if rounds is None else rounds
    if not 0 <= rounds <= record.rounds:
        raise RunError(f"--rounds must be in [0, {record.rounds}] for {path}, got {rounds}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise RunError(f"{out} exists and is not empty (pass --force to replace it)")

    base = record.load_base()
    base_hash = model_hash(base.model)
    if record.base_hash and record.base_hash != base_hash:
        raise RunError(
            f"{path}: the run's base model hash is {record.base_hash} but the base model "
            f"built here hashes to {base_hash}; this ledger belongs to another base model "
            "(other model files, transformers version or trainable set)"
        )
    verified_at = max((n for n in record.hashes if n <= rounds), default=0)
    steps = _replay(record, base.engine, verified_at, 0, progress)
    # Hash a whole model once per point that needs it (over SmolLM2 about as long as a ZO step).
    checkpoint_hash = model_hash(base.model) if steps else base_hash
    if verified_at in record.hashes:
        _check(record.hashes[verified_at], checkpoint_hash, f"after round {verified_at}")
    more = _replay(record, base.engine, rounds, verified_at, progress)
    steps += more
    final_hash = model_hash(base.model) if more else checkpoint_hash
    if verified_at < rounds:
        log.warning(
            "no model hash was recorded after round %d; the export is verified up to round %d",
            rounds,
            verified_at,
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model: Any = base.model  # a transformers PreTrainedModel (or a peft model around one)
        provenance: dict[str, Any] = {
            "run": record.name, "kind": record.kind, "source": str(record.path), "rounds": rounds,
            "rounds_in_run": record.rounds, "ledger_steps": steps, "base_hash": base_hash,
            "model_hash": final_hash, "verified_at_round": verified_at,
        }  # fmt: skip
        if lora.is_adapted(model):
            provenance |= _write_adapter(record, base.engine, model, final_hash, staging / ADAPTER_DIR)
            model = model.merge_and_unload()  # W + (alpha/r) B A: an ordinary checkpoint
            merged_hash = model_hash(model)
            provenance["merged_model_hash"] = merged_hash
        model.save_pretrained(staging)
        base.tokenizer.save_pretrained(staging)
        reloaded = type(model).from_pretrained(staging)
        expected = provenance.get("merged_model_hash", final_hash)
        _check(expected, model_hash(reloaded), f"{out} as written and loaded back")
        (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        _publish_modes(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportReport(
        out, record.name, record.kind, rounds, steps, final_hash, verified_at, time.perf_counter() - started
    )


def _write_adapter(
    record: RunRecord, engine: Any, model: Any, final_hash: str, folder: Path
) -> dict[str, Any]:
    """The trained adapters as a peft adapter folder, checked: loaded onto a freshly built base
    (adapters at their run-key init), they give exactly the run's model hash."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    others = [n for n in engine.trainable.names if ".lora_" not in n]
    if others:  # a LoRA adapter carries only adapters: the merged checkpoint has everything
        log.warning(
            "%s/ not written: the run also trained %d tensors besides the adapters (%s, ...), "
            "which a LoRA adapter cannot carry; the merged checkpoint holds them",
            ADAPTER_DIR, len(others), others[0],
        )  # fmt: skip
        return {"adapter": None}
    model.save_pretrained(folder)
    fresh: Any = record.load_base().model
    set_peft_model_state_dict(fresh, load_peft_weights(str(folder), device="cpu"))
    _check(final_hash, model_hash(fresh), f"{folder} loaded onto the base model")
    return {"adapter": ADAPTER_DIR}


def _replay(record: RunRecord, engine: Any, to_round: int, from_round: int, progress: bool) -> int:
    entries = [e for e in record.entries_through(to_round) if e.round >= from_round]
    return replay(engine, entries, progress=progress)


def _publish_modes(folder: Path) -> None:
    """Ordinary permissions (umask applies): mkdtemp and some writers create owner-only files."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
