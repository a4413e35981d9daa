"""The two user-level workflows: query a prepared workspace, and map a bbox from scratch.

These sequence library calls (workspace → store → model → engine) so that the CLI stays a thin
parser and library users get the same behaviour as ``soundmap query`` / ``soundmap map``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import CacheError, InputError, ModelError
from ..progress import info
from ..query.engine import QueryResult, encode_queries, run_query
from ..query.plan import QueryOptions, make_plan
from .models import load_named_model, load_query_model

FUSED_CACHE_DIR = "fused"
"""Sub-directory of a workspace holding cached fused embeddings."""

MAP_DEFAULT_SOURCE = "s2cloudless-2020"
"""``soundmap map``'s imagery: the 2020 Sentinel-2 cloudless mosaic the PSM models were trained on."""

MAP_DEFAULT_MODELS = {"sentinel": "psm-geosound-sentinel-meta", "bing": "psm-geosound-bing-meta",
                      "googleEarth": "psm-soundingearth-googleearth-meta"}
"""``soundmap map``'s model per imagery family: the PSM checkpoint with all metadata (registry names)."""

MAP_CONFIRM_ABOVE_TILES = 5000
"""``soundmap map`` asks before downloading more tiles than this (``--yes`` skips the question)."""

MAP_LARGE_REGION_KM = 100.0
"""``soundmap map`` uses zoom 5 for regions wider than this, zoom 1 otherwise."""


def embedded_zooms(workspace: Any, store_url: str | None = None) -> list[int]:
    """PSM zoom levels that have an embedding store in ``workspace`` (a Workspace or its directory),
    or under its store URL (``store_url``, ``$SOUNDMAP_STORE_URL`` or the recorded one)."""
    from ..store.embeddings import embedding_store_location, store_exists

    return [zoom for zoom in (1, 3, 5) if store_exists(embedding_store_location(workspace, zoom, store_url))]


def choose_zoom(workspace: Any, zoom: int | None, store_url: str | None = None) -> int:
    """``zoom`` if given, else the single embedded zoom; a one-line error when that is ambiguous."""
    if zoom is not None:
        return int(zoom)
    zooms = embedded_zooms(workspace, store_url)
    if zoom is not None:
        return int(zoom)
    if not zooms:
        raise CacheError(f"no embeddings in workspace {Path(getattr(workspace, 'path', workspace))}; "
                         "run `soundmap embed` first")
    if len(zooms) > 1:
        raise InputError(f"the workspace has embeddings at zooms {', '.join(map(str, zooms))}; pick one with --zoom")
    return zooms[0]


def check_model_matches_store(model: Any, store: Any) -> None:
    """A query must fuse image features with the model that encoded them (same weights and
    preprocessing): a one-line CacheError saying what to do otherwise."""
    identity = store.identity
    if (identity.weights_sha256 != model.weights_sha256
            or identity.preprocess_version != model.preprocess_version):
        raise CacheError(f"the embeddings in {store.path} were made with model {identity.model_name} "
                         f"({identity.weights_sha256[:12]}), not {model.name} ({model.weights_sha256[:12]}); "
                         f"query with --model {identity.model_name} or re-run `soundmap embed --overwrite` "
                         "with that model")


def query_workspace(workspace: Any, options: QueryOptions, *, model: Any = None, device: str = "auto",
                    cache_dir: str | os.PathLike | None = None, fused_cache: bool = True,
                    store_url: str | None = None, partial: bool = False) -> QueryResult:
    """``soundmap query``: score the queries of ``options`` over a workspace's embeddings.

    The embeddings are read from the workspace, or from under ``store_url`` (else
    ``$SOUNDMAP_STORE_URL``, else the URL recorded by ``soundmap embed --store-url``).

    Validation happens in two steps so that bad input fails before any model is loaded:
    model-independent checks first, then the checks that need the model's metadata components.
    """
    from ..store.embeddings import open_embedding_store, require_complete
    from .workspace import Workspace

    make_plan(options)  # fail fast on hour 25, no query, --rgb with two queries, ...
    ws = workspace if isinstance(workspace, Workspace) else Workspace.load(workspace)
    zoom = choose_zoom(ws, options.zoom, store_url)
    store = open_embedding_store(ws, zoom, store_url=store_url)
    require_complete(store, partial=partial)  # a map of a store still being embedded is mostly nodata
    from ..models.partial import query_parts

    loaded = load_query_model(model, store, device=device, cache_dir=cache_dir,
                              parts=query_parts(options.texts, options.audios))  # e.g. no ViT for a text query
    check_model_matches_store(loaded, store)
    plan = make_plan(options, loaded)
    cache_root = Path(ws.path) / FUSED_CACHE_DIR if fused_cache else None
    return run_query(plan, model=loaded, store=store, attribution=ws.attribution, cache_root=cache_root,
                     imagery=workspace_imagery(ws, cache_dir))


