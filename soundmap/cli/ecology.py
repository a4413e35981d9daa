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

The cross-modal urban sensing study's encoders: --audio-encoder ast, --image-encoder clip (street-level images from --street-image-column) or remoteclip (aerial: the image column or imagery rendered from --source), --combine-views for street + aerial + combined. Each r then also gets the study's plain p-value (p_pairs) beside the Mantel p, and align.png shows bar charts per view, per group and per BGA category.
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
    segmenter: Annotated[str, typer.Option("--segmenter", help="Where the classes come from: worldcover (land-cover raster), clipseg (CLIPSeg on the rendered cell imagery, the study's aerial classes; model downloaded from Hugging Face on first use) or segearth-ov (not available yet).")] = "worldcover",
    source: Annotated[Optional[str], typer.Option("--source", help="Imagery segmented with --segmenter clipseg (default: the workspace's source).", show_default=False)] = None,
    tiles_config: TilesConfigOpt = None,
) -> None:
    from ..ecology.segmentation import check_segmenter

    check_segmenter(segmenter)
    if segmenter != "worldcover":
        apply_quiet(quiet)
        _segmented_bga(segmenter, out=out, compare=compare or learned is not None, weights=weights, zoom=zoom,
                       family=family, stride=stride, bbox=bbox, workspace=workspace, cache_dir=cache_dir,
                       device=device, source=source, tiles_config=tiles_config, landcover=landcover)
        return
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


def _segmented_bga(segmenter: str, *, out: Path, compare: bool, weights, zoom, family, stride, bbox, workspace,
                   cache_dir, device, source, tiles_config, landcover) -> None:
    """``bga --segmenter clipseg``: segment each cell's rendered imagery into the study's classes."""
    from ..ecology.composite import bga_grid, workspace_mask
    from ..ecology.segmentation import load_prompt_table, load_segmenter, make_segmented_bga
    from ..errors import InputError
    from ..models.soundscape import resolve_device
    from ..tiles.sources import resolve_source

    if compare or landcover is not None:
        raise InputError(f"--segmenter {segmenter} segments imagery: drop --landcover/--compare (use them "
                         "with --segmenter worldcover)")
    prompts = load_prompt_table(weights)
    ws = _workspace_or_none(workspace)
    if source is not None:
        src = resolve_source(source, config_path=tiles_config)
    elif ws is not None:
        src = ws.source()
    else:
        raise InputError(f"--segmenter {segmenter} needs imagery: give --source (tiles.yaml name, XYZ template "
                         "or raster) or run it in a workspace")
    grid = bga_grid(ws, bbox=bbox, zoom=zoom, family=family, stride=stride, learned=None)
    model = load_segmenter(segmenter, device=resolve_device(device))
    run = make_segmented_bga(grid, src, model, prompts, out, cache_dir=cache_dir,
                             mask=workspace_mask(ws, grid, zoom), segmenter_name=segmenter)
    for path in run.paths:
        typer.echo(str(path))


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
    audio_encoder: Annotated[str, typer.Option("--audio-encoder", help="ast: the study's AudioSet-finetuned Audio Spectrogram Transformer (10 s segments, mean of pooled outputs; downloaded from Hugging Face on first use); model: the PSM/GeoCLAP model's audio branch.")] = "model",
    image_encoder: Annotated[str, typer.Option("--image-encoder", help="clip: OpenAI CLIP ViT-L/14 on the street-image column; remoteclip: RemoteCLIP ViT-L/14 on the image column or on imagery rendered from --source; model: the PSM image encoder.")] = "model",
    street_image_column: Annotated[str, typer.Option("--street-image-column", help="Manifest column of street-level images (for clip / --combine-views).")] = "street_image",
    combine_views: Annotated[bool, typer.Option("--combine-views", help="CLIP street + RemoteCLIP aerial embeddings and their combination (concatenated unit vectors: mean of the two cosine similarities).")] = False,
    family: Annotated[str, typer.Option("--family", help="Imagery family (footprint) of the aerial imagery rendered for RemoteCLIP and of the land-cover footprint with the study's encoders.")] = "sentinel",
    segmenter: Annotated[str, typer.Option("--segmenter", help="BGA source: worldcover (land cover around each recording) or clipseg (CLIPSeg on the aerial images into the study's aerial classes, and on street images into its street classes; adds the segmentation-similarity analyses).")] = "worldcover",
) -> None:
    from ..ecology.align import AlignOptions, run_align

    apply_quiet(quiet)
    options = AlignOptions(manifest=manifest, out=out, model=model, zoom=zoom, source=source,
                           group_column=group_column, permutations=permutations, seed=seed,
                           alternative=alternative, bga=bga, bga_raster=bga_raster, landcover=landcover,
                           class_map=class_map,
                           weights=weights, worldcover_year=worldcover_year, worldcover_url=worldcover_url,
                           cache_dir=cache_dir, device=device, tiles_config=tiles_config,
                           audio_encoder=audio_encoder, image_encoder=image_encoder,
                           street_image_column=street_image_column, combine_views=combine_views, family=family,
                           segmenter=segmenter)
    result = run_align(options)
    for path in result.paths:
        typer.echo(str(path))
    for line in result.summary_lines():
        typer.echo(line)
