"""The workspace: everything about one region being mapped, so later commands repeat nothing.

``soundmap tiles fetch`` records the region (bbox or AOI), the imagery source (resolved in full,
so a later edit of tiles.yaml cannot silently change it), the family, zoom levels, requested CRS
and stride, and the exact :class:`~soundmap.geo.grid.Grid` of every zoom. ``soundmap embed`` and
``soundmap query`` then read it back: no bbox to repeat, and the same cells every time.

On disk it is one JSON file, ``<workspace>/workspace.json``, written atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..atomic import write_text_atomic
from ..errors import CacheError, InputError
from ..families import check_zoom
from ..paths import tile_cache_path, workspace_dir
from ..progress import info
from ..tiles.sources import TileSource

if TYPE_CHECKING:
    import numpy as np

    from ..geo.bbox import BBox
    from ..geo.grid import Grid
    from ..tiles.cache import TileCache

WORKSPACE_FILE = "workspace.json"
_CELLS_PER_CHUNK = 20_000
FORMAT = "soundmap-workspace"
FORMAT_VERSION = 1


@dataclass
class Region:
    """What the user asked to map: a bbox (EPSG:4326), and optionally the AOI it came from."""

    bbox: tuple[float, float, float, float]
    aoi_path: str | None = None
    aoi_geometry: dict[str, Any] | None = None  # GeoJSON geometry in EPSG:4326

    def to_dict(self) -> dict[str, Any]:
        return {"bbox": list(self.bbox), "aoi_path": self.aoi_path, "aoi_geometry": self.aoi_geometry}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Region":
        return cls(bbox=tuple(float(v) for v in data["bbox"]), aoi_path=data.get("aoi_path"),  # type: ignore[arg-type]
                   aoi_geometry=data.get("aoi_geometry"))

    def describe(self) -> str:
        w, s, e, n = self.bbox
        text = f"bbox {w:.5f},{s:.5f},{e:.5f},{n:.5f}"
        return f"{text} (AOI {self.aoi_path})" if self.aoi_path else text


@dataclass
class Workspace:
    """One region being mapped. Build with :meth:`create`, read with :meth:`load`."""

    path: Path
    region: Region
    source_info: dict[str, Any]
    zooms: list[int]
    grids: dict[int, dict[str, Any]]
    crs: str | None = None
    stride: float | None = None
    tiles_config: str | None = None
    created: str = ""
    updated: str = ""
    _mask_cache: dict[int, Any] = field(default_factory=dict, repr=False, compare=False)

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike | None = None, *, source: TileSource, zooms: list[int],
               bbox: "BBox | str | None" = None, aoi: str | os.PathLike | None = None,
               stride: float | None = None, crs: str | None = None,
               tiles_config: str | os.PathLike | None = None) -> "Workspace":
        """A workspace for ``bbox`` (or the AOI file ``aoi``) on ``source`` at PSM ``zooms``
        (one Grid per zoom, built now). Not written until :meth:`save`."""
        from ..geo.grid import make_grid

        if (bbox is None) == (aoi is None):
            raise InputError("give exactly one of --bbox W,S,E,N or --aoi FILE")
        region, box = _region(bbox, aoi)
        if not zooms:
            raise InputError("--zoom needs at least one level (1, 3 or 5)")
        grids = {z: make_grid(box, source.family, z, stride=stride, crs=crs).to_dict() for z in zooms}
        now = _now()
        return cls(path=workspace_dir(path), region=region, source_info=source.to_dict(), zooms=list(zooms),
                   grids=grids, crs=crs, stride=stride,
                   tiles_config=str(Path(tiles_config).expanduser().resolve()) if tiles_config else None,
                   created=now, updated=now)

    @classmethod
    def file_for(cls, path: str | os.PathLike | None = None) -> Path:
        """Where the workspace JSON of ``path`` (default: ``--workspace`` rules) lives."""
        return workspace_dir(path) / WORKSPACE_FILE

    @classmethod
    def exists(cls, path: str | os.PathLike | None = None) -> bool:
        return cls.file_for(path).is_file()

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "Workspace":
        """Read a workspace; a one-line CacheError says how to make one when there is none."""
        file = cls.file_for(path)
        if not file.is_file():
            raise CacheError(f"no workspace at {file.parent}: run `soundmap tiles fetch --bbox W,S,E,N "
                             "--source NAME` first, or pass --workspace DIR")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise CacheError(f"workspace file {file} is unreadable ({err}); re-run `soundmap tiles fetch`") from None
        return cls.from_dict(data, file.parent)

    def save(self) -> Path:
        """Write ``workspace.json`` atomically (readers never see half a file)."""
        self.updated = _now()
        file = self.path / WORKSPACE_FILE
        write_text_atomic(file, json.dumps(self.to_dict(), indent=2) + "\n")
        return file

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": FORMAT_VERSION, "soundmap_version": __version__,
            "created": self.created, "updated": self.updated,
            "region": self.region.to_dict(), "source": self.source_info, "family": self.family,
            "zooms": list(self.zooms), "crs": self.crs, "stride": self.stride,
            "grids": {str(z): g for z, g in self.grids.items()},
            "attribution": self.attribution, "licence": self.licence, "tiles_config": self.tiles_config,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str | os.PathLike) -> "Workspace":
        if data.get("format") != FORMAT:
            raise CacheError(f"{Path(path) / WORKSPACE_FILE} is not a soundmap workspace file")
        if int(data.get("version", 0)) > FORMAT_VERSION:
            raise CacheError(f"workspace {path} was written by a newer soundmap; upgrade soundmap")
        try:
            return cls(path=Path(path), region=Region.from_dict(data["region"]), source_info=dict(data["source"]),
                       zooms=[int(z) for z in data["zooms"]],
                       grids={int(z): g for z, g in data["grids"].items()}, crs=data.get("crs"),
                       stride=data.get("stride"), tiles_config=data.get("tiles_config"),
                       created=data.get("created", ""), updated=data.get("updated", ""))
        except (KeyError, TypeError, ValueError) as err:
            raise CacheError(f"workspace {path} is incomplete ({err!r}); re-run `soundmap tiles fetch`") from None

    # -- what later commands need --------------------------------------------------------------

    def source(self) -> TileSource:
        """The imagery source, exactly as resolved when the workspace was made."""
        return TileSource.from_dict(self.source_info)

    @property
    def family(self) -> str:
        return str(self.source_info["family"])

    @property
    def attribution(self) -> str:
        """Text that must accompany every map made in this workspace."""
        return str(self.source_info.get("attribution", ""))

    @property
    def licence(self) -> str:
        return str(self.source_info.get("licence", ""))

    @property
    def source_spec(self) -> str:
        """What the user typed for ``--source``."""
        return str(self.source_info.get("spec") or self.source_info.get("name", ""))

    def grid(self, zoom: int) -> "Grid":
        """The Grid of PSM zoom ``zoom`` (CacheError naming the recorded zooms if absent)."""
        from ..geo.grid import Grid

        check_zoom(zoom)  # a level that cannot exist is a typo, not a zoom still to fetch
        if zoom not in self.grids:
            have = ",".join(str(z) for z in self.zooms)
            raise CacheError(f"workspace {self.path} has zoom levels {have}, not {zoom}; run "
                             f"`soundmap tiles fetch --zoom {zoom}` with the same region first")
        return Grid.from_dict(self.grids[zoom])

    def tile_cache(self, cache_dir: str | os.PathLike | None = None) -> "TileCache":
        """The shared tile cache (``--cache-dir`` > ``SOUNDMAP_CACHE`` > XDG)."""
        from ..tiles.cache import TileCache

        return TileCache(tile_cache_path(cache_dir))

    def aoi_geometry(self) -> Any | None:
        """The AOI as a shapely geometry in EPSG:4326 (None for a plain bbox)."""
        if self.region.aoi_geometry is None:
            return None
        from shapely.geometry import shape

        return shape(self.region.aoi_geometry)

    def aoi_mask(self, zoom: int) -> "np.ndarray | None":
        """Cells of zoom ``zoom`` intersecting the AOI (rows × cols bool), None for a plain bbox."""
        geometry = self.aoi_geometry()
        if geometry is None:
            return None
        if zoom not in self._mask_cache:
            from ..geo.aoi import aoi_mask

            self._mask_cache[zoom] = aoi_mask(self.grid(zoom), geometry)
        return self._mask_cache[zoom]

    # alias named in interfaces.md
    mask = aoi_mask

    def cells(self, zoom: int) -> "tuple[np.ndarray, np.ndarray]":
        """Row and column indices of the cells to map at ``zoom`` (all cells, or those in the AOI)."""
        import numpy as np

        grid = self.grid(zoom)
        mask = self.aoi_mask(zoom)
        if mask is None:
            rows, cols = np.indices((grid.rows, grid.cols))
            return rows.ravel(), cols.ravel()
        rows, cols = np.nonzero(mask)
        return rows, cols

    def describe(self) -> str:
        return (f"{self.region.describe()}; source {self.source_info.get('name')} ({self.family}); "
                f"zooms {','.join(str(z) for z in self.zooms)}")


def workspace_for_fetch(path: str | os.PathLike | None = None, *, bbox: str | None = None,
                        aoi: str | os.PathLike | None = None, source: str | None = None,
                        family: str | None = None, zooms: list[int] | None = None,
                        stride: float | None = None, crs: str | None = None,
                        tiles_config: str | os.PathLike | None = None,
                        replace_region: bool = False, invalidate: bool = True) -> Workspace:
    """The workspace a ``tiles fetch`` describes: what the user gave, and for anything not given,
    what the existing workspace at ``path`` recorded (so ``soundmap tiles fetch`` alone retries
    the last fetch). Without an existing workspace a region is required; zooms default to [1].
    A region, grid or imagery other than the recorded one is refused (one line) unless
    ``replace_region``, which also deletes what was computed for the old one (unless not
    ``invalidate``: a dry run changes nothing)."""
    from dataclasses import replace

    from ..families import get_family
    from ..tiles.sources import resolve_source

    if bbox is not None and aoi is not None:
        raise InputError("give either --bbox or --aoi, not both")
    previous = Workspace.load(path) if Workspace.exists(path) else None
    if previous is None and bbox is None and aoi is None:
        raise InputError(f"give --bbox W,S,E,N or --aoi FILE (there is no workspace at {workspace_dir(path)} to re-use)")
    config = tiles_config or (previous.tiles_config if previous else None)
    if source is not None or previous is None:
        src = resolve_source(source, family=family, config_path=config)
    else:
        src = previous.source()
        if family is not None and get_family(family).name != src.family:
            src = replace(src, family=get_family(family).name)
    if bbox is None and aoi is None:
        assert previous is not None
        if previous.region.aoi_path is not None:
            aoi = previous.region.aoi_path
        else:
            bbox = ",".join(repr(v) for v in previous.region.bbox)
    if previous is not None:
        zooms = zooms or previous.zooms
        stride = stride if stride is not None else previous.stride
        crs = crs if crs is not None else previous.crs
    workspace = Workspace.create(path, source=src, zooms=zooms or [1], bbox=bbox, aoi=aoi, stride=stride,
                                 crs=crs, tiles_config=config)
    if previous is not None and (any(previous.grids[z] != workspace.grids[z]
                                     for z in set(previous.grids) & set(workspace.grids))
                                 or previous.source().cache_key != src.cache_key):
        if not replace_region:
            raise InputError(f"workspace {workspace.path} holds another region, grid or imagery "
                             f"({previous.describe()}); pass --replace-region to replace it (its embeddings "
                             "and fused caches are deleted) or use another --workspace")
        if not invalidate:
            return workspace
        removed = invalidate_outputs(workspace.path)
        info(f"workspace {workspace.path}: region, grid or imagery replaced; deleted {removed} stale "
             "embedding store(s)/fused cache(s)")
    return workspace


def invalidate_outputs(path: str | os.PathLike) -> int:
    """Delete what was computed for a workspace's previous region (local embedding stores and
    fused-embedding caches), so that no later query can serve a map of the old region; how many
    were deleted. Stores kept at a store URL are left alone (embed refuses their grid anyway)."""
    import shutil

    root = Path(path)
    stale = [*sorted((root / "embeddings").glob("zoom*.zarr")), root / "fused"]
    removed = 0
    for item in stale:
        if item.exists():
            shutil.rmtree(item)
            removed += 1
    return removed


# --------------------------------------------------------------------------- tiles of a workspace

@dataclass
class ZoomPlan:
    """The web-mercator tiles the cells of one PSM zoom need."""

    zoom: int
    web_zoom: int
    tiles: list[tuple[int, int, int]]  # (z, x, y), sorted

    @property
    def n_tiles(self) -> int:
        return len(self.tiles)


def plan_zoom(workspace: Workspace, zoom: int) -> ZoomPlan:
    """Exactly the tiles the cells of ``zoom`` need (only cells inside the AOI when there is one)."""
    from ..geo.tileplan import tiles_for_grid

    grid = workspace.grid(zoom)
    web_zoom, xy = tiles_for_grid(grid, workspace.source(), mask=workspace.aoi_mask(zoom))
    if web_zoom is None:  # a local raster: nothing to download
        return ZoomPlan(zoom=zoom, web_zoom=-1, tiles=[])
    return ZoomPlan(zoom=zoom, web_zoom=int(web_zoom), tiles=sorted((int(web_zoom), int(x), int(y)) for x, y in xy))


def cells_lacking_imagery(workspace: Workspace, zoom: int, cache: "TileCache",
                          plan: ZoomPlan | None = None) -> "np.ndarray":
    """Cells (rows × cols bool) that need at least one tile the cache does not hold.

    Cheap when nothing is missing (one cache lookup per tile); otherwise every cell's tiles are
    listed (vectorised, in chunks) to name exactly the cells a failed tile leaves without imagery.
    """
    import numpy as np

    from ..geo.tileplan import cell_tile_outlines, touched_tiles, wrap_tiles

    grid = workspace.grid(zoom)
    lacking = np.zeros((grid.rows, grid.cols), dtype=bool)
    source = workspace.source()
    if not source.is_remote:
        return lacking
    plan = plan or plan_zoom(workspace, zoom)
    absent = {(x, y) for _, x, y in cache.missing(source.cache_key, plan.tiles)}
    if not absent:
        return lacking
    rows, cols = workspace.cells(zoom)
    for start in range(0, rows.size, _CELLS_PER_CHUNK):
        r, c = rows[start:start + _CELLS_PER_CHUNK], cols[start:start + _CELLS_PER_CHUNK]
        tx, ty = cell_tile_outlines(grid, r, c, plan.web_zoom)
        cell, x, y = touched_tiles(tx, ty)
        x, y, inside = wrap_tiles(x, y, plan.web_zoom)
        hit = np.fromiter(((xi, yi) in absent for xi, yi in zip(x.tolist(), y.tolist())), dtype=bool, count=x.size)
        bad = cell[hit & inside]
        lacking[r[bad], c[bad]] = True
    return lacking


@dataclass
class DownloadEstimate:
    """How much a fetch would download: shown before it starts, and all that --dry-run prints."""

    tiles: int
    cached: int
    bytes_per_tile: int

    @property
    def to_fetch(self) -> int:
        return self.tiles - self.cached

    @property
    def bytes(self) -> int:
        return self.to_fetch * self.bytes_per_tile


def estimate_download(source: TileSource, plans: list[ZoomPlan], cache: "TileCache") -> DownloadEstimate:
    """Distinct tiles over all zooms, how many are cached, and the expected bytes of the rest."""
    if not source.is_remote:
        return DownloadEstimate(0, 0, 0)
    tiles = list(dict.fromkeys(t for plan in plans for t in plan.tiles))
    absent = cache.missing(source.cache_key, tiles)
    return DownloadEstimate(tiles=len(tiles), cached=len(tiles) - len(absent), bytes_per_tile=source.bytes_per_tile)


@dataclass
class WorkspaceFetch:
    """Outcome of fetching a workspace's tiles: one report per zoom and the cells left without imagery."""

    reports: dict[int, Any]  # zoom -> FetchReport
    lacking: dict[int, "np.ndarray"]  # zoom -> rows × cols bool

    @property
    def cells_lacking(self) -> int:
        return int(sum(int(mask.sum()) for mask in self.lacking.values()))

    @property
    def failed_tiles(self) -> dict[tuple[int, int, int], str]:
        failed: dict[tuple[int, int, int], str] = {}
        for report in self.reports.values():
            failed.update(report.failed)
        return failed


