"""Embedding storage: the Zarr v3 store of pre-fusion image features on the cell grid, and the
resumable embed loop that fills it.

Readers (queries) call :func:`open_embedding_store`; :func:`embed_region` fills a store.
"""

from __future__ import annotations

from .embeddings import (CellState, EmbeddingStore, StoreIdentity, embedding_store_path,
                         open_embedding_store)
from .pipeline import EmbedReport, embed_region

__all__ = ["CellState", "EmbedReport", "EmbeddingStore", "StoreIdentity", "embed_region",
           "embedding_store_path", "open_embedding_store"]
