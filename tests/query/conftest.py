"""Query-area fixtures: a real embedding store of synthetic features spanning several chunks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.synthetic_store import write_synthetic_store


@pytest.fixture
def synthetic_store(tmp_path: Path, tiny_psm):
    """A 40 × 37 store with chunks of 16 (3 × 3 blocks, ragged edges), random features, scattered
    cells without imagery and one whole chunk without imagery; made by ``tiny_psm``."""
    return write_synthetic_store(tmp_path, tiny_psm, seed=7)
