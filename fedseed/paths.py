"""Where fedseed keeps downloaded data and converted models on this machine."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$FEDSEED_CACHE`` if set, else ``~/.cache/fedseed``."""
    env = os.environ.get("FEDSEED_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fedseed"


# What makes a folder a run (fedseed simulate / train / peer write these).
RUN_FILES = ("summary.json", "config.json", "manifest.json", "ledger.jsonl", "metrics.jsonl")


def claim_run_folder(run_dir: Path, force: bool) -> Path:
    """``run_dir``, ready for a new run: refused if it holds one, unless ``force`` (then its run
    files are removed, so no stale summary of the old run is left beside the new one)."""
    from fedseed.errors import ConfigError

    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    if found and not force:
        raise ConfigError(
            f"{run_dir} already holds a run ({', '.join(found)}): pass --force to replace it, "
            "or choose another run_name or --out"
        )
    for name in found:
        (run_dir / name).unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir
