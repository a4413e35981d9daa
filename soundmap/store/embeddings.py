"""The embedding store: pre-fusion image features laid out on the cell grid, in Zarr v3.

Layout of ``<workspace>/embeddings/zoom<z>.zarr`` (one Zarr v3 group per zoom level):

``features``  rows × cols × D, float16 (default) or float32, chunks of ``CHUNK_CELLS`` ×
              ``CHUNK_CELLS`` × D: a chunk is a map tile of cells, so the embed loop writes, and a
              query reads, whole chunks. Cells without a feature hold NaN (the fill value).
``state``     rows × cols uint8, same chunking: :class:`CellState` of every cell.
attributes    the grid (CRS, transform, footprint, zoom, family), the imagery source, the model
              (name, weights sha256, preprocessing version), the store format version, and a
              ``store_id`` new at every (re)creation, so caches derived from a store (fused
              embeddings) can tell an ``--overwrite`` apart from the store they were made from.

Why features are pre-fusion: the fused embedding depends on the metadata (month, hour, ...) chosen
at query time, the image feature does not, and the image encoder is by far the expensive part.

Crash safety: Zarr's ``LocalStore`` writes every chunk to a temporary file and renames it into
place, so a chunk on disk is always a whole old or a whole new chunk. The embed loop writes a
block's ``features`` chunk first and its ``state`` chunk second, and only ``state`` says a cell is
valid: an interruption between the two leaves cells marked "not done", never garbage marked valid.

Integrity: every chunk soundmap writes ends in a CRC-32C checksum (the Zarr v3 ``crc32c`` codec,
last in the codec pipeline), which the codec verifies whenever the chunk is read. A flipped byte
or a truncated chunk therefore fails to decode instead of changing values, and a ``features`` chunk
that is missing (it reads as the NaN fill value) under cells whose ``state`` says EMBEDDED is also
damage, never nodata. Either way the reader raises :class:`StoreDamagedError` naming the chunk file
and ``soundmap embed --repair``; :func:`repair_store` turns the damaged blocks back to PENDING (and
drops their chunks) so that the next embed re-embeds exactly those blocks.

Stores at an fsspec URL (``s3://bucket/ws/embeddings/zoom1.zarr``, ``gs://...``, ``memory://...``):
a workspace may keep its stores at a URL (``soundmap embed --store-url URL`` or the environment
variable ``SOUNDMAP_STORE_URL``; recorded in ``<workspace>/embeddings/store_url`` so that queries
find it). The same crash-safety argument holds there: an object store writes a whole object per
PUT (a reader sees the old object or the new one, never a part), and a Zarr chunk is one object,
so "features chunk, then state chunk" still never leaves garbage marked valid. Local paths behave
exactly as before; only URL strings (``scheme://...``) take the fsspec route.
"""

from __future__ import annotations

import enum
import os
import uuid
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import CacheError
from ..geo.grid import Grid


class StoreDamagedError(CacheError):
    """A chunk of an embedding store fails its checksum, cannot be decoded, or is missing under
    cells marked embedded: the store must be repaired (``soundmap embed --repair``)."""

#: Bump when the layout changes in a way older readers cannot read.
STORE_FORMAT_VERSION = 1
#: Cells per chunk side: a chunk of 32 × 32 cells × 512 float16 features is 1 MiB.
CHUNK_CELLS = 32
FEATURES = "features"
#: Name of the checksum codec every chunk carries (recorded in the store attributes too).
CHECKSUM_CODEC = "crc32c"
STATE = "state"
STORAGE_DTYPES: tuple[str, ...] = ("float16", "float32")
#: Largest feature chunk (bytes) a store is created with: wide features (Sat2Sound keeps 196 × 1024
#: tokens per cell, ~400 KB) get fewer cells per chunk so one block stays this small in memory.
MAX_CHUNK_BYTES = 64 * 2 ** 20


def capped_chunk_cells(chunk_cells: int, feature_dim: int, dtype: str) -> int:
    """``chunk_cells``, halved until a chunk of ``feature_dim``-wide cells fits :data:`MAX_CHUNK_BYTES`."""
    cell_bytes = int(feature_dim) * np.dtype(dtype).itemsize
    while chunk_cells > 1 and chunk_cells * chunk_cells * cell_bytes > MAX_CHUNK_BYTES:
        chunk_cells //= 2
    return chunk_cells


