"""``soundmap tiles``: fetch imagery for a region, inspect the workspace and cache, list sources.

Thin: parse options, call :mod:`soundmap.pipeline.workspace` / :mod:`soundmap.tiles`, print.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ..errors import InputError, TileError
from ..progress import info
from .common import SchedulerOpt  # scale-out (soundmap.distributed)
from .common import (BBoxOpt, CacheDirOpt, DownloadWorkersOpt, QuietOpt, SourceOpt, StrideOpt, TilesConfigOpt,
                     WorkspaceOpt, apply_quiet, zoom_levels_option)

if TYPE_CHECKING:
    from ..pipeline.workspace import Workspace, WorkspaceFetch
    from ..tiles.sources import TileSource

tiles_app = typer.Typer(name="tiles", help="Fetch and inspect the satellite imagery tiles of a region.",
                        no_args_is_help=True, add_completion=False)

#: Above this many tiles to download, ask before starting (or require --yes when not interactive).
CONFIRM_ABOVE_TILES = 5000
#: How many example cells to name when some lack imagery.
EXAMPLE_CELLS = 5

AoiOpt = Annotated[Optional[Path], typer.Option("--aoi", help="Area of interest: any vector file (GeoPackage, GeoJSON, Shapefile...).", show_default=False)]
FamilyOpt = Annotated[Optional[str], typer.Option("--family", help="Model family the imagery suits: sentinel, bing or googleEarth (default: the source's).", show_default=False)]
ZoomOpt = zoom_levels_option("the workspace's, else 1")
CrsOpt = Annotated[Optional[str], typer.Option("--crs", help="Projected CRS of the grid, e.g. EPSG:32633 (default: equal-area LAEA centred on the region).", show_default=False)]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Only print how many tiles and bytes the fetch needs.")]
ReplaceRegionOpt = Annotated[bool, typer.Option("--replace-region", help="Replace the workspace's recorded region, grid or imagery (deletes its embeddings and fused caches).")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before a large download.")]


def register(app: typer.Typer) -> None:
    """Add the ``tiles`` command group to the root app."""
    app.add_typer(tiles_app, name="tiles")


@tiles_app.command("fetch")
def fetch_command(
    bbox: BBoxOpt = None, aoi: AoiOpt = None, source: SourceOpt = None, family: FamilyOpt = None,
    zoom: ZoomOpt = None, stride: StrideOpt = None, crs: CrsOpt = None, workers: DownloadWorkersOpt = 16,
    dry_run: DryRunOpt = False, yes: YesOpt = False, tiles_config: TilesConfigOpt = None,
    workspace: WorkspaceOpt = None, cache_dir: CacheDirOpt = None, quiet: QuietOpt = False,
    scheduler: SchedulerOpt = None, replace_region: ReplaceRegionOpt = False,
) -> None:
    """Download the imagery a region needs into the tile cache and record the workspace.

    Options not given are taken from the existing workspace, so a bare `soundmap tiles fetch` retries the last fetch and downloads only what is still missing.
    """
    from ..distributed.cluster import resolve_scheduler
    from ..distributed.fetch import fetch_on_cluster
    from ..families import parse_zooms
    from ..pipeline.workspace import estimate_download, fetch_workspace, plan_zoom, workspace_for_fetch

    apply_quiet(quiet)
    if not 1 <= workers <= 256:
        raise InputError(f"--workers must be between 1 and 256 (got {workers})")
    cluster = resolve_scheduler(scheduler)
    ws = workspace_for_fetch(workspace, bbox=bbox, aoi=str(aoi) if aoi else None, source=source, family=family,
                             zooms=parse_zooms(zoom) if zoom is not None else None, stride=stride, crs=crs,
                             tiles_config=tiles_config, replace_region=replace_region,
                             invalidate=not dry_run)
    src = ws.source()
    if not src.is_remote:
        from ..tiles.render import check_raster_source

        check_raster_source(src)
    yes = _guard_plan(ws, src, yes=yes or dry_run) or yes
    cache = ws.tile_cache(cache_dir)
    plans = [plan_zoom(ws, z) for z in ws.zooms]
    estimate = estimate_download(src, plans, cache)
    lines = [f"source {src.name} ({src.family}); {src.attribution}"]
    for plan in plans:
        grid = ws.grid(plan.zoom)
        where = f"web-mercator z{plan.web_zoom}, {plan.n_tiles} tiles" if src.is_remote else "read from the raster"
        lines.append(f"zoom {plan.zoom}: {grid.rows}×{grid.cols} cells, {where}")
    lines.append(f"{estimate.tiles} tiles, {estimate.cached} cached, {estimate.to_fetch} to download "
                 f"(≈{_human_bytes(estimate.bytes)})" if src.is_remote else "local raster: nothing to download")
    if dry_run:
        typer.echo("\n".join(lines))
        return
    for line in lines:
        info(line)
    if estimate.to_fetch > CONFIRM_ABOVE_TILES and not yes:
        _confirm_large(estimate.to_fetch, estimate.bytes)
    ws.save()
    try:
        result = (fetch_workspace(ws, cache, plans, workers=workers) if cluster is None
                  else fetch_on_cluster(cluster, ws, cache, plans, max_concurrent=workers))
    except KeyboardInterrupt:
        typer.echo(f"soundmap: complete tiles are cached; `soundmap tiles fetch --workspace {ws.path}` resumes",
                   err=True)
        raise
    for report in result.reports.values():
        info(report.summary())
    if result.cells_lacking:
        _report_lacking(result, ws)
    info(f"workspace {ws.path} ready ({ws.describe()})")


def _guard_plan(ws: "Workspace", src: "TileSource", *, yes: bool) -> bool:
    """Refuse (or ask about) a plan from its cheap estimate, before the tiles are listed: a grid
    over the cell budget, or more tiles than a download asks confirmation for. True when the
    user was asked and said yes (so the exact plan does not ask again)."""
    from ..geo.planguard import check_plan

    estimate = check_plan([ws.grid(z) for z in ws.zooms], src, yes=yes)
    if estimate.tiles > CONFIRM_ABOVE_TILES and not yes:
        _confirm_large(estimate.tiles, estimate.tiles * src.bytes_per_tile, approximate=True)
        return True
    return False


def _confirm_large(n_tiles: int, n_bytes: int, approximate: bool = False) -> None:
    """Ask before a large download; non-interactive runs must say --yes."""
    what = f"this downloads {'about ' if approximate else ''}{n_tiles} tiles (≈{_human_bytes(n_bytes)})"
    if not sys.stdin.isatty():
        raise InputError(f"{what}; re-run with --yes to confirm (or --dry-run to see the plan)")
    if not typer.confirm(f"{what}. Continue?", default=False, err=True):
        raise typer.Exit(1)


def _report_lacking(result: "WorkspaceFetch", ws: "Workspace") -> None:
    """Name the cells without imagery and how to retry, then exit 2 (printed even with --quiet)."""
    failed = result.failed_tiles
    why = ", ".join(f"{reason} ×{n}" for reason, n in Counter(failed.values()).most_common())
    typer.echo(f"soundmap: {len(failed)} tiles could not be fetched ({why})", err=True)
    for zoom, mask in result.lacking.items():
        n = int(mask.sum())
        if n:
            rows, cols = mask.nonzero()
            examples = ", ".join(f"row {r} col {c}" for r, c in list(zip(rows.tolist(), cols.tolist()))[:EXAMPLE_CELLS])
            typer.echo(f"  zoom {zoom}: {n} of {mask.size} cells lack imagery (e.g. {examples})", err=True)
    raise TileError(f"{result.cells_lacking} cells lack imagery; re-run `soundmap tiles fetch --workspace "
                    f"{ws.path}` to retry only the missing tiles")


@tiles_app.command("info")
def info_command(
    workspace: WorkspaceOpt = None, cache_dir: CacheDirOpt = None, quiet: QuietOpt = False,
) -> None:
    """Show the workspace's region, grids and how many of its tiles are cached."""
    from ..pipeline.workspace import Workspace, plan_zoom

    apply_quiet(quiet)
    ws = Workspace.load(workspace)
    cache = ws.tile_cache(cache_dir)
    src = ws.source()
    out = [f"workspace   {ws.path}", f"region      {ws.region.describe()}",
           f"source      {src.name} [{src.kind}] {src.url}", f"family      {ws.family}",
           f"attribution {ws.attribution}", f"licence     {ws.licence}"]
    for zoom in ws.zooms:
        grid = ws.grid(zoom)
        line = f"zoom {zoom}      grid {grid.rows}×{grid.cols} cells, stride {grid.stride:g} m, footprint {grid.footprint:g} m"
        if src.is_remote:
            plan = plan_zoom(ws, zoom)
            missing = len(cache.missing(src.cache_key, plan.tiles))
            line += f"; z{plan.web_zoom}: {plan.n_tiles - missing} tiles cached, {missing} missing"
        out.append(line)
    out.append(f"cache       {cache.path} ({_human_bytes(cache.size_bytes())}, {cache.count()} tiles in all)")
    typer.echo("\n".join(out))


@tiles_app.command("sources")
def sources_command(
    tiles_config: TilesConfigOpt = None, workspace: WorkspaceOpt = None, cache_dir: CacheDirOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """List the imagery sources configured in tiles.yaml."""
    from ..tiles.sources import load_config

    apply_quiet(quiet)
    config = load_config(tiles_config)
    width = max(len(name) for name in config.sources)
    for name, src in config.sources.items():
        marker = "*" if name == config.default else " "
        key = f", key ${src.api_key_env}" if src.api_key_env else ""
        typer.echo(f"{marker} {name:<{width}}  {src.kind:<7} {src.family:<11} z{src.min_zoom}-{src.max_zoom} "
                   f"{src.resolution_m:g} m{key}  {src.note}")
        typer.echo(f"  {'':<{width}}  licence: {src.licence}")
    typer.echo(f"(* default; files: {', '.join(str(f) for f in config.files)})")


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