def fetch_workspace(workspace: Workspace, cache: "TileCache", plans: list[ZoomPlan] | None = None, *,
                    workers: int = 16, policy: Any = None, on_tile: Any = None) -> WorkspaceFetch:
    """Download every tile the workspace's cells need, zoom by zoom, then find cells still lacking
    imagery (only computed where some tile is missing). Local raster sources need no download."""
    import numpy as np

    from ..tiles.fetch import fetch_tiles

    source = workspace.source()
    plans = plans if plans is not None else [plan_zoom(workspace, z) for z in workspace.zooms]
    reports: dict[int, Any] = {}
    lacking: dict[int, np.ndarray] = {}
    for plan in plans:
        grid = workspace.grid(plan.zoom)
        if not source.is_remote:
            lacking[plan.zoom] = np.zeros((grid.rows, grid.cols), dtype=bool)
            continue
        report = fetch_tiles(source, plan.tiles, cache, workers=workers, policy=policy,
                             desc=f"zoom {plan.zoom} tiles (z{plan.web_zoom})", on_tile=on_tile)
        reports[plan.zoom] = report
        if cache.missing(source.cache_key, plan.tiles):
            lacking[plan.zoom] = cells_lacking_imagery(workspace, plan.zoom, cache, plan)
        else:
            lacking[plan.zoom] = np.zeros((grid.rows, grid.cols), dtype=bool)
    return WorkspaceFetch(reports=reports, lacking=lacking)


def _region(bbox: "BBox | str | None", aoi: str | os.PathLike | None) -> "tuple[Region, BBox]":
    """The Region record and the BBox the grids cover."""
    from ..geo.bbox import BBox, parse_bbox

    if aoi is not None:
        from shapely.geometry import mapping

        from ..geo.aoi import read_aoi

        box, geometry = read_aoi(aoi)
        geojson = json.loads(json.dumps(mapping(geometry)))  # tuples -> lists, JSON-safe
        return Region(bbox=(box.west, box.south, box.east, box.north),
                      aoi_path=str(Path(aoi).expanduser().resolve()), aoi_geometry=geojson), box
    box = parse_bbox(bbox) if isinstance(bbox, str) else bbox
    if not isinstance(box, BBox):
        box = BBox(*box)  # a (west, south, east, north) tuple from library callers
    return Region(bbox=(box.west, box.south, box.east, box.north)), box


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()
