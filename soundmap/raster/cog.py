"""Cloud-Optimised GeoTIFF output, written window by window so memory never grows with the region.

GDAL's COG driver can only *copy* a finished dataset (it has no random-access write mode), so an
output is made in two steps:

1. a :class:`ScratchRaster` — a tiled, uncompressed GeoTIFF in a scratch directory — receives the
   values window by window, in any order (the query engine writes one store chunk at a time);
2. :func:`finalize_cog` copies it with the COG driver (tiles, internal overviews, DEFLATE) to a
   temporary file next to the destination and renames it into place (:mod:`soundmap.atomic`), so
   a reader — or an interrupted run — never sees a partial file.

GDAL's block cache is capped (:data:`GDAL_CACHE_MB`) so that peak memory stays flat however large
the raster is: GDAL would otherwise default to 5 % of the machine's RAM.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.windows import Window

from ..atomic import atomic_path

GDAL_CACHE_MB = 256
"""Upper bound of GDAL's raster block cache while soundmap writes rasters (MB)."""

SCRATCH_TILE = 256
"""Tile side of scratch rasters: small enough that a partial-tile rewrite is cheap."""

COG_BLOCK = 512
"""Tile side of the COG outputs (the GDAL COG default)."""


@dataclass(frozen=True)
class RasterGeometry:
    """Where an output raster lies: CRS, affine transform and size in pixels."""

    crs: str
    transform: Affine
    width: int
    height: int

    @classmethod
    def from_grid(cls, grid: Any, rows: slice | None = None, cols: slice | None = None) -> "RasterGeometry":
        """The geometry of ``grid`` (or of the ``rows`` × ``cols`` part of it): one pixel per cell.

        A grid's pixel (r, c) is its cell (r, c), so a sub-window's transform is the grid's transform
        shifted by the window's first row and column.
        """
        rows = rows or slice(0, grid.rows)
        cols = cols or slice(0, grid.cols)
        transform = grid.transform @ Affine.translation(cols.start, rows.start)
        return cls(crs=grid.crs, transform=transform, width=cols.stop - cols.start, height=rows.stop - rows.start)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) in CRS units."""
        west, north = self.transform @ (0, 0)
        east, south = self.transform @ (self.width, self.height)
        return min(west, east), min(south, north), max(west, east), max(south, north)


def to_uint8(normalised: np.ndarray) -> np.ndarray:
    """0–1 values (NaN = nodata) → uint8 ``1 + round(254 · v)``, with 0 reserved for nodata.

    The one encoding of every uint8 output (the learned RGB composites of ``soundmap query``, the
    BGA composites of ``soundmap bga``), so that all of them open alike in QGIS with nodata 0.
    """
    normalised = np.asarray(normalised, dtype=np.float64)
    out = np.zeros(normalised.shape, dtype=np.uint8)
    finite = np.isfinite(normalised)
    out[finite] = (1 + np.rint(np.clip(normalised[finite], 0.0, 1.0) * 254)).astype(np.uint8)
    return out


def gdal_env(**options: Any) -> rasterio.Env:
    """A rasterio environment with GDAL's block cache capped (flat peak memory) and no PAM sidecars."""
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB, GDAL_PAM_ENABLED="NO", **options)


def block_windows(width: int, height: int, block: int = SCRATCH_TILE) -> Iterator[Window]:
    """Row-major windows of at most ``block`` × ``block`` pixels covering a raster."""
    for row in range(0, height, block):
        for col in range(0, width, block):
            yield Window(col, row, min(block, width - col), min(block, height - row))


