"""Embedding storage: the Zarr v3 store of pre-fusion image features on the cell grid.

Readers (queries) call :func:`open_embedding_store`; the embed workflow that fills a store is
:func:`soundmap.pipeline.embed.embed_region`.
"""

from __future__ import annotations

from .embeddings import (CellState, EmbeddingStore, StoreIdentity, embedding_store_path,
                         open_embedding_store)

__all__ = ["CellState", "EmbeddingStore", "StoreIdentity", "embedding_store_path", "open_embedding_store"]
