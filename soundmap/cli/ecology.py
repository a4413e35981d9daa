"""``soundmap bga`` and ``soundmap align``: the ecology views.

Thin: parse options, call :mod:`soundmap.ecology` (and :mod:`soundmap.query` for the learned
composite of ``bga --compare``), print the files written (stdout, one per line) and the numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import (BBoxOpt, CacheDirOpt, DeviceOpt, QuietOpt, TilesConfigOpt, WorkspaceOpt, apply_quiet, model_option,
                     zoom_option)

BGA_HELP = """Land-cover soundscape composite (Anthrophony, Biophony, Geophony) per cell.

Each cell gets the area-weighted mean of its land-cover classes' BGA weights over its footprint (table: soundmap/data/bga_worldcover.yaml, the cross-modal urban sensing study's weights mapped onto ESA WorldCover; --weights to override). Land cover: ESA WorldCover 10 m over HTTP (windows only, cached), or --landcover FILE with --class-map YAML.

Writes, next to --out (bga.tif): bga.tif (float32, R/G/B = A/B/G, 0-1, NaN = nodata) and bga_rgb.tif (uint8, 0 = nodata), on the grid of the workspace's query outputs. With --compare, also bga_compare.json and bga_compare.png: per-band Pearson/Spearman between a learned composite (three text queries given as arguments, R/G/B = A/B/G, e.g. "traffic and people" "birds and insects" "wind and water"; or --learned FILE) and the land-cover composite.
"""

ALIGN_HELP = """Do recordings that sound alike come from places that look alike?

MANIFEST is a CSV with columns audio, lat, lon and optionally image (an image file of the place) and a group column (--group-column, e.g. city). Pairwise cosine similarities of audio embeddings are correlated (Pearson r) with those of image embeddings, and with those of the BGA vectors of the land cover around each recording; significance from a Mantel permutation test (rows and columns permuted jointly, upper triangle without diagonal, seeded). Overall and per group. Writes --out (align.json) and align.png.
"""


def register(app: typer.Typer) -> None:
    """Add ``bga`` and ``align`` to the root app."""
    app.command("bga", help=BGA_HELP)(bga_command)
    app.command("align", help=ALIGN_HELP)(align_command)


LandcoverOpt = Annotated[Optional[Path], typer.Option("--landcover", help="A local categorical land-cover raster (any CRS) instead of ESA WorldCover; its values are WorldCover codes unless --class-map says otherwise.", show_default=False)]
ClassMapOpt = Annotated[Optional[Path], typer.Option("--class-map", help="YAML mapping the --landcover raster's values to BGA table classes or weights.", show_default=False)]
WeightsOpt = Annotated[Optional[Path], typer.Option("--weights", help="YAML class -> BGA weight table (default: the packaged WorldCover table).", show_default=False)]
YearOpt = Annotated[int, typer.Option("--worldcover-year", help="WorldCover layer: 2021 (v200) or 2020 (v100).")]
UrlOpt = Annotated[Optional[str], typer.Option("--worldcover-url", help="WorldCover bucket URL (default $SOUNDMAP_WORLDCOVER_URL or ESA's public bucket).", show_default=False)]
ZoomOpt = zoom_option("the workspace's only zoom; 1 with --bbox alone")
ModelOpt = model_option("the workspace's / the models' default")


def bga_command(
    queries: Annotated[Optional[list[str]], typer.Argument(help="With --compare: three text queries for R, G, B (Anthrophony, Biophony, Geophony).", show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output GeoTIFF (siblings get suffixes).")] = Path("bga.tif"),
    compare: Annotated[bool, typer.Option("--compare", help="Correlate a learned composite (the three QUERIES, or --learned FILE) with the BGA composite.")] = False,
    learned: Annotated[Optional[Path], typer.Option("--learned", help="An existing 3-band learned GeoTIFF to compare (implies --compare).", show_default=False)] = None,
    landcover: LandcoverOpt = None, class_map: ClassMapOpt = None, weights: WeightsOpt = None,
    worldcover_year: YearOpt = 2021, worldcover_url: UrlOpt = None,
    zoom: ZoomOpt = None,
    family: Annotated[str, typer.Option("--family", help="Imagery family of a --bbox grid without workspace.")] = "sentinel",
    stride: Annotated[Optional[float], typer.Option("--stride", help="Metres between cell centres of a --bbox grid without workspace (default: the footprint).", show_default=False)] = None,
    model: ModelOpt = None, bbox: BBoxOpt = None, workspace: WorkspaceOpt = None, cache_dir: CacheDirOpt = None,
    device: DeviceOpt = "auto", quiet: QuietOpt = False,
) -> None:
    from ..ecology.composite import (BGAPaths, bga_grid, check_compare_request, class_table, compare_composites,
                                     landcover_source, make_bga, workspace_mask)
    from ..progress import info

    apply_quiet(quiet)
    texts = check_compare_request(compare or learned is not None, list(queries or []), learned)
    table = class_table(weights, class_map, landcover)
    source = landcover_source(landcover, year=worldcover_year, base_url=worldcover_url, cache_dir=cache_dir)
    paths = BGAPaths(out)
    ws = _workspace_or_none(workspace)
    if texts:
        _check_queryable(ws, zoom)
    grid = bga_grid(ws, bbox=bbox, zoom=zoom, family=family, stride=stride, learned=learned)
    run = make_bga(grid, source, table, paths.out, mask=workspace_mask(ws, grid, zoom))
    for path in run.paths:
        typer.echo(str(path))
    if not (compare or learned is not None):
        return
    if learned is None:
        learned = _learned_from_queries(ws, texts, paths, zoom=zoom, bbox=bbox, model=model, device=device,
                                        cache_dir=cache_dir)
        typer.echo(str(learned))
    result = compare_composites(learned, paths.out, paths, queries=texts, attribution=source.attribution)
    typer.echo(str(paths.compare_json))
    typer.echo(str(paths.compare_png))
    for corr in result.bands:
        info(f"{corr.band}: pearson {_fmt(corr.pearson)}, spearman {_fmt(corr.spearman)} over {corr.n} cells")


def _fmt(value: float) -> str:
    return "n/a" if value != value else f"{value:.3f}"


def _workspace_or_none(path: Optional[Path]):
    """The workspace at ``path`` (or the default one) if it exists; an explicit missing one is an error."""
    from ..pipeline.workspace import Workspace

    if path is not None or Workspace.exists(None):
        return Workspace.load(path)
    return None


def _check_queryable(ws, zoom: Optional[int]) -> None:
    """``--compare QUERIES`` needs embeddings to score: say so before the land-cover work, not after."""
    from ..errors import CacheError
    from ..pipeline.query import choose_zoom

    if ws is None:
        raise CacheError("--compare with queries needs a workspace with embeddings (soundmap tiles fetch, "
                         "soundmap embed), or give --learned FILE")
    choose_zoom(ws, zoom)


def _learned_from_queries(ws, texts: list[str], paths, *, zoom, bbox, model, device, cache_dir) -> Path:
    """Score the three queries over the workspace embeddings with ``soundmap query``'s library."""
    from ..query.plan import QueryOptions
    from ..pipeline.query import query_workspace

    options = QueryOptions(out=paths.learned, texts=tuple(texts), zoom=zoom, bbox=bbox)
    query_workspace(ws, options, model=model, device=device, cache_dir=cache_dir)
    return paths.learned


