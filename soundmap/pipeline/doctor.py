"""``soundmap doctor``: verify end to end what soundmap keeps on disk, and repair what it can.

Checked, one finding per problem:

- the tile cache (SQLite ``quick_check``; with a workspace, every tile of the workspace's source
  decodes at the source's ``tile_size``). Repair: a damaged database is moved aside (the next
  ``tiles fetch`` downloads into a fresh one); undecodable tiles are deleted (the next fetch
  downloads them again).
- the workspace's embedding stores (every chunk's checksum, and finite features under cells marked
  embedded; stores from before checksums are reported as unverifiable). Repair: damaged blocks go
  back to PENDING (the next ``soundmap embed`` re-embeds only them).
- the workspace's fused-embedding cache. Repair: damaged blocks are forgotten (recomputed by the
  next query).
- installed models (weights SHA-256 against config.json, finite tensors). Not repairable here: the
  finding says to re-install.

This module sits below the CLI and above store/tiles/models/query; it imports the heavy parts
(zarr, torch, PIL) inside functions.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Finding:
    """One problem: what, where, what --repair does (or what to do), and whether it was repaired."""

    area: str
    where: str
    problem: str
    remedy: str
    repairable: bool = True
    repaired: bool = False

    def line(self) -> str:
        state = "repaired" if self.repaired else ("would repair: " if self.repairable else "to fix: ")
        return f"{self.area}: {self.where}: {self.problem}; {state}{'' if self.repaired else self.remedy}"


@dataclass
class DoctorReport:
    """Everything checked, and the findings."""

    checked: list[str]
    findings: list[Finding]

    @property
    def unresolved(self) -> list[Finding]:
        return [f for f in self.findings if not f.repaired]


# --------------------------------------------------------------------------- tile cache

def check_tile_cache(cache: Any, source: Any = None, *, repair: bool) -> list[Finding]:
    """SQLite integrity of the cache file, then (with ``source``) every tile of that source."""
    import sqlite3

    path = Path(cache.path)
    if not path.exists():
        return []
    try:
        conn = sqlite3.connect(path)
        try:
            answer = [row[0] for row in conn.execute("PRAGMA quick_check")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        answer = [str(err)]
    if answer != ["ok"]:
        finding = Finding("tile cache", str(path), f"the database is damaged ({answer[0]})",
                          "move it aside; the next `soundmap tiles fetch` downloads into a fresh cache")
        if repair:
            cache.close()
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for suffix in ("", "-wal", "-shm"):
                part = Path(f"{path}{suffix}")
                if part.exists():
                    os.replace(part, f"{path}.damaged-{stamp}{suffix}")
            finding.repaired = True
        return [finding]
    return _undecodable_tiles(cache, source, repair=repair) if source is not None and source.is_remote else []


def _undecodable_tiles(cache: Any, source: Any, *, repair: bool) -> list[Finding]:
    from ..tiles.fetch import image_problem

    bad = []
    conn = cache._connect()
    for z, x, y, data in conn.execute("SELECT z, x, y, data FROM tiles WHERE source_key=?", (source.cache_key,)):
        problem = image_problem(bytes(data), source.tile_size)
        if problem is not None:
            bad.append(((int(z), int(x), int(y)), problem))
    findings = [Finding("tile cache", f"{cache.path} tile {z}/{x}/{y} of {source.name}", problem,
                        "delete it; the next `soundmap tiles fetch` downloads it again") for (z, x, y), problem in bad]
    if repair and bad:
        cache.delete(source.cache_key, [tile for tile, _ in bad])
        for finding in findings:
            finding.repaired = True
    return findings


# --------------------------------------------------------------------------- stores and fused caches

def check_store(location: Any, *, repair: bool) -> list[Finding]:
    """Checksums and embedded-cell features of one embedding store."""
    from ..store.embeddings import EmbeddingStore, find_damaged_blocks, repair_store, store_exists

    if not store_exists(location):
        return []
    store = EmbeddingStore.open(location, writable=repair)
    findings = []
    if not store.has_checksums:
        findings.append(Finding("embeddings", str(location), "written before chunk checksums: damage cannot be "
                                "detected", "re-embed it with `soundmap embed --overwrite`", repairable=False))
    damaged = find_damaged_blocks(store)
    findings += [Finding("embeddings", block.chunk_file, block.reason,
                         "re-pend the block; the next `soundmap embed` re-embeds it") for block in damaged]
    if repair and damaged:
        repair_store(store, damaged)
        for finding in findings[-len(damaged):]:
            finding.repaired = True
    return findings


def check_fused(root: Path, *, repair: bool) -> list[Finding]:
    """Every entry of a workspace's fused-embedding cache."""
    from ..query.fused_cache import damaged_blocks

    findings = []
    for entry in sorted(p for p in Path(root).glob("*") if p.is_dir()):
        for marker in damaged_blocks(entry):
            finding = Finding("fused cache", f"{entry} block {marker.name}", "does not read back intact",
                              "forget the block; the next query recomputes it")
            if repair:
                marker.unlink(missing_ok=True)
                finding.repaired = True
            findings.append(finding)
    return findings


