"""Shared fixtures: the spec's known answers and small real models (loaded once)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

# Without CUDA, Triton kernels run in Triton's CPU interpreter
# (tests/perturb/test_triton.py). triton reads the flag when each jit function,
# its own library included, is decorated, so it must be set before anything
# imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
SPEC_DIR = REPO / "docs" / "spec"  # the project's own copy of the stream spec and its known answers


def cuda_ready() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


requires_gpu = pytest.mark.skipif(not cuda_ready(), reason="needs CUDA and triton")


@pytest.fixture(scope="session")
def kat() -> dict[str, Any]:
    return json.loads((SPEC_DIR / "philox4x32_10_kat.json").read_text())


@pytest.fixture(scope="session")
def minilm() -> Any:
    from fedseed import models

    torch.set_num_threads(2)
    return models.load_sequence_classifier(num_labels=2, init_seed=0)


@pytest.fixture(scope="session")
def smollm2() -> Any:
    from fedseed import models

    return models.load_causal_lm()
