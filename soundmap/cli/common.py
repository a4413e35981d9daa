"""Options shared by every command, declared once so they read the same everywhere."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..progress import set_quiet

WorkspaceOpt = Annotated[Optional[Path], typer.Option("--workspace", help="Workspace directory of the region (default ./.soundmap or $SOUNDMAP_WORKSPACE).", show_default=False)]
CacheDirOpt = Annotated[Optional[Path], typer.Option("--cache-dir", help="Cache root (default $SOUNDMAP_CACHE or the XDG cache dir).", show_default=False)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or informational messages (also SOUNDMAP_QUIET=1).")]
BBoxOpt = Annotated[Optional[str], typer.Option("--bbox", help="west,south,east,north in EPSG:4326 degrees.", show_default=False)]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")]
# Scale-out (soundmap.distributed): where the work runs.
SchedulerOpt = Annotated[Optional[str], typer.Option("--scheduler", help="Run on a Dask cluster: a scheduler address (tcp://host:8786), or local:N for N worker processes on this machine (default: $SOUNDMAP_SCHEDULER; unset: this process).", show_default=False)]
ResourcesOpt = Annotated[Optional[str], typer.Option("--resources", help="Dask worker resources the model tasks need, e.g. GPU=1: only workers started with them encode/fuse (with --scheduler).", show_default=False)]

# Region and imagery: the same words in tiles, estimate, map and bga.
RequiredBBoxOpt = Annotated[str, typer.Option("--bbox", help="west,south,east,north in EPSG:4326 degrees.", show_default=False)]
SourceOpt = Annotated[Optional[str], typer.Option("--source", help="Imagery: a name from `soundmap tiles sources`, an XYZ URL template (https://host/{z}/{x}/{y}.jpg) or a raster file.")]
StrideOpt = Annotated[Optional[float], typer.Option("--stride", help="Metres between cell centres (default: the cell footprint).", show_default=False)]
TilesConfigOpt = Annotated[Optional[Path], typer.Option("--tiles-config", help="Extra tiles.yaml merged over the packaged and user ones.", show_default=False)]
DownloadWorkersOpt = Annotated[int, typer.Option("--workers", help="Parallel tile downloads.")]


def zoom_levels_option(default: str) -> Any:
    """``--zoom`` taking several PSM zoom levels (``1,3,5``); ``default`` says what omitting it means here."""
    return Annotated[Optional[str], typer.Option("--zoom", help=f"PSM zoom levels, comma-separated from 1, 3, 5 (default: {default}).", show_default=False)]


def zoom_option(default: str) -> Any:
    """``--zoom`` taking one PSM zoom level; ``default`` says what omitting it means here."""
    return Annotated[Optional[int], typer.Option("--zoom", help=f"PSM zoom level: 1, 3 or 5 (default: {default}).", show_default=False)]


def model_option(default: str) -> Any:
    """``--model``; ``default`` says which model this command takes when it is omitted."""
    return Annotated[Optional[str], typer.Option("--model", help=f"Installed model name or model directory (default: {default}).", show_default=False)]


def apply_quiet(quiet: bool) -> None:
    """Honour ``--quiet`` for the rest of the process; ``SOUNDMAP_QUIET=1`` (scripts, CI, dask
    workers) silences every command as if it were given."""
    set_quiet(quiet or bool(os.environ.get("SOUNDMAP_QUIET")))