class ScratchRaster:
    """A tiled, uncompressed GeoTIFF written window by window, in any band and window order.

    Open it inside :func:`gdal_env` (the query engine wraps a whole call in one) so that GDAL's
    block cache stays capped.

    Uncompressed tiles make a partial-tile update a cheap in-place rewrite; the final, compressed
    COG is produced from it by :func:`finalize_cog`. Use as a context manager.
    """

    def __init__(self, path: str | os.PathLike, geometry: RasterGeometry, count: int, dtype: str,
                 nodata: float | int | None) -> None:
        self.path = Path(path)
        self.geometry = geometry
        self.count = count
        self.dtype = np.dtype(dtype)
        self.nodata = nodata
        tile = min(SCRATCH_TILE, _tile_side(max(geometry.width, geometry.height)))
        self._dataset = rasterio.open(
            self.path, "w+", driver="GTiff", width=geometry.width, height=geometry.height, count=count,
            dtype=self.dtype.name, crs=geometry.crs, transform=geometry.transform, nodata=nodata,
            tiled=True, blockxsize=tile, blockysize=tile, interleave="band", BIGTIFF="IF_SAFER",
            SPARSE_OK="TRUE")

    def write(self, band: int, window: Window, values: np.ndarray) -> None:
        """Write a 2-D array of values into ``band`` (1-based) at ``window``."""
        self._dataset.write(np.asarray(values, dtype=self.dtype), band, window=window)

    def read(self, band: int, window: Window) -> np.ndarray:
        """Read back a window of ``band`` (1-based)."""
        return self._dataset.read(band, window=window)

    def windows(self) -> Iterator[Window]:
        """Windows covering the raster, aligned on its tiles (for second passes)."""
        return block_windows(self.geometry.width, self.geometry.height)

    def describe(self, tags: Mapping[str, str], band_descriptions: Sequence[str] = (),
                 band_tags: Sequence[Mapping[str, str]] = ()) -> None:
        """Attach dataset tags, band descriptions and per-band tags (the COG copy keeps them)."""
        self._dataset.update_tags(**{key: str(value) for key, value in tags.items()})
        for index, description in enumerate(band_descriptions, start=1):
            self._dataset.set_band_description(index, description)
        for index, tags_of_band in enumerate(band_tags, start=1):
            self._dataset.update_tags(index, **{key: str(value) for key, value in tags_of_band.items()})

    def close(self) -> None:
        """Flush and close the file (idempotent)."""
        if not self._dataset.closed:
            self._dataset.close()

    def __enter__(self) -> "ScratchRaster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tile_side(size: int) -> int:
    """A GeoTIFF tile side (multiple of 16) no larger than needed for a raster of ``size`` pixels."""
    return max(16, min(SCRATCH_TILE, 16 * math.ceil(size / 16)))


def overview_count(width: int, height: int) -> int:
    """How many internal overview levels a COG of this size gets.

    GDAL's default stops once a level fits in one tile, which gives small regions none at all;
    here every raster bigger than 1 × 1 gets at least one level, and large ones keep halving down to
    about one COG tile.
    """
    largest = max(width, height)
    if largest <= 1:
        return 0
    halvings_to_one_tile = math.ceil(math.log2(largest / COG_BLOCK)) if largest > COG_BLOCK else 0
    return max(1, min(halvings_to_one_tile, int(math.floor(math.log2(largest)))))


def cog_options(width: int, height: int, dtype: str, resampling: str = "average") -> dict[str, Any]:
    """Creation options of soundmap's COGs: 512-px tiles, DEFLATE, internal overviews."""
    options: dict[str, Any] = {
        "COMPRESS": "DEFLATE",
        "BLOCKSIZE": COG_BLOCK,
        "OVERVIEW_RESAMPLING": resampling.upper(),
        "RESAMPLING": resampling.upper(),
        "OVERVIEW_COUNT": overview_count(width, height),
        "BIGTIFF": "IF_SAFER",
        "NUM_THREADS": "2",
    }
    if np.dtype(dtype).kind == "f":
        options["PREDICTOR"] = "YES"  # floating-point predictor for float bands
    return options