def default_map_zoom(bbox: Any) -> int:
    """Zoom 5 for regions larger than ~100 km across, else zoom 1 (``soundmap map``'s default)."""
    from pyproj import Geod

    geod = Geod(ellps="WGS84")
    mid_lat = (bbox.south + bbox.north) / 2.0
    mid_lon = (bbox.west + bbox.east) / 2.0
    _, _, width = geod.inv(bbox.west, mid_lat, bbox.east, mid_lat)
    _, _, height = geod.inv(mid_lon, bbox.south, mid_lon, bbox.north)
    return 5 if max(abs(width), abs(height)) / 1000.0 > MAP_LARGE_REGION_KM else 1


def ensure_map_model(model: Any, family: str, *, yes: bool, confirm: Callable[[str], bool],
                     device: str = "auto", cache_dir: str | os.PathLike | None = None) -> Any:
    """The model for ``soundmap map``: ``model`` if given, else the default PSM model of ``family``
    (:data:`MAP_DEFAULT_MODELS`). A released model (default or named by ``--model``) that is not
    installed is offered for download (``confirm``), or pulled without asking under ``yes``;
    declining, or no terminal to ask on, is a one-line ModelError with the exact command."""
    from ..models import registry

    if model is not None and (hasattr(model, "fuse") or str(model) not in registry.load_registry().entries):
        return load_query_model(model, None, device=device, cache_dir=cache_dir)
    name = str(model) if model is not None else MAP_DEFAULT_MODELS.get(family)
    if name is None:
        raise ModelError(f"no default model for {family} imagery; pass --model NAME (see `soundmap models list`)")
    if name not in {installed.name for installed in registry.installed_models(cache_dir)}:
        if not yes and not confirm(pull_question(name, cache_dir)):
            raise ModelError(f"model {name!r} is not installed; run `soundmap models pull {name}`, "
                             "or pass --yes to pull it now, or pass --model")
        registry.pull_model(name, cache_dir=cache_dir)
    return load_named_model(name, device=device, cache_dir=cache_dir)


def pull_question(name: str, cache_dir: str | os.PathLike | None = None) -> str:
    """"Download NAME (1.0 GB) from the authors' Google Drive folder?" — the size when known
    (registry or lock file), the place from the entry's source."""
    from ..models import lockfile, registry

    entry = registry.load_registry().get(name)
    size = entry.size or (lockfile.locked(name, cache_dir) or {}).get("size")
    where = {"drive": "the authors' Google Drive folder", "hf": f"Hugging Face ({entry.source.get('repo')})",
             "url": entry.source.get("url")}.get(entry.source.get("kind", ""), "its source")
    amount = f" ({size / 1e9:.1f} GB)" if size else ""
    return f"Download {name}{amount} from {where}?"


def map_region(bbox: Any, options: QueryOptions, *, source: str = MAP_DEFAULT_SOURCE, zoom: int | None = None,
               model: Any = None, workspace: str | os.PathLike | None = None, yes: bool = False,
               confirm: Callable[[str], bool] = lambda _: False, device: str = "auto",
               cache_dir: str | os.PathLike | None = None, stride: float | None = None,
               fused_cache: bool = True, tiles_config: str | os.PathLike | None = None) -> QueryResult:
    """``soundmap map``: fetch the imagery of ``bbox``, embed it, and query it, in one go.

    The workspace defaults to a per-region directory under the cache, so that re-running a map of
    the same region (another query, another hour) reuses its tiles, embeddings and fusions.
    """
    from ..geo.bbox import parse_bbox
    from .embed import embed_region
    from ..tiles.sources import resolve_source
    from .workspace import Workspace, fetch_workspace

    box = parse_bbox(bbox) if isinstance(bbox, str) else bbox
    make_plan(options)
    tile_source = resolve_source(source, config_path=tiles_config)
    zoom = int(zoom) if zoom is not None else default_map_zoom(box)
    loaded = ensure_map_model(model, tile_source.family, yes=yes, confirm=confirm, device=device, cache_dir=cache_dir)
    plan = make_plan(options, loaded)  # model-dependent checks before any download
    query = encode_queries(loaded, plan.queries)  # an undecodable audio file fails before the download
    ws_path = Path(workspace) if workspace is not None else map_workspace_dir(box, tile_source, zoom, stride, cache_dir)
    ws = _map_workspace(ws_path, box, tile_source, zoom, stride)
    info(f"workspace {ws.path} (query it again with `soundmap query --workspace {ws.path}`)")
    from ..geo.planguard import check_plan

    check_plan([ws.grid(zoom)], tile_source, yes=yes)  # from the grid's shape, before any tile is listed
    cache = ws.tile_cache(cache_dir)
    confirm_download(ws, cache, yes=yes, confirm=confirm)
    fetched = fetch_workspace(ws, cache)
    if fetched.cells_lacking:
        info(f"{fetched.cells_lacking} cells lack imagery and will be nodata")
    embed_region(ws, zoom, loaded, device=device, cache_dir=cache_dir)
    from ..store.embeddings import open_embedding_store

    store = open_embedding_store(ws, zoom, model=loaded)
    cache_root = Path(ws.path) / FUSED_CACHE_DIR if fused_cache else None
    return run_query(plan, model=loaded, store=store, attribution=ws.attribution, cache_root=cache_root, query=query,
                     imagery=workspace_imagery(ws, cache_dir))