class CellState(enum.IntEnum):
    """What the store knows about one cell (the ``state`` array)."""

    PENDING = 0      #: not embedded yet (a new store, or an interrupted run)
    EMBEDDED = 1     #: imagery rendered and features written: the only valid state
    NO_IMAGERY = 2   #: tiles missing when last tried; retried by the next run
    OUTSIDE = 3      #: outside the workspace's area of interest; never embedded


#: The precision of a store written before precisions were recorded: unknown, so never resumed.
UNRECORDED_PRECISION = "unrecorded"


@dataclass(frozen=True)
class StoreIdentity:
    """Everything the stored features depend on: mixing two identities in one store is a bug.

    A store made with one identity is reused (resumed) only by a run with the same identity;
    anything else must be re-embedded (``--overwrite``) or go to another workspace.
    """

    model_name: str
    weights_sha256: str
    preprocess_version: str
    model_family: str
    source_name: str
    source_key: str
    zoom: int
    grid: Mapping[str, Any]
    precision: str = "fp32"   #: what the image encoder computed in: fp32 or bf16

    def to_attrs(self) -> dict[str, Any]:
        """The JSON-safe attributes recording this identity."""
        return {
            "zoom": int(self.zoom),
            "precision": self.precision,
            "model": {"name": self.model_name, "weights_sha256": self.weights_sha256,
                      "family": self.model_family},
            "preprocess_version": self.preprocess_version,
            "source": {"name": self.source_name, "cache_key": self.source_key},
            "grid": dict(self.grid),
        }

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> StoreIdentity:
        """Read the identity back from a store's attributes."""
        model, source = attrs["model"], attrs["source"]
        return cls(model_name=model["name"], weights_sha256=model["weights_sha256"],
                   preprocess_version=attrs["preprocess_version"], model_family=model["family"],
                   source_name=source["name"], source_key=source["cache_key"],
                   zoom=int(attrs["zoom"]), grid=attrs["grid"],
                   precision=str(attrs.get("precision", UNRECORDED_PRECISION)))

    def difference(self, other: StoreIdentity) -> str | None:
        """A short phrase naming the first way ``other`` differs from this identity, or None."""
        if self.weights_sha256 != other.weights_sha256 or self.model_name != other.model_name:
            return (f"model {self.model_name} ({self.weights_sha256[:12]}), not "
                    f"{other.model_name} ({other.weights_sha256[:12]})")
        if self.preprocess_version != other.preprocess_version:
            return f"preprocessing version {self.preprocess_version}, not {other.preprocess_version}"
        if self.source_key != other.source_key:
            return f"imagery source {self.source_name}, not {other.source_name}"
        if self.zoom != other.zoom:
            return f"zoom {self.zoom}, not {other.zoom}"
        if self.precision != other.precision:
            return f"{self.precision} precision, not {other.precision} (--precision)"
        if _normalised(self.grid) != _normalised(other.grid):
            return "a different grid (the workspace region, stride or CRS changed)"
        return None