def copy_to_cog(scratch: str | os.PathLike, target: str | os.PathLike, *, resampling: str = "average") -> None:
    """Copy a finished scratch GeoTIFF to ``target`` with GDAL's COG driver (not atomic by itself).

    ``resampling`` is the overview resampling: ``average`` for continuous heatmaps (GDAL leaves
    nodata cells out of the averages), ``nearest`` for anything categorical.
    """
    with gdal_env():
        with rasterio.open(scratch) as src:
            options = cog_options(src.width, src.height, src.dtypes[0], resampling)
        rasterio.shutil.copy(str(scratch), str(target), driver="COG", **options)


def finalize_cog(scratch: str | os.PathLike, dest: str | os.PathLike, *, resampling: str = "average") -> Path:
    """Copy a finished scratch GeoTIFF to ``dest`` as a COG, atomically (temp file + rename)."""
    dest = Path(dest)
    with atomic_path(dest, suffix=".tmp.tif") as tmp:
        copy_to_cog(scratch, tmp, resampling=resampling)
        make_readable(tmp)
    return dest


def make_readable(path: Path) -> None:
    """Give a finished output the usual file mode (temp files are created owner-only)."""
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


class PendingOutputs:
    """Several output files that appear together or not at all.

    Each file is produced under a temporary name next to its destination; :meth:`commit` renames
    them all once everything succeeded, and an exception (or Ctrl-C) inside the ``with`` block
    deletes the temporaries, so an interrupted query leaves no partial output behind.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []

    def temp_path(self, dest: str | os.PathLike) -> Path:
        """A fresh temporary path next to ``dest`` that will become ``dest`` on commit."""
        import tempfile

        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=f".tmp{dest.suffix}", dir=dest.parent)
        os.close(fd)
        os.unlink(name)  # GDAL and PIL create the file themselves
        tmp = Path(name)
        self._pending.append((tmp, dest))
        return tmp

    def cog(self, scratch: str | os.PathLike, dest: str | os.PathLike, *, resampling: str = "average") -> Path:
        """Convert ``scratch`` to a COG that will become ``dest``; returns the temporary path."""
        tmp = self.temp_path(dest)
        copy_to_cog(scratch, tmp, resampling=resampling)
        return tmp

    @property
    def destinations(self) -> list[Path]:
        return [dest for _, dest in self._pending]

    def commit(self) -> list[Path]:
        """Rename every temporary onto its destination."""
        for tmp, dest in self._pending:
            make_readable(tmp)
            os.replace(tmp, dest)
        done = self.destinations
        self._pending = []
        return done

    def discard(self) -> None:
        """Delete every temporary (after a failure)."""
        for tmp, _ in self._pending:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self._pending = []

    def __enter__(self) -> "PendingOutputs":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def write_cog(dest: str | os.PathLike, windows: Iterator[tuple[Window, np.ndarray]], *, geometry: RasterGeometry,
              count: int, dtype: str, nodata: float | int | None, tags: Mapping[str, str],
              band_descriptions: Sequence[str] = (), band_tags: Sequence[Mapping[str, str]] = (),
              resampling: str = "average", scratch_dir: str | os.PathLike | None = None) -> Path:
    """Stream ``(window, values[count, h, w])`` pairs into a COG at ``dest`` (atomic, flat memory).

    A convenience over :class:`ScratchRaster` + :func:`finalize_cog` for writers that produce all
    bands of a window together.
    """
    import tempfile

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".soundmap-scratch-", dir=scratch_dir or dest.parent) as tmpdir:
        scratch_path = Path(tmpdir) / "scratch.tif"
        with gdal_env(), ScratchRaster(scratch_path, geometry, count, dtype, nodata) as scratch:
            for window, values in windows:
                values = np.asarray(values)
                if values.ndim == 2:
                    values = values[None]
                for band in range(count):
                    scratch.write(band + 1, window, values[band])
            scratch.describe(tags, band_descriptions, band_tags)
        return finalize_cog(scratch_path, dest, resampling=resampling)
