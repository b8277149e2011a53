"""Where fedseed keeps downloaded data and converted models on this machine."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$FEDSEED_CACHE`` if set, else ``~/.cache/fedseed``."""
    env = os.environ.get("FEDSEED_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fedseed"
