"""Philox4x32-10 reference against known-answer vectors."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fedseed.perturb.philox import philox4x32_10, philox_words
from tests.conftest import REPO


def _words(hex_words: list[str]) -> list[int]:
    return [int(w, 16) for w in hex_words]


def test_reproduces_every_known_answer_vector(kat: dict[str, Any]) -> None:
    # Prepare
    vectors = kat["vectors"]
    assert len(vectors) >= 7
    for v in vectors:
        counter = tuple(torch.tensor([c], dtype=torch.int64) for c in _words(v["counter"]))
        k0, k1 = _words(v["key"])
        # Execute
        out = philox4x32_10(counter, (k0, k1))  # type: ignore[arg-type]
        # Assert
        assert [int(o.item()) for o in out] == _words(v["output"]), v["source"]


@pytest.mark.parametrize("name", ["perturbation-stream-v1.md", "philox4x32_10_kat.json"])
def test_the_repositorys_spec_is_the_shared_one(name: str) -> None:
    # docs/spec/ is the project's own copy; where the team's shared/ folder sits beside the
    # checkout, the two must not drift.
    shared = REPO.parent / "shared" / "spec" / name
    if not shared.exists():
        pytest.skip("no shared/spec beside this checkout")
    assert (REPO / "docs" / "spec" / name).read_bytes() == shared.read_bytes()


def test_vectorised_words_equal_one_at_a_time() -> None:
    blocks = torch.arange(0, 1024, 37)
    batch = philox_words(blocks, 0xDEADBEEF, 0, (0x56789ABC, 0x1234))
    for i, b in enumerate(blocks.tolist()):
        single = philox_words(torch.tensor([b]), 0xDEADBEEF, 0, (0x56789ABC, 0x1234))
        assert torch.equal(batch[i], single[0])


@pytest.mark.parametrize("block", [0, 1, 2, 0x3FF])
def test_counter_layout_matches_triton_vectors(kat: dict[str, Any], block: int) -> None:
    # The H200-checked vectors use counter (offset, 0, 0, 0) under key 0x123456789ABC.
    expected = {int(v["counter"][0], 16): _words(v["output"]) for v in kat["vectors"][3:]}
    words = philox_words(torch.tensor([block]), 0, 0, (0x56789ABC, 0x1234))
    assert words[0].tolist() == expected[block]