def _normalised(value: Any) -> Any:
    """JSON round-trips turn tuples into lists: compare the two forms as equal."""
    if isinstance(value, Mapping):
        return {str(k): _normalised(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalised(v) for v in value]
    return value


def _georeference_attrs(grid_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``crs`` and ``transform`` (affine a, b, c, d, e, f: x = a·col + b·row + c, y = d·col + e·row + f)
    at the top level, so that GIS tools and people can read them without knowing the Grid class."""
    grid = Grid.from_dict(dict(grid_dict))
    return {"crs": grid.crs, "transform": [float(v) for v in tuple(grid.transform)[:6]]}


def embedding_store_path(workspace_path: str | os.PathLike, zoom: int) -> Path:
    """Where the store of ``zoom`` lives inside a workspace directory."""
    return Path(workspace_path) / "embeddings" / f"zoom{int(zoom)}.zarr"


#: A store's location: a local directory, or an fsspec URL string (``s3://...``, ``memory://...``).
StoreLocation = Path | str
#: Environment variable naming the URL under which a workspace's stores live (like --store-url).
STORE_URL_ENV = "SOUNDMAP_STORE_URL"
#: File, inside the workspace's ``embeddings`` directory, recording the store URL of the workspace.
STORE_URL_FILE = "store_url"


def is_store_url(location: Any) -> bool:
    """True for an fsspec URL (``scheme://...``, but not ``file://``), False for a local path."""
    return isinstance(location, str) and "://" in location and not location.startswith("file://")


def embedding_store_url(base_url: str, zoom: int) -> str:
    """The store of ``zoom`` under a workspace's store URL (``<base>/zoom<z>.zarr``)."""
    return f"{base_url.rstrip('/')}/zoom{int(zoom)}.zarr"


def check_store_url(url: str) -> str:
    """``url`` when fsspec knows its scheme; a one-line CacheError saying what to do otherwise."""
    if not is_store_url(url):
        raise CacheError(f"--store-url expects an fsspec URL like s3://bucket/path, got {url!r}")
    import fsspec

    scheme = url.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as err:
        raise CacheError(f"cannot use store URL {url} ({err}); install the fsspec backend for {scheme}://") from None
    return url.rstrip("/")


def record_store_url(workspace: Any, url: str | None) -> None:
    """Record (or, with None, forget) the URL under which ``workspace`` keeps its stores, so that
    later runs and queries of the workspace find them without being told again."""
    marker = Path(getattr(workspace, "path", workspace)) / "embeddings" / STORE_URL_FILE
    if url is None:
        marker.unlink(missing_ok=True)
        return
    from ..atomic import write_bytes_atomic

    marker.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(marker, (check_store_url(url) + "\n").encode())


def workspace_store_url(workspace: Any, store_url: str | None = None) -> str | None:
    """The store URL of ``workspace``: ``store_url`` if given, else ``$SOUNDMAP_STORE_URL``, else
    the one recorded in the workspace, else None (stores live in the workspace directory)."""
    if store_url:
        return check_store_url(store_url)
    if os.environ.get(STORE_URL_ENV):
        return check_store_url(os.environ[STORE_URL_ENV])
    marker = Path(getattr(workspace, "path", workspace)) / "embeddings" / STORE_URL_FILE
    if marker.is_file():
        recorded = marker.read_text().strip()
        return check_store_url(recorded) if recorded else None
    return None


def embedding_store_location(workspace: Any, zoom: int, store_url: str | None = None) -> StoreLocation:
    """Where the store of ``zoom`` of ``workspace`` lives: under its store URL when it has one
    (:func:`workspace_store_url`), else :func:`embedding_store_path` in the workspace directory."""
    base = workspace_store_url(workspace, store_url)
    if base is not None:
        return embedding_store_url(base, zoom)
    return embedding_store_path(Path(getattr(workspace, "path", workspace)), zoom)


def _url_filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) of a store URL."""
    import fsspec

    return fsspec.core.url_to_fs(url)


def store_exists(location: StoreLocation) -> bool:
    """True when a store's ``zarr.json`` exists, asked of its own filesystem (local or fsspec)."""
    if is_store_url(location):
        fs, root = _url_filesystem(str(location))
        return bool(fs.exists(f"{root.rstrip('/')}/zarr.json"))
    return (Path(location) / "zarr.json").is_file()


def _remove_url_store(url: str) -> None:
    """Delete every object of the store at ``url`` (``create`` replaces what was there)."""
    fs, root = _url_filesystem(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def chunk_slices(rows: int, cols: int, chunk: int = CHUNK_CELLS) -> Iterator[tuple[slice, slice]]:
    """Chunk-aligned (row slice, col slice) blocks covering a rows × cols grid, row-major."""
    for r0 in range(0, rows, chunk):
        for c0 in range(0, cols, chunk):
            yield slice(r0, min(r0 + chunk, rows)), slice(c0, min(c0 + chunk, cols))


class EmbeddingStore:
    """One zoom level's features and cell states on disk (see the module docstring for the layout).

    Readers use :attr:`grid`, :attr:`features`, :meth:`valid_mask` and :meth:`iter_blocks`; the
    embed loop uses :meth:`create_or_resume`, :meth:`read_block` and :meth:`write_block`.
    """

    def __init__(self, path: StoreLocation, group: zarr.Group) -> None:
        self.path = path
        self.group = group
        self.attrs: dict[str, Any] = dict(group.attrs)
        try:
            self.features: zarr.Array = group[FEATURES]  # type: ignore[assignment]
            self.state: zarr.Array = group[STATE]  # type: ignore[assignment]
            self.grid = Grid.from_dict(self.attrs["grid"])
            self.identity = StoreIdentity.from_attrs(self.attrs)
        except (KeyError, TypeError, ValueError) as err:
            raise CacheError(f"embedding store {path} is incomplete or from another version ({err}); "
                             "re-run `soundmap embed --overwrite`") from None
        version = self.attrs.get("format_version")
        if version != STORE_FORMAT_VERSION:
            raise CacheError(f"embedding store {path} has format version {version}, this soundmap reads "
                             f"{STORE_FORMAT_VERSION}; re-run `soundmap embed --overwrite`")

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike, *, writable: bool = False) -> EmbeddingStore:
        """Open an existing store (a directory or an fsspec URL); CacheError (one line) if it is
        missing or unreadable."""
        path = str(path) if is_store_url(path) else Path(path)
        if not store_exists(path):
            raise CacheError(f"no embeddings at {path}; run `soundmap embed` first")
        try:
            group = zarr.open_group(str(path), mode="r+" if writable else "r", zarr_format=3)
        except Exception as err:  # zarr raises many types for a damaged store
            raise CacheError(f"embedding store {path} is unreadable ({type(err).__name__}); "
                             "re-run `soundmap embed --overwrite`") from None
        return cls(path, group)

    @classmethod
    def create(cls, path: str | os.PathLike, identity: StoreIdentity, *, rows: int, cols: int,
               feature_dim: int, dtype: str = "float16", chunk_cells: int = CHUNK_CELLS) -> EmbeddingStore:
        """Create an empty store (every cell PENDING), replacing whatever is at ``path``.

        The store is built in a temporary sibling directory and renamed into place, so a reader
        never finds a store without its attributes or arrays.
        """
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage dtype must be one of {STORAGE_DTYPES}, got {dtype!r}")
        chunk_cells = capped_chunk_cells(chunk_cells, feature_dim, dtype)
        if is_store_url(path):
            return cls._create_at_url(str(path), identity, rows=rows, cols=cols, feature_dim=feature_dim,
                                      dtype=dtype, chunk_cells=chunk_cells)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            _layout(group, identity, rows=rows, cols=cols, feature_dim=feature_dim, dtype=dtype,
                    chunk_cells=chunk_cells)
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return cls.open(path, writable=True)

    @classmethod
    def _create_at_url(cls, url: str, identity: StoreIdentity, *, rows: int, cols: int, feature_dim: int,
                       dtype: str, chunk_cells: int) -> EmbeddingStore:
        """``create`` on an object store: no temporary directory and rename (object stores have no
        atomic rename; each object PUT is atomic instead). The old store is deleted first, the
        arrays are written, and the attributes come last, so a reader that looks in between finds
        a store without attributes and gets a one-line CacheError, never a half-described store."""
        _remove_url_store(url)
        group = zarr.open_group(url, mode="w", zarr_format=3)
        _layout(group, identity, rows=rows, cols=cols, feature_dim=feature_dim, dtype=dtype,
                chunk_cells=chunk_cells)
        return cls.open(url, writable=True)

    @classmethod
    def create_or_resume(cls, path: str | os.PathLike, identity: StoreIdentity, *, rows: int, cols: int,
                         feature_dim: int, dtype: str = "float16", overwrite: bool = False,
                         chunk_cells: int = CHUNK_CELLS) -> EmbeddingStore:
        """The store to embed into: the existing one when it has the same identity (resume), a new
        one when there is none or ``overwrite``; CacheError when it was made differently."""
        path = str(path) if is_store_url(path) else Path(path)
        if _location_exists(path) and not overwrite:
            store = cls.open(path, writable=True)
            store.require_identity(identity)
            if store.features.shape != (rows, cols, feature_dim):
                raise CacheError(f"embeddings in {path} have shape {store.features.shape}, not "
                                 f"{(rows, cols, feature_dim)}; pass --overwrite to re-embed or use another --workspace")
            return store
        return cls.create(path, identity, rows=rows, cols=cols, feature_dim=feature_dim, dtype=dtype,
                          chunk_cells=chunk_cells)

    def require_identity(self, identity: StoreIdentity) -> None:
        """CacheError (one line saying what to do) unless this store was made with ``identity``."""
        difference = self.identity.difference(identity)
        if difference is not None:
            raise CacheError(f"embeddings in {self.path} were made with {difference}; pass --overwrite "
                             "to re-embed or use another --workspace")

    # -- reading -------------------------------------------------------------------------------

    @property
    def zoom(self) -> int:
        """PSM zoom level of the stored features."""
        return int(self.attrs["zoom"])

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the grid."""
        return int(self.state.shape[0]), int(self.state.shape[1])

    @property
    def chunk_cells(self) -> int:
        """Side, in cells, of a chunk-aligned block."""
        return int(self.state.chunks[0])

    def blocks(self) -> Iterator[tuple[slice, slice]]:
        """Chunk-aligned (row slice, col slice) blocks covering the grid, row-major."""
        return chunk_slices(*self.shape, self.chunk_cells)

    @property
    def has_checksums(self) -> bool:
        """True when the store's chunks carry CRC-32C checksums (stores written before checksums
        existed do not: their damage cannot be detected until they are re-embedded)."""
        return all(any(getattr(codec, "to_dict", lambda: {})().get("name") == CHECKSUM_CODEC
                       for codec in array.metadata.codecs) for array in (self.features, self.state))

    def chunk_file(self, array: str, rows: slice, cols: slice) -> str:
        """Where the chunk of ``array`` (``features`` or ``state``) holding block (rows, cols) lives."""
        i, j = rows.start // self.chunk_cells, cols.start // self.chunk_cells
        key = f"{array}/c/{i}/{j}" + ("/0" if array == FEATURES else "")
        return f"{str(self.path).rstrip('/')}/{key}"

    def _damaged(self, array: str, rows: slice, cols: slice, why: str) -> StoreDamagedError:
        err = StoreDamagedError(f"embedding store chunk {self.chunk_file(array, rows, cols)} is damaged ({why}); "
                                "run `soundmap embed --repair` to re-embed only the damaged chunks")
        err.array, err.why = array, why
        return err

    def read_states(self, rows: slice, cols: slice) -> np.ndarray:
        """The states of a chunk-aligned region (a block or a band of chunk rows), checksum-verified:
        StoreDamagedError naming the first damaged chunk instead of a codec traceback."""
        try:
            return np.asarray(self.state[rows, cols])
        except Exception:  # a codec error of some kind: find which chunk, for the message
            for block_rows, block_cols in self.blocks():
                if _overlaps(block_rows, rows) and _overlaps(block_cols, cols):
                    try:
                        np.asarray(self.state[block_rows, block_cols])
                    except Exception as err:
                        raise self._damaged(STATE, block_rows, block_cols, _reason(err)) from None
            raise

    def state_array(self) -> np.ndarray:
        """The rows × cols uint8 :class:`CellState` of every cell (1 byte per cell)."""
        return self.read_states(slice(None), slice(None))

    def valid_mask(self) -> np.ndarray:
        """rows × cols bool: True where a cell's features were embedded and may be used."""
        return self.state_array() == CellState.EMBEDDED

    def counts(self) -> dict[str, int]:
        """How many cells are in each state, read band by band (never the whole grid at once)."""
        totals = dict.fromkeys((s.name.lower() for s in CellState), 0)
        rows, _ = self.shape
        for r0 in range(0, rows, self.chunk_cells):
            band = self.read_states(slice(r0, r0 + self.chunk_cells), slice(None))
            values, numbers = np.unique(band, return_counts=True)
            for value, number in zip(values, numbers):
                totals[CellState(int(value)).name.lower()] += int(number)
        return totals

    def read_block(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """Features (storage dtype) and states of one block, as stored, after checking them: a chunk
        that fails its checksum or does not decode, or embedded cells without finite features (a
        deleted chunk reads as the NaN fill), raise StoreDamagedError naming the chunk file."""
        state = self.read_states(rows, cols)
        try:
            features = np.asarray(self.features[rows, cols, :])
        except Exception as err:
            raise self._damaged(FEATURES, rows, cols, _reason(err)) from None
        embedded = state == CellState.EMBEDDED
        if embedded.any() and not np.isfinite(features[embedded]).all():
            raise self._damaged(FEATURES, rows, cols, "missing or non-finite features under cells marked embedded")
        return features, state

    def iter_blocks(self, fill: float = np.nan) -> Iterator[tuple[slice, slice, np.ndarray, np.ndarray]]:
        """Yield ``(row_slice, col_slice, features float32 (r×c×D), valid bool (r×c))`` per chunk.

        Cells that are not valid hold ``fill`` (NaN by default, so that forgetting the mask shows
        up as nodata rather than as a plausible score).
        """
        for rows, cols in self.blocks():
            features, state = self.read_block(rows, cols)
            valid = state == CellState.EMBEDDED
            block = features.astype(np.float32)
            block[~valid] = fill
            yield rows, cols, block, valid

    # -- writing -------------------------------------------------------------------------------

    def write_block(self, rows: slice, cols: slice, features: np.ndarray | None, state: np.ndarray) -> None:
        """Write one chunk-aligned block: features first, then the states that vouch for them.

        ``features=None`` writes states only (a block whose new cells all lack imagery).
        """
        if features is not None:
            self.features[rows, cols, :] = features.astype(self.features.dtype, copy=False)
        self.state[rows, cols] = state.astype(np.uint8, copy=False)


def _overlaps(a: slice, b: slice) -> bool:
    """Whether block slice ``a`` (concrete bounds) meets region slice ``b`` (None = unbounded)."""
    start = 0 if b.start is None else b.start
    return (b.stop is None or a.start < b.stop) and a.stop > start


def _reason(err: BaseException) -> str:
    """A short reason for a codec failure (its first line, without Zarr's long byte dumps)."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return "checksum mismatch" if "checksum" in text.lower() else f"{type(err).__name__}: {text[:80]}"


def _checksummed_compressors() -> tuple[Any, ...]:
    """Zstandard then CRC-32C: the checksum covers the compressed bytes, so a flipped or lost byte
    anywhere in a chunk file fails the checksum before anything is decompressed."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return (ZstdCodec(level=0), Crc32cCodec())


@dataclass(frozen=True)
class DamagedBlock:
    """A block of the grid whose chunks cannot be trusted, and why."""

    rows: slice
    cols: slice
    chunk_file: str
    reason: str


def find_damaged_blocks(store: EmbeddingStore) -> list[DamagedBlock]:
    """Every block whose ``state`` or ``features`` chunk fails to decode or to verify, or whose
    embedded cells have no finite features; one block in memory at a time."""
    damaged = []
    for rows, cols in store.blocks():
        try:
            store.read_block(rows, cols)
        except StoreDamagedError as err:
            name = getattr(err, "array", FEATURES)
            damaged.append(DamagedBlock(rows, cols, store.chunk_file(name, rows, cols), getattr(err, "why", str(err))))
    return damaged


def repair_store(store: EmbeddingStore, damaged: list[DamagedBlock] | None = None) -> list[DamagedBlock]:
    """Turn every damaged block back to PENDING and drop its feature chunk, so that the next embed
    run (which resumes PENDING cells) re-embeds exactly those blocks. Cells outside the area of
    interest become PENDING too and are marked OUTSIDE again by that run. Returns the blocks fixed.

    Whole chunks are overwritten with their fill values, which Zarr stores by deleting the chunk:
    nothing damaged is ever read back, and it works the same on local and fsspec stores."""
    damaged = find_damaged_blocks(store) if damaged is None else damaged
    for block in damaged:
        shape = (block.rows.stop - block.rows.start, block.cols.stop - block.cols.start)
        store.state[block.rows, block.cols] = np.full(shape, CellState.PENDING, dtype=np.uint8)
        store.features[block.rows, block.cols, :] = np.full((*shape, store.features.shape[2]), np.nan,
                                                            dtype=store.features.dtype)
    return damaged


def repair_location(location: StoreLocation) -> list[DamagedBlock]:
    """``repair_store`` on the store at ``location`` (nothing to do when there is none): what
    ``soundmap embed --repair`` runs before its normal resume."""
    location = str(location) if is_store_url(location) else Path(location)
    if not store_exists(location):
        return []
    return repair_store(EmbeddingStore.open(location, writable=True))


def _layout(group: zarr.Group, identity: StoreIdentity, *, rows: int, cols: int, feature_dim: int,
            dtype: str, chunk_cells: int) -> None:
    """Write the two arrays, then the attributes, of a new store into an empty ``group``."""
    group.create_array(FEATURES, shape=(rows, cols, feature_dim), dtype=dtype,
                       chunks=(chunk_cells, chunk_cells, feature_dim), fill_value=np.nan,
                       dimension_names=("row", "col", "feature"), compressors=_checksummed_compressors())
    group.create_array(STATE, shape=(rows, cols), dtype="uint8",
                       chunks=(chunk_cells, chunk_cells), fill_value=int(CellState.PENDING),
                       dimension_names=("row", "col"), compressors=_checksummed_compressors())
    attrs = {"format_version": STORE_FORMAT_VERSION, "store_id": uuid.uuid4().hex,
             "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
             **identity.to_attrs(),
             "feature_dim": int(feature_dim), "dtype": dtype, "chunk_cells": int(chunk_cells),
             "state_codes": {s.name.lower(): int(s) for s in CellState},
             "chunk_checksum": CHECKSUM_CODEC,
             **_georeference_attrs(identity.grid)}
    group.attrs.update(attrs)


def _location_exists(location: StoreLocation) -> bool:
    """Whether anything is at ``location`` (local: the path; URL: the store's ``zarr.json``)."""
    if is_store_url(location):
        return store_exists(location)
    return Path(location).exists()


def open_embedding_store(workspace: Any, zoom: int, model: Any = None, *,
                         store_url: str | None = None) -> EmbeddingStore:
    """Open the embeddings of ``zoom`` in ``workspace`` (a Workspace or its directory) for reading.

    The store is the workspace's own, or under its store URL (``store_url``, else
    ``$SOUNDMAP_STORE_URL``, else the URL recorded by ``soundmap embed --store-url``).
    With ``model``, also check the store was made by that model (same weights hash and
    preprocessing version): CacheError otherwise, so that a query never mixes one model's image
    features with another model's fusion and heads.
    """
    path = embedding_store_location(workspace, zoom, store_url)
    if is_store_url(path):
        if not store_exists(path):
            raise CacheError(f"no embeddings for zoom {zoom} at {path}; run "
                             f"`soundmap embed --zoom {zoom} --store-url ...` first")
    elif not (Path(path) / "zarr.json").is_file():
        raise CacheError(f"no embeddings for zoom {zoom} in {Path(path).parent.parent}; run "
                         f"`soundmap embed --zoom {zoom}` first")
    store = EmbeddingStore.open(path)
    _require_workspace_region(store, workspace, zoom)
    if model is not None:
        ident = store.identity
        if ident.weights_sha256 != model.weights_sha256 or ident.preprocess_version != model.preprocess_version:
            raise CacheError(f"embeddings in {path} were made with model {ident.model_name} "
                             f"({ident.weights_sha256[:12]}), not {model.name} ({model.weights_sha256[:12]}); "
                             "run `soundmap embed --overwrite` with that model or use its workspace")
    return store


def _require_workspace_region(store: EmbeddingStore, workspace: Any, zoom: int) -> None:
    """CacheError unless the store was embedded for the workspace's current grid and imagery: after
    the region changed (``tiles fetch --replace-region``, or an older soundmap that allowed it
    silently) a query must never paint the old region's map. Duck-typed on the workspace's
    ``grids`` and ``source()`` so that this layer needs no import of the workspace module."""
    grids = getattr(workspace, "grids", None)
    if not isinstance(grids, Mapping) or zoom not in grids:
        return
    source = getattr(workspace, "source", None)
    source_key = source().cache_key if callable(source) else store.identity.source_key
    if _normalised(grids[zoom]) != _normalised(store.identity.grid) or source_key != store.identity.source_key:
        raise CacheError(f"embeddings in {store.path} were made for another region, grid or imagery than the "
                         f"workspace now records; run `soundmap embed --overwrite --zoom {zoom}` first")


def coverage(store: EmbeddingStore) -> dict[str, int]:
    """Cells of the store by state plus ``total``: how complete a map made from it can be."""
    counts = store.counts()
    return {**counts, "total": sum(counts.values())}


def coverage_tags(counts: Mapping[str, int]) -> dict[str, str]:
    """Output tags recording a map's coverage, so a partial map says so in its own file."""
    inside = counts["total"] - counts["outside"]
    return {"coverage": f"{counts['embedded']} of {inside} cells embedded "
                        f"({counts['pending']} pending, {counts['no_imagery']} without imagery)",
            "coverage_embedded": str(counts["embedded"]), "coverage_pending": str(counts["pending"])}


def require_complete(store: EmbeddingStore, *, partial: bool) -> dict[str, int]:
    """The store's :func:`coverage`; a one-line CacheError when cells are still PENDING (an embed
    still running, or interrupted) unless ``partial`` accepts a map with those cells nodata."""
    counts = coverage(store)
    if counts["pending"] and not partial:
        raise CacheError(f"{counts['pending']} of {counts['total'] - counts['outside']} cells in {store.path} are "
                         "not embedded yet (an embed is running or was interrupted); finish `soundmap embed`, "
                         "or pass --partial to map them as nodata")
    return counts
