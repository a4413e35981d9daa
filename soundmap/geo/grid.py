"""The grid of cells a map is made of, in a projected CRS whose metres are ground metres.

A PSM zoom level is a ground footprint (``zoom × tile_px × gsd`` metres, see
:mod:`soundmap.families`), so a cell must cover that much *ground* wherever it is. Web mercator
does not (its metres shrink by cos(lat) on the ground), so the default grid CRS is Lambert
azimuthal equal-area centred on the bbox: its side-scale distortion is cos(c/2) radially and
1/cos(c/2) tangentially at angular distance c from the centre, under 2 % over the contiguous USA.
:func:`make_grid` measures the true (geodesic) size of cell edges across the grid and refuses a
grid whose cells are off by more than 5 % from the nominal footprint.
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from affine import Affine
from pyproj import CRS, Geod, Transformer
from pyproj.exceptions import CRSError

from ..errors import InputError
from ..families import check_zoom, get_family
from .bbox import BBox

FOOTPRINT_TOLERANCE = 0.05
"""Largest accepted relative error of a cell edge's ground length against the nominal footprint."""

_GEOD = Geod(ellps="WGS84")
_LOCAL = threading.local()


def to_lonlat_transformer(crs: str) -> Transformer:
    """A cached (per thread: pyproj transformers are not shared across threads) grid-CRS → lon/lat transformer."""
    cache = _LOCAL.__dict__.setdefault("to_lonlat", {})
    if crs not in cache:
        cache[crs] = Transformer.from_crs(CRS.from_user_input(crs), CRS.from_epsg(4326), always_xy=True)
    return cache[crs]


def from_lonlat_transformer(crs: str) -> Transformer:
    """A cached lon/lat → grid-CRS transformer (per thread)."""
    cache = _LOCAL.__dict__.setdefault("from_lonlat", {})
    if crs not in cache:
        cache[crs] = Transformer.from_crs(CRS.from_epsg(4326), CRS.from_user_input(crs), always_xy=True)
    return cache[crs]


