"""``soundmap explore``: the interactive map in the browser (thin: options → :mod:`soundmap.explore`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .common import CacheDirOpt, DeviceOpt, QuietOpt, WorkspaceOpt, apply_quiet, model_option

EXPLORE_HELP = """Explore a workspace's soundscape map in the browser (a local web page).

Type queries, drag the hour and month sliders, click a cell to see its score, rank and the imagery the model saw, export the view as a COG or PNG.

The server listens on 127.0.0.1 only (other machines cannot reach it) unless --host names another interface. Everything it serves comes from the package and the workspace; the page works offline.

Example: soundmap explore --workspace myregion --open
"""

PortOpt = Annotated[int, typer.Option("--port", help="Port to listen on.")]
HostOpt = Annotated[str, typer.Option("--host", help="Interface to listen on; anything but 127.0.0.1/localhost makes the map reachable from other machines.")]
OpenOpt = Annotated[bool, typer.Option("--open", help="Open the page in the default browser.")]
ModelOpt = model_option("the one that made the embeddings")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(app: typer.Typer) -> None:
    """Add ``explore`` to the root app."""
    app.command("explore", help=EXPLORE_HELP)(explore_command)


def launch(workspace: Any, *, model: Optional[str] = None, port: int = 8765, host: str = "127.0.0.1",
           open_browser: bool = False, device: str = "cpu", cache_dir: Optional[Path] = None) -> None:
    """Load the workspace and model, print the URL and serve until Ctrl-C."""
    from ..explore.app import serve
    from ..explore.session import Explorer

    if host not in LOOPBACK:  # printed even under --quiet: it is about who can reach the server
        typer.echo(f"soundmap: warning: listening on {host}: anyone who can reach this machine can use the map "
                   "and upload files", err=True)
    explorer = Explorer(workspace, model=model, device=device, cache_dir=cache_dir)
    serve(explorer, host=host, port=port, open_browser=open_browser,
          on_ready=lambda url: typer.echo(f"soundmap explore: {url} (Ctrl-C to stop)"))


def explore_command(
    workspace: WorkspaceOpt = None, model: ModelOpt = None, port: PortOpt = 8765, host: HostOpt = "127.0.0.1",
    open_browser: OpenOpt = False, cache_dir: CacheDirOpt = None, device: DeviceOpt = "cpu", quiet: QuietOpt = False,
) -> None:
    apply_quiet(quiet)
    launch(workspace, model=model, port=port, host=host, open_browser=open_browser, device=device,
           cache_dir=cache_dir)


def map_workspace_path(bbox: str, source: Optional[str], zoom: Optional[int], stride: Optional[float],
                       workspace: Optional[Path], cache_dir: Optional[Path], tiles_config: Optional[Path]) -> Path:
    """The workspace ``soundmap map`` just used (``--workspace``, else its per-region default)."""
    if workspace is not None:
        return Path(workspace)
    from ..geo.bbox import parse_bbox
    from ..pipeline.query import MAP_DEFAULT_SOURCE, default_map_zoom, map_workspace_dir
    from ..tiles.sources import resolve_source

    box = parse_bbox(bbox)
    tile_source = resolve_source(source or MAP_DEFAULT_SOURCE, config_path=tiles_config)
    level = int(zoom) if zoom is not None else default_map_zoom(box)
    return map_workspace_dir(box, tile_source, level, stride, cache_dir)
