"""Query-area fixtures: a real embedding store of synthetic features spanning several chunks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

SYNTHETIC_SHAPE = (40, 37)
SYNTHETIC_CHUNK = 16
EMPTY_BLOCK = (slice(0, 16), slice(16, 32))  # a whole chunk without imagery


@pytest.fixture
def synthetic_store(tmp_path: Path, tiny_psm):
    """A 40 × 37 store with chunks of 16 (3 × 3 blocks, ragged edges), random features, scattered
    cells without imagery and one whole chunk without imagery; made by ``tiny_psm``."""
    from soundmap.geo.bbox import BBox
    from soundmap.geo.grid import make_grid
    from soundmap.store.embeddings import CellState, EmbeddingStore, StoreIdentity, embedding_store_path

    rows, cols = SYNTHETIC_SHAPE
    grid = replace(make_grid(BBox(10.0, 50.0, 10.5, 50.3), "sentinel", 1), rows=rows, cols=cols, stride=500.0)
    identity = StoreIdentity(tiny_psm.name, tiny_psm.weights_sha256, tiny_psm.preprocess_version, "sentinel",
                             "synthetic", "synthetic", 1, grid.to_dict())
    store = EmbeddingStore.create(embedding_store_path(tmp_path / "ws", 1), identity, rows=rows, cols=cols,
                                  feature_dim=512, dtype="float32", chunk_cells=SYNTHETIC_CHUNK)
    rng = np.random.default_rng(7)
    valid = rng.random((rows, cols)) > 0.15
    valid[EMPTY_BLOCK] = False
    features = rng.normal(size=(rows, cols, 512)).astype(np.float32)
    for block_rows, block_cols in store.blocks():
        state = np.where(valid[block_rows, block_cols], CellState.EMBEDDED, CellState.NO_IMAGERY).astype(np.uint8)
        store.write_block(block_rows, block_cols, features[block_rows, block_cols], state)
    return EmbeddingStore.open(store.path)