# --------------------------------------------------------------------------- models

def check_models(cache_dir: str | os.PathLike | None = None) -> tuple[list[str], list[Finding]]:
    """Every installed model's weights against its recorded SHA-256, and finite (always re-hashed:
    the doctor does not trust the load-time stamp)."""
    from safetensors.torch import load_file

    from ..errors import ModelError
    from ..models.integrity import check_finite, forget_verified, record_verified, verify_weights_file
    from ..models.registry import installed_models
    from ..paths import model_dir

    checked, findings = [], []
    if not model_dir(cache_dir).is_dir():
        return checked, findings
    for model in installed_models(cache_dir):
        weights = model.path / "model.safetensors"
        checked.append(f"model {model.name}")
        try:
            verify_weights_file(weights, model.weights_sha256)
            check_finite(load_file(str(weights)), weights)
        except ModelError as err:
            forget_verified(model.path)
            findings.append(Finding("model", model.name, str(err).split(";")[0],
                                    f"re-install it (`soundmap models pull {model.name}` or `models import`)",
                                    repairable=False))
        except Exception as err:  # an unreadable safetensors file
            forget_verified(model.path)
            findings.append(Finding("model", model.name, f"weights unreadable ({type(err).__name__})",
                                    f"re-install it (`soundmap models pull {model.name}`)", repairable=False))
        else:
            record_verified(weights, model.weights_sha256)
    return checked, findings


# --------------------------------------------------------------------------- everything

def run_doctor(workspace: Any = None, *, cache_dir: str | os.PathLike | None = None,
               repair: bool = False) -> DoctorReport:
    """Check (and with ``repair`` fix) the tile cache, the workspace's stores and fused caches (when
    a workspace is given or found), and the installed models."""
    from ..paths import tile_cache_path
    from ..store.embeddings import embedding_store_location
    from ..tiles.cache import TileCache

    checked: list[str] = []
    findings: list[Finding] = []
    source = workspace.source() if workspace is not None else None
    cache = TileCache(tile_cache_path(cache_dir))
    checked.append(f"tile cache {cache.path}")
    findings += check_tile_cache(cache, source, repair=repair)
    if workspace is not None:
        for zoom in workspace.zooms:
            location = embedding_store_location(workspace, zoom)
            checked.append(f"embeddings {location}")
            findings += check_store(location, repair=repair)
        fused = Path(workspace.path) / "fused"
        if fused.is_dir():
            checked.append(f"fused cache {fused}")
            findings += check_fused(fused, repair=repair)
    models_checked, model_findings = check_models(cache_dir)
    return DoctorReport(checked=checked + models_checked, findings=findings + model_findings)
