"""Options shared by every command, declared once so they read the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..progress import set_quiet

WorkspaceOpt = Annotated[Optional[Path], typer.Option("--workspace", help="Workspace directory of the region (default ./.soundmap or $SOUNDMAP_WORKSPACE).", show_default=False)]
CacheDirOpt = Annotated[Optional[Path], typer.Option("--cache-dir", help="Cache root (default $SOUNDMAP_CACHE or the XDG cache dir).", show_default=False)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or informational messages.")]
BBoxOpt = Annotated[Optional[str], typer.Option("--bbox", help="west,south,east,north in EPSG:4326 degrees.", show_default=False)]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")]


def apply_quiet(quiet: bool) -> None:
    """Honour ``--quiet`` for the rest of the process."""
    set_quiet(quiet)