@dataclass(frozen=True)
class Grid:
    """Cells on a regular lattice in a projected CRS; cell (r, c) is pixel (r, c) of the output raster.

    ``stride`` is the distance between neighbouring cell centres (= the output pixel size) and
    ``footprint`` the side of the square of ground a cell's image covers; ``stride < footprint``
    makes overlapping cells.
    """

    crs: str
    x0: float
    y0: float
    stride: float
    footprint: float
    rows: int
    cols: int
    zoom: int
    family: str

    @property
    def transform(self) -> Affine:
        """Affine of the output raster: pixel (r, c) is cell (r, c)."""
        return Affine(self.stride, 0.0, self.x0, 0.0, -self.stride, self.y0)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols)."""
        return self.rows, self.cols

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of the output raster in CRS metres."""
        return (self.x0, self.y0 - self.rows * self.stride,
                self.x0 + self.cols * self.stride, self.y0)

    @property
    def tile_px(self) -> int:
        """Side in pixels of a rendered cell image (the family's stored tile size)."""
        return get_family(self.family).tile_px

    @property
    def resolution_m(self) -> float:
        """Ground metres per pixel of a rendered cell image (``zoom × gsd``)."""
        return self.footprint / self.tile_px

    def centers_xy(self, rows: Any, cols: Any) -> tuple[np.ndarray, np.ndarray]:
        """Cell centres in CRS metres for arrays of row and column indices (broadcast together)."""
        r = np.asarray(rows, dtype=np.float64)
        c = np.asarray(cols, dtype=np.float64)
        return self.x0 + (c + 0.5) * self.stride, self.y0 - (r + 0.5) * self.stride

    def centers_lonlat(self, rows: Any, cols: Any) -> tuple[np.ndarray, np.ndarray]:
        """Cell centres as (lon, lat) degrees: the per-cell location metadata of the models."""
        x, y = self.centers_xy(rows, cols)
        lon, lat = to_lonlat_transformer(self.crs).transform(x, y)
        return np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)

    def cell_bounds(self, row: int, col: int) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of cell (row, col)'s footprint around its centre, CRS metres."""
        minx, miny, maxx, maxy = self.cells_bounds(np.array([row]), np.array([col]))
        return float(minx[0]), float(miny[0]), float(maxx[0]), float(maxy[0])

    def cells_bounds(self, rows: Any, cols: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Vectorised :meth:`cell_bounds`: four arrays (minx, miny, maxx, maxy)."""
        x, y = self.centers_xy(rows, cols)
        half = self.footprint / 2.0
        return x - half, y - half, x + half, y + half

    def cell_transform(self, row: int, col: int) -> Affine:
        """Affine of cell (row, col)'s rendered image (tile_px × tile_px pixels over its footprint)."""
        minx, _, _, maxy = self.cell_bounds(row, col)
        res = self.resolution_m
        return Affine(res, 0.0, minx, 0.0, -res, maxy)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (plain floats, ints and strings) that :meth:`from_dict` reads back."""
        d = asdict(self)
        for key in ("x0", "y0", "stride", "footprint"):
            d[key] = float(d[key])
        for key in ("rows", "cols", "zoom"):
            d[key] = int(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Grid:
        """Rebuild a grid saved with :meth:`to_dict`; a damaged dict is an :class:`InputError`."""
        try:
            grid = cls(crs=str(d["crs"]), x0=float(d["x0"]), y0=float(d["y0"]),
                       stride=float(d["stride"]), footprint=float(d["footprint"]),
                       rows=int(d["rows"]), cols=int(d["cols"]), zoom=int(d["zoom"]),
                       family=str(d["family"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"saved grid is incomplete or damaged ({exc!s}); recreate the workspace") from None
        if grid.rows < 1 or grid.cols < 1 or not grid.stride > 0 or not grid.footprint > 0:
            raise InputError("saved grid has no cells or a non-positive size; recreate the workspace")
        check_zoom(grid.zoom)
        get_family(grid.family)
        return grid


def default_grid_crs(bbox: BBox) -> str:
    """Lambert azimuthal equal-area centred on the bbox, as a PROJ string (GDAL and QGIS read it)."""
    lon0, lat0 = bbox.center
    return (f"+proj=laea +lat_0={lat0:.6f} +lon_0={lon0:.6f} +x_0=0 +y_0=0 "
            "+datum=WGS84 +units=m +no_defs")


def normalize_crs(text: str) -> str:
    """Check a user's ``--crs`` is a projected CRS in metres and return a string PROJ/GDAL accept."""
    try:
        crs = CRS.from_user_input(text)
    except CRSError:
        raise InputError(f"--crs {text!r} is not a CRS PROJ knows; give e.g. EPSG:32633 or a PROJ string") from None
    if not crs.is_projected:
        raise InputError(f"--crs {text!r} is not a projected CRS; the grid needs metres (e.g. a UTM zone)")
    units = {axis.unit_name for axis in crs.axis_info}
    if not units or not units <= {"metre", "meter"}:
        raise InputError(f"--crs {text!r} is not in metres (units: {', '.join(sorted(units))}); pick a metric CRS")
    return crs.to_string()


def bbox_extent_in_crs(bbox: BBox, crs: str, points_per_edge: int = 101) -> tuple[float, float, float, float]:
    """(minx, miny, maxx, maxy) of the bbox outline, densified because parallels curve in the CRS."""
    t = np.linspace(0.0, 1.0, points_per_edge)
    w, s, e, n = bbox.as_tuple()
    lon = np.concatenate([w + (e - w) * t, np.full_like(t, e), e - (e - w) * t, np.full_like(t, w)])
    lat = np.concatenate([np.full_like(t, s), s + (n - s) * t, np.full_like(t, n), n - (n - s) * t])
    x, y = from_lonlat_transformer(crs).transform(lon, lat)
    x, y = np.asarray(x), np.asarray(y)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise InputError("the grid CRS cannot represent the whole bbox; pick another --crs or a smaller bbox")
    return float(x.min()), float(y.min()), float(x.max()), float(y.max())


def check_extent_covers(bbox: BBox, crs: str, extent: tuple[float, float, float, float],
                        samples_per_axis: int = 33) -> None:
    """InputError unless the projected outline's extent really holds the whole bbox in ``crs``.

    A CRS made for a small part of the globe (a UTM zone asked to hold the whole world) folds: the
    outline projects to a small region while interior points land far outside it, or do not come
    back to where they started. A lattice of interior points is projected and inverted (about a
    thousand points: milliseconds) so that such a grid is refused before any cell is planned.
    """
    w, s, e, n = bbox.as_tuple()
    lon, lat = np.meshgrid(np.linspace(w, e, samples_per_axis), np.linspace(s, n, samples_per_axis))
    x, y = (np.asarray(v) for v in from_lonlat_transformer(crs).transform(lon.ravel(), lat.ravel()))
    minx, miny, maxx, maxy = extent
    slack = 1e-6 * max(maxx - minx, maxy - miny, 1.0)
    inside = (np.isfinite(x) & np.isfinite(y) & (x >= minx - slack) & (x <= maxx + slack)
              & (y >= miny - slack) & (y <= maxy + slack))
    with np.errstate(invalid="ignore"):
        back_lon, back_lat = (np.asarray(v) for v in to_lonlat_transformer(crs).transform(x, y))
        dlon = np.abs((back_lon - lon.ravel() + 180.0) % 360.0 - 180.0)
        same = np.isfinite(back_lat) & ((dlon < 1e-4) | (np.abs(lat.ravel()) > 89.9)) & (np.abs(back_lat - lat.ravel()) < 1e-4)
    if not (inside & same).all():
        raise InputError(f"a grid in {crs} cannot cover this bbox (the projection folds or overflows across it); "
                         "drop --crs to use an equal-area grid centred on the bbox, or use a smaller bbox")


def footprint_errors(grid: Grid, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Relative error of the geodesic length of each edge of footprints centred at (x, y).

    Returns an (N, 4) array of ``ground_length / footprint − 1`` for the bottom, right, top and
    left edges. This is the 5 % rule measured on the ellipsoid, independent of the projection.
    """
    half = grid.footprint / 2.0
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    cx = np.stack([x - half, x + half, x + half, x - half], axis=1)   # ll, lr, ur, ul
    cy = np.stack([y - half, y - half, y + half, y + half], axis=1)
    lon, lat = to_lonlat_transformer(grid.crs).transform(cx, cy)
    lon, lat = np.asarray(lon), np.asarray(lat)
    nxt = [1, 2, 3, 0]
    _, _, dist = _GEOD.inv(lon, lat, lon[:, nxt], lat[:, nxt])
    dist = np.asarray(dist, dtype=np.float64).reshape(lon.shape)
    err = dist / grid.footprint - 1.0
    err[~np.isfinite(err)] = np.inf
    return err


def max_footprint_error(grid: Grid, samples_per_axis: int = 25) -> float:
    """Largest |relative edge-length error| over a lattice of cells spanning the whole grid (edges incl.)."""
    rows = np.unique(np.linspace(0, grid.rows - 1, min(samples_per_axis, grid.rows)).round().astype(int))
    cols = np.unique(np.linspace(0, grid.cols - 1, min(samples_per_axis, grid.cols)).round().astype(int))
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    x, y = grid.centers_xy(rr.ravel(), cc.ravel())
    return float(np.max(np.abs(footprint_errors(grid, x, y))))


def make_grid(bbox: BBox, family: str, zoom: int, *, stride: float | None = None,
              crs: str | None = None, tolerance: float | None = FOOTPRINT_TOLERANCE) -> Grid:
    """The grid of cells covering ``bbox`` at PSM ``zoom`` for imagery ``family``.

    The raster (cols × rows pixels of ``stride`` metres) covers the bbox's extent in the CRS and is
    centred on it. With ``tolerance`` set (default 5 %), cell edges are measured on the ellipsoid
    across the grid and an :class:`InputError` is raised when any is further than that from the
    nominal footprint (bbox too large for one grid, or a distorting ``crs`` such as EPSG:3857).
    ``tolerance=None`` skips the check (for tests and experts).
    """
    fam = get_family(family)
    check_zoom(zoom)
    footprint = fam.footprint_m(zoom)
    if stride is None:
        stride = footprint
    if not isinstance(stride, (int, float)) or not math.isfinite(stride) or stride < 1.0:
        raise InputError(f"--stride must be a distance in metres of at least 1, got {stride!r}")
    grid_crs = default_grid_crs(bbox) if crs is None else normalize_crs(crs)
    minx, miny, maxx, maxy = bbox_extent_in_crs(bbox, grid_crs)
    check_extent_covers(bbox, grid_crs, (minx, miny, maxx, maxy))
    cols = max(1, math.ceil((maxx - minx) / stride - 1e-9))
    rows = max(1, math.ceil((maxy - miny) / stride - 1e-9))
    x0 = (minx + maxx) / 2.0 - cols * stride / 2.0
    y0 = (miny + maxy) / 2.0 + rows * stride / 2.0
    grid = Grid(crs=grid_crs, x0=x0, y0=y0, stride=float(stride), footprint=float(footprint),
                rows=rows, cols=cols, zoom=zoom, family=fam.name)
    if tolerance is not None:
        check_footprints(grid, tolerance, user_crs=crs is not None)
    return grid


def check_footprints(grid: Grid, tolerance: float = FOOTPRINT_TOLERANCE, *, user_crs: bool = False) -> None:
    """Raise a one-line :class:`InputError` when cells are off their nominal footprint by > tolerance."""
    error = max_footprint_error(grid)
    if error <= tolerance:
        return
    shown = "more than 100" if not error <= 1.0 else f"{100 * error:.1f}"
    if user_crs:
        raise InputError(f"in --crs {grid.crs} cell footprints are off by up to {shown} % on the ground "
                         f"(limit {100 * tolerance:g} %); drop --crs to use an equal-area grid centred on the bbox")
    raise InputError(f"bbox too large for one grid: cell footprints would be off by up to {shown} % on the "
                     f"ground (limit {100 * tolerance:g} %); split it so no corner is over ~3900 km from its centre")


def window_for_bbox(grid: Grid, bbox: BBox) -> tuple[slice, slice]:
    """Rows and columns of the cells of ``grid`` whose pixels intersect ``bbox`` (EPSG:4326).

    Every output cut to a ``--bbox`` (query heatmaps, BGA composites) takes its window from here,
    so that they share one transform and can be compared pixel for pixel. The bbox outline is
    projected densified (its parallels curve in the grid CRS) and every cell whose pixel touches
    it is kept: the window covers the bbox.
    """
    minx, miny, maxx, maxy = bbox_extent_in_crs(bbox, grid.crs)
    stride = grid.stride
    col0 = max(0, math.floor((minx - grid.x0) / stride))
    col1 = min(grid.cols, math.ceil((maxx - grid.x0) / stride))
    row0 = max(0, math.floor((grid.y0 - maxy) / stride))
    row1 = min(grid.rows, math.ceil((grid.y0 - miny) / stride))
    if col1 <= col0 or row1 <= row0:
        raise InputError("--bbox does not overlap the workspace region; check its W,S,E,N order")
    return slice(row0, row1), slice(col0, col1)


def subgrid(grid: Grid, rows: slice, cols: slice) -> Grid:
    """The part ``rows × cols`` of ``grid`` (e.g. a :func:`window_for_bbox`) as a grid of its own:
    same CRS, stride and footprint, so its cells are the very cells of ``grid``."""
    return replace(grid, x0=grid.x0 + cols.start * grid.stride, y0=grid.y0 - rows.start * grid.stride,
                   rows=rows.stop - rows.start, cols=cols.stop - cols.start)


def aoi_mask(grid: Grid, geometry_wgs84: Any) -> np.ndarray:
    """Cells whose footprint intersects the AOI geometry (see :func:`soundmap.geo.aoi.aoi_mask`)."""
    from .aoi import aoi_mask as _aoi_mask

    return _aoi_mask(grid, geometry_wgs84)


def read_aoi(path: Any) -> tuple[BBox, Any]:
    """(bbox, geometry in EPSG:4326) of a vector file (see :func:`soundmap.geo.aoi.read_aoi`)."""
    from .aoi import read_aoi as _read_aoi

    return _read_aoi(path)
