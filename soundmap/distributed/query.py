"""``soundmap query --scheduler``: fusion spread over a Dask cluster, one task per store chunk.

Fusion is what a query costs (performance.md: ~23 min per 10⁶ cells per metadata setting on CPU);
scoring and raster writing are cheap and memory-bound. So the cluster fuses: each task reads one
chunk-aligned block of the embedding store, fuses it with the worker's model (loaded once per
worker) and returns the fused block; the client scores it against the queries and writes it into
the same scratch raster as the single-machine engine, which then makes the same COG, normalised
bands, RGB composites and previews. The only difference from one machine is where
:func:`~soundmap.query.engine.fuse_block` runs, so the output values are the same.

The fused-embedding cache keeps one writer: cached blocks are read by the client (nothing is
submitted for them) and fused blocks are written into the cache by the client as they arrive.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..query.engine import FUSE_BATCH, FusedBlock, FusionCounter, crop_to_window, QueryResult, fuse_block, read_store_block, run_query, store_blocks
from .cluster import ModelRef, model_directory, worker_model

MODEL_SPILL_DIR = ".cluster-models"


def fuse_store_block(ref: ModelRef, store_path: str, setting: Any, rows: slice, cols: slice,
                     batch: int = FUSE_BATCH) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, int]:
    """Task: (mu, logvar, valid, fuse calls) of one store block, fused with the worker's model."""
    from ..store.embeddings import EmbeddingStore

    model = worker_model(ref)
    store = EmbeddingStore.open(store_path)
    features, valid = read_store_block(store, rows, cols)
    mu, logvar, calls = fuse_block(model, store.grid, setting, rows, cols, features, valid, batch)
    return mu, logvar, valid, calls


def cluster_fused_blocks(client: Any, ref: ModelRef, store_path: str | os.PathLike, *, retries: int = 2,
                         resources: dict[str, float] | None = None) -> Callable[..., Iterator[FusedBlock]]:
    """A drop-in for :func:`soundmap.query.engine.fused_blocks` that fuses on the cluster
    (on workers that have ``resources``, when given).

    Blocks come back in completion order (the engine writes windows in any order).
    """
    from distributed import as_completed

    def blocks(model: Any, store: Any, setting: Any, window: tuple[slice, slice], cache: Any,
               counter: FusionCounter, batch: int = FUSE_BATCH) -> Iterator[FusedBlock]:
        cached, futures = [], {}
        for rows, cols in store_blocks(store, window):
            if cache is not None and cache.has(rows, cols):
                cached.append((rows, cols))
                continue
            future = client.submit(fuse_store_block, ref, str(store_path), setting, rows, cols, batch,
                                   pure=False, retries=retries, resources=resources or None)
            futures[future] = (rows, cols)
        try:
            for rows, cols in cached:
                mu, logvar, valid = cache.read(rows, cols)
                counter.cached_blocks += 1
                yield crop_to_window(rows, cols, window, mu, logvar, valid)
            for future in as_completed(list(futures)):
                rows, cols = futures[future]
                mu, logvar, valid, calls = future.result()
                counter.computed(calls, valid)
                if cache is not None:
                    cache.write(rows, cols, mu, logvar, valid)
                yield crop_to_window(rows, cols, window, mu, logvar, valid)
        finally:
            client.cancel(list(futures))  # no-op for finished ones; stops the rest on error or Ctrl-C

    return blocks


def model_ref(model: Any, store: Any, *, device: str = "auto", cache_dir: str | os.PathLike | None = None,
              spill_dir: Path | None = None) -> ModelRef:
    """Where workers load the query model: its installed directory, else a copy saved in
    ``spill_dir`` (default: the workspace of a local store; a store at a URL has none, so the
    caller passes the workspace's)."""
    spill = spill_dir if spill_dir is not None else Path(store.path).parent.parent / MODEL_SPILL_DIR
    return ModelRef(str(model_directory(model, cache_dir=cache_dir, spill_dir=spill)), str(model.weights_sha256),
                    str(device))


def run_query_distributed(plan: Any, *, client: Any, model: Any, store: Any, attribution: str = "",
                          cache_root: Path | None = None, query: Any = None, device: str = "auto",
                          cache_dir: str | os.PathLike | None = None,
                          resources: dict[str, float] | None = None, spill_dir: Path | None = None) -> QueryResult:
    """:func:`soundmap.query.engine.run_query` with fusion on the cluster (same outputs)."""
    ref = model_ref(model, store, device=device, cache_dir=cache_dir, spill_dir=spill_dir)
    blocks = cluster_fused_blocks(client, ref, store.path, resources=resources)
    return run_query(plan, model=model, store=store, attribution=attribution, cache_root=cache_root, query=query,
                     blocks=blocks)


def query_workspace_distributed(workspace: Any, options: Any, *, client: Any, model: Any = None, device: str = "auto",
                                cache_dir: str | os.PathLike | None = None, fused_cache: bool = True,
                                resources: dict[str, float] | None = None, store_url: str | None = None,
                                partial: bool = False) -> QueryResult:
    """:func:`soundmap.pipeline.query.query_workspace` with fusion on the cluster.

    The same checks in the same order (bad input fails before any model is loaded or task sent).
    ``store_url`` as for the single-machine query (every worker must reach it).
    """
    from ..query.plan import make_plan
    from ..pipeline.models import load_query_model
    from ..pipeline.query import FUSED_CACHE_DIR, check_model_matches_store, choose_zoom
    from ..pipeline.workspace import Workspace
    from ..store.embeddings import open_embedding_store, require_complete

    make_plan(options)
    ws = workspace if isinstance(workspace, Workspace) else Workspace.load(workspace)
    store = open_embedding_store(ws, choose_zoom(ws, options.zoom, store_url), store_url=store_url)
    require_complete(store, partial=partial)
    loaded = load_query_model(model, store, device="cpu", cache_dir=cache_dir)
    check_model_matches_store(loaded, store)
    plan = make_plan(options, loaded)
    cache_root = Path(ws.path) / FUSED_CACHE_DIR if fused_cache else None
    return run_query_distributed(plan, client=client, model=loaded, store=store, attribution=ws.attribution,
                                 cache_root=cache_root, device=device, cache_dir=cache_dir, resources=resources,
                                 spill_dir=Path(ws.path) / MODEL_SPILL_DIR)


def query_on_cluster(spec: Any, workspace: Any, options: Any, **kwargs: Any) -> QueryResult:
    """``soundmap query --scheduler``: connect to ``spec`` and run :func:`query_workspace_distributed`
    (fusion tasks need ``spec.resources``). Bad options fail before any cluster is started."""
    from ..query.plan import make_plan
    from .cluster import connect

    make_plan(options)
    with connect(spec) as client:
        return query_workspace_distributed(workspace, options, client=client, resources=dict(spec.resources) or None,
                                           **kwargs)


__all__ = ["query_on_cluster", "cluster_fused_blocks", "crop_to_window", "fuse_store_block", "query_workspace_distributed",
           "run_query_distributed"]
