"""Workspace cache of fused image embeddings, one entry per (model, cells, metadata setting).

Fusion dominates a query's cost (performance.md: ~23 min per 10⁶ cells per metadata setting on
CPU) and its result does not depend on the query, so it is kept on disk and reused by later calls
with the same model and setting. Layout::

    <workspace>/fused/<key>/meta.json        what the key stands for (for humans)
    <workspace>/fused/<key>/mu.zarr          rows × cols × D float32 (L2-normalised means)
    <workspace>/fused/<key>/logvar.zarr      rows × cols × D float32 (probabilistic models only)
    <workspace>/fused/<key>/valid.zarr       rows × cols uint8 (1 = cell has imagery), so a cached
                                             block needs nothing read from the embedding store
    <workspace>/fused/<key>/done/<r0>_<c0>   one empty marker per finished block

The key hashes the model's weights, the zoom, the grid (lat/lon depend on it), the metadata
setting and a fingerprint of the embedding store (its attributes and validity mask), so
re-embedding or a different model can never be served stale fusions. A block counts as cached only
once its marker exists, and the marker is written after the block's data: an interrupted run
leaves at worst unmarked blocks, which are recomputed. Values are stored as float32, so a cached
map is bit-identical to a fresh one. Disk cost: 2 KB per cell (4 KB for PSM) per setting —
``--no-fused-cache`` skips it.

Integrity: every chunk ends in a CRC-32C checksum (Zarr's ``crc32c`` codec). :meth:`FusedCache.has`
reads the block it is asked about, and a block that fails to decode or holds non-finite means under
valid cells is forgotten (its marker deleted) and reported as absent, so the query recomputes it
and writes it again: a damaged entry costs a recomputation, never a wrong map.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_text_atomic


def store_fingerprint(store: Any) -> str:
    """A digest of what the store holds: its attributes and which cells are valid."""
    digest = hashlib.sha256()
    digest.update(json.dumps(dict(getattr(store, "attrs", {}) or {}), sort_keys=True, default=str).encode())
    valid = np.ascontiguousarray(np.asarray(store.valid_mask(), dtype=bool))
    digest.update(str(valid.shape).encode())
    digest.update(np.packbits(valid).tobytes())
    return digest.hexdigest()


def fused_cache_key(*, model_hash: str, zoom: int, grid: dict, setting_key: str, store_digest: str) -> str:
    """The cache key of one fused-embedding entry (hex, 24 characters)."""
    payload = json.dumps({"model": model_hash, "zoom": zoom, "grid": grid, "setting": setting_key,
                          "store": store_digest, "layout": 2}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


class FusedCache:
    """One cache entry: read and write fused blocks of the grid."""

    def __init__(self, directory: Path, *, shape: tuple[int, int], chunks: tuple[int, int],
                 probabilistic: bool, description: dict[str, Any]) -> None:
        self.directory = Path(directory)
        self.shape = shape
        self.chunks = chunks
        self.probabilistic = probabilistic
        self.description = description
        self._arrays: dict[str, Any] = {}
        self._verified: dict[tuple[int, int, int, int], tuple[np.ndarray, np.ndarray | None, np.ndarray]] = {}
        self.dropped = 0   #: damaged blocks found and forgotten (recomputed by the caller)

    # -- markers
    def _marker(self, rows: slice, cols: slice) -> Path:
        return self.directory / "done" / f"{rows.start}_{cols.start}_{rows.stop}_{cols.stop}"

    def has(self, rows: slice, cols: slice) -> bool:
        """True when block (rows, cols) was fused, stored completely and reads back intact; a
        damaged block is forgotten here (False), so the caller recomputes and rewrites it."""
        marker = self._marker(rows, cols)
        if not marker.exists():
            return False
        try:
            block = self._read_arrays(rows, cols)
        except Exception:  # a checksum mismatch, truncated chunk, missing array: all the same here
            block = None
        if block is None or not np.isfinite(block[0][block[2]]).all():
            marker.unlink(missing_ok=True)
            self.dropped += 1
            return False
        self._verified[(rows.start, rows.stop, cols.start, cols.stop)] = block
        return True

    # -- arrays
    def _array(self, name: str, dim: int | None, create: bool) -> Any:
        if name in self._arrays:
            return self._arrays[name]
        import zarr

        path = self.directory / f"{name}.zarr"
        if path.exists():
            array = zarr.open_array(store=str(path), mode="r+")
        elif create:
            self.directory.mkdir(parents=True, exist_ok=True)
            meta = self.directory / "meta.json"
            if not meta.exists():
                write_text_atomic(meta, json.dumps(self.description, indent=1, sort_keys=True, default=str))
            from zarr.codecs import Crc32cCodec, ZstdCodec

            if dim is None:  # the validity mask: small, compresses well
                array = zarr.create_array(store=str(path), shape=self.shape, chunks=self.chunks, dtype="uint8",
                                          fill_value=0, compressors=(ZstdCodec(level=0), Crc32cCodec()))
            else:  # fused vectors: float noise does not compress, so only the checksum
                array = zarr.create_array(store=str(path), shape=(*self.shape, dim), chunks=(*self.chunks, dim),
                                          dtype="float32", compressors=(Crc32cCodec(),), fill_value=0.0)
        else:
            raise FileNotFoundError(path)
        self._arrays[name] = array
        return array

    def read(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """The fused means, log-variances (None for deterministic models) and validity of a cached block
        (the copy :meth:`has` verified, when it was just asked)."""
        block = self._verified.pop((rows.start, rows.stop, cols.start, cols.stop), None)
        return block if block is not None else self._read_arrays(rows, cols)

    def _read_arrays(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        mu = np.asarray(self._array("mu", 0, create=False)[rows, cols])
        logvar = np.asarray(self._array("logvar", 0, create=False)[rows, cols]) if self.probabilistic else None
        valid = np.asarray(self._array("valid", None, create=False)[rows, cols]).astype(bool)
        return mu, logvar, valid

    def read_mu(self, rows: slice, cols: slice) -> np.ndarray:
        """Only the fused means of a cached block (scoring against precomputed per-cell variance
        sums needs nothing else, which halves the bytes read for a probabilistic model)."""
        return np.asarray(self._array("mu", 0, create=False)[rows, cols])

    def write(self, rows: slice, cols: slice, mu: np.ndarray, logvar: np.ndarray | None, valid: np.ndarray) -> None:
        """Store a fused block, then mark it done."""
        dim = mu.shape[-1]
        self._array("valid", None, create=True)[rows, cols] = np.asarray(valid, dtype=np.uint8)
        self._array("mu", dim, create=True)[rows, cols] = mu.astype(np.float32, copy=False)
        if self.probabilistic and logvar is not None:
            self._array("logvar", dim, create=True)[rows, cols] = logvar.astype(np.float32, copy=False)
        marker = self._marker(rows, cols)
        marker.parent.mkdir(parents=True, exist_ok=True)
        with open(marker, "wb") as handle:
            handle.flush()
            os.fsync(handle.fileno())

    def size_bytes(self) -> int:
        """Disk space used by this entry."""
        return sum(path.stat().st_size for path in self.directory.rglob("*") if path.is_file())


def damaged_blocks(entry: Path) -> list[Path]:
    """The ``done`` markers of a cache entry whose block fails to read back (checksum, truncation,
    missing array) or holds non-finite means under valid cells: what ``soundmap doctor`` reports,
    and deletes with ``--repair`` (the next query recomputes those blocks)."""
    import zarr

    markers = sorted((Path(entry) / "done").glob("*_*_*_*"))
    if not markers:
        return []
    try:
        arrays = {name: zarr.open_array(store=str(Path(entry) / f"{name}.zarr"), mode="r")
                  for name in ("mu", "valid")}
    except Exception:  # the entry's arrays are unreadable: every block is damaged
        return markers
    damaged = []
    for marker in markers:
        r0, c0, r1, c1 = (int(v) for v in marker.name.split("_"))
        try:
            mu = np.asarray(arrays["mu"][r0:r1, c0:c1])
            valid = np.asarray(arrays["valid"][r0:r1, c0:c1]).astype(bool)
            ok = bool(np.isfinite(mu[valid]).all())
        except Exception:
            ok = False
        if not ok:
            damaged.append(marker)
    return damaged
