"""soundmap: zero-shot soundscape maps from satellite imagery, audio and text (PSM / GeoCLAP / Sat2Sound).

The public API is imported lazily so that ``import soundmap`` (and the CLI's ``--help``) stay fast
and do not pull in torch until a model is used.
"""

from __future__ import annotations

from ._lazy import lazy_getattr

__version__ = "0.1.0"

_LAZY = {
    # name: "module:attribute"
    "BBox": "soundmap.geo.bbox:BBox",
    "parse_bbox": "soundmap.geo.bbox:parse_bbox",
    "Grid": "soundmap.geo.grid:Grid",
    "make_grid": "soundmap.geo.grid:make_grid",
    "read_aoi": "soundmap.geo.aoi:read_aoi",
    "render_cell": "soundmap.tiles.render:render_cell",
    "render_cells": "soundmap.tiles.render:render_cells",
    "TileSource": "soundmap.tiles.sources:TileSource",
    "load_sources": "soundmap.tiles.sources:load_sources",
    "resolve_source": "soundmap.tiles.sources:resolve_source",
    "TileCache": "soundmap.tiles.cache:TileCache",
    "fetch_tiles": "soundmap.tiles.fetch:fetch_tiles",
    "Workspace": "soundmap.pipeline.workspace:Workspace",
    "load_model": "soundmap.models.soundscape:load_model",
    "SoundscapeModel": "soundmap.models.soundscape:SoundscapeModel",
    "ModelConfig": "soundmap.models.config:ModelConfig",
    "Metadata": "soundmap.preprocess.metadata:Metadata",
    "Embedding": "soundmap.models.embedding:Embedding",
    "score": "soundmap.models.scoring:score",
    "estimate": "soundmap.estimate:estimate",
    "open_embedding_store": "soundmap.store.embeddings:open_embedding_store",
    "EmbeddingStore": "soundmap.store.embeddings:EmbeddingStore",
    "embed_region": "soundmap.pipeline.embed:embed_region",
    "QueryOptions": "soundmap.query.plan:QueryOptions",
    "make_plan": "soundmap.query.plan:make_plan",
    "run_query": "soundmap.query.engine:run_query",
    "query_workspace": "soundmap.pipeline.query:query_workspace",
    "map_region": "soundmap.pipeline.query:map_region",
    "spatial_split": "soundmap.train.split:spatial_split",
    "TrainConfig": "soundmap.train.loop:TrainConfig",
    "Trainer": "soundmap.train.loop:Trainer",
    "train_model": "soundmap.train.run:train_model",
    "evaluate_model": "soundmap.train.evaluate:evaluate_model",
    "EvalOptions": "soundmap.train.evaluate:EvalOptions",
    "retrieval_metrics": "soundmap.train.metrics:retrieval_metrics",
}

__all__ = ["__version__", *_LAZY]


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