def align_command(
    manifest: Annotated[Path, typer.Argument(help="CSV: audio, lat, lon [, image] [, group column].", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output JSON (align.png beside it).")] = Path("align.json"),
    model: ModelOpt = None,
    zoom: Annotated[int, typer.Option("--zoom", help="PSM zoom level of the imagery rendered at each recording and of its land-cover footprint.")] = 1,
    source: Annotated[Optional[str], typer.Option("--source", help="Imagery source (tiles.yaml name or XYZ template) rendered at each recording when the manifest has no image column.", show_default=False)] = None,
    group_column: Annotated[Optional[str], typer.Option("--group-column", help="Manifest column to group by (e.g. city); default 'group' if present.", show_default=False)] = None,
    permutations: Annotated[int, typer.Option("--permutations", help="Mantel permutations.")] = 999,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the permutations.")] = 0,
    alternative: Annotated[str, typer.Option("--alternative", help="two-sided, greater or less.")] = "two-sided",
    bga: Annotated[bool, typer.Option("--bga/--no-bga", help="Also correlate audio similarity with land-cover BGA similarity.")] = True,
    bga_raster: Annotated[Optional[Path], typer.Option("--bga-raster", help="Take each recording's BGA vector from the cell of this `soundmap bga` output instead of reading land cover.", show_default=False)] = None,
    landcover: LandcoverOpt = None, class_map: ClassMapOpt = None, weights: WeightsOpt = None,
    worldcover_year: YearOpt = 2021, worldcover_url: UrlOpt = None, tiles_config: TilesConfigOpt = None,
    cache_dir: CacheDirOpt = None, device: DeviceOpt = "auto", quiet: QuietOpt = False,
) -> None:
    from ..ecology.align import AlignOptions, run_align

    apply_quiet(quiet)
    options = AlignOptions(manifest=manifest, out=out, model=model, zoom=zoom, source=source,
                           group_column=group_column, permutations=permutations, seed=seed,
                           alternative=alternative, bga=bga, bga_raster=bga_raster, landcover=landcover,
                           class_map=class_map,
                           weights=weights, worldcover_year=worldcover_year, worldcover_url=worldcover_url,
                           cache_dir=cache_dir, device=device, tiles_config=tiles_config)
    result = run_align(options)
    for path in result.paths:
        typer.echo(str(path))
    for line in result.summary_lines():
        typer.echo(line)