def workspace_imagery(ws: Any, cache_dir: str | os.PathLike | None = None) -> Any:
    """The workspace's own imagery (tile cache or raster), drawn under the ``--png`` quick-look."""
    from ..tiles.render import area_imagery

    return area_imagery(ws.source(), ws.tile_cache(cache_dir))


def confirm_download(ws: Any, cache: Any, *, yes: bool, confirm: Callable[[str], bool]) -> None:
    """Ask before a large download (as ``soundmap tiles fetch`` does); ``yes`` skips the question."""
    from .workspace import estimate_download, plan_zoom

    estimate = estimate_download(ws.source(), [plan_zoom(ws, z) for z in ws.zooms], cache)
    if estimate.to_fetch <= MAP_CONFIRM_ABOVE_TILES or yes:
        return
    question = (f"The map needs {estimate.to_fetch} tiles (~{estimate.bytes / 1e6:.0f} MB) from "
                f"{ws.source().name}. Download them?")
    if not confirm(question):
        raise InputError(f"not downloading {estimate.to_fetch} tiles; pass --yes, or map a smaller --bbox")


def map_workspace_dir(bbox: Any, source: Any, zoom: int, stride: float | None,
                      cache_dir: str | os.PathLike | None) -> Path:
    """A stable workspace directory for (bbox, source, zoom, stride) under the cache root."""
    import hashlib

    from ..paths import cache_dir as cache_root

    key = f"{bbox.west:.6f},{bbox.south:.6f},{bbox.east:.6f},{bbox.north:.6f}|{source.cache_key}|{zoom}|{stride}"
    return cache_root(cache_dir) / "maps" / hashlib.sha256(key.encode()).hexdigest()[:16]


def _map_workspace(path: Path, bbox: Any, source: Any, zoom: int, stride: float | None) -> Any:
    """Reuse the workspace at ``path`` when it is for the same region, else create it."""
    from .workspace import Workspace

    if Workspace.exists(path):
        ws = Workspace.load(path)
        same = (tuple(ws.region.bbox) == (bbox.west, bbox.south, bbox.east, bbox.north)
                and zoom in ws.zooms and ws.source().cache_key == source.cache_key)
        if same:
            return ws
        raise CacheError(f"workspace {path} was made for another region or source; pass another --workspace")
    ws = Workspace.create(path, source=source, zooms=[zoom], bbox=bbox, stride=stride)
    ws.save()
    return ws


def subcell_for_workspace(workspace: Any, options: Any, *, model: Any = None, device: str = "auto",
                          cache_dir: str | os.PathLike | None = None, store_url: str | None = None) -> Path:
    """``soundmap query --subcell``: the sub-cell COG of a workspace's queries."""
    from ..query.subcell import write_subcell_map
    from ..store.embeddings import open_embedding_store
    from .workspace import Workspace

    ws = workspace if isinstance(workspace, Workspace) else Workspace.load(workspace)
    zoom = choose_zoom(ws, options.zoom, store_url)
    store = open_embedding_store(ws, zoom, store_url=store_url)
    loaded = load_query_model(model, store, device=device, cache_dir=cache_dir)
    check_model_matches_store(loaded, store)
    return write_subcell_map(make_plan(options, loaded), model=loaded, store=store)


__all__ = ["choose_zoom", "default_map_zoom", "embedded_zooms", "map_region", "query_workspace",
           "subcell_for_workspace"]
