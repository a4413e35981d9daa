"""``soundmap query`` and ``soundmap map``: soundscape heatmaps as Cloud-Optimised GeoTIFFs.

Thin: parse options into :class:`~soundmap.query.plan.QueryOptions`, call
:func:`~soundmap.pipeline.query.query_workspace` / :func:`~soundmap.pipeline.query.map_region`,
print the files written (stdout, one per line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import ResourcesOpt, SchedulerOpt  # scale-out (soundmap.distributed)
from .common import (BBoxOpt, CacheDirOpt, DeviceOpt, QuietOpt, RequiredBBoxOpt, SourceOpt, StrideOpt, TilesConfigOpt,
                     WorkspaceOpt, apply_quiet, model_option, zoom_option)

QUERY_HELP = """Score text/audio queries over a workspace's embeddings into GeoTIFF heatmaps.

Every --text and every --audio is one query (one band; higher = more likely heard). With --combine, the i-th --text is added to the i-th --audio as one query, as in the PSM paper (or one text/audio is combined with each of the other side).

Metadata: --month, --hour (repeatable or ranges: --hour 0-23 makes a 24-step series, one band per step on one common scale), --audio-source, --caption-source, --latlon/--no-latlon (cell centre; on by default when the model takes it). An omitted component is dropped as the model expects.

--bbox W,S,E,N restricts the output to the cells touching that part of the workspace region. Fused image embeddings depend only on the cells and the metadata, so they are computed once per metadata setting for all queries of a call and kept in the workspace (<workspace>/fused, about 4 KB per cell and setting for PSM; --no-fused-cache skips it).

Files, all next to --out (map.tif): map.tif raw scores; map_norm.tif (--normalize); map_rgb.tif (--rgb, three queries); map_uncertainty.tif (--uncertainty, PSM only: the L1 norm of sigma = exp(logvar/2) of the fused image embedding); map.png (--png); map.gif (--gif, series).
"""

MAP_HELP = """Fetch imagery, embed it and query it in one go (takes every option of `soundmap query`).

Example: soundmap map --bbox W,S,E,N --text 'sound of insects' --hour 20 --out map.tif
"""

TextOpt = Annotated[Optional[list[str]], typer.Option("--text", "-t", help="A text query (repeatable).", show_default=False)]
AudioOpt = Annotated[Optional[list[Path]], typer.Option("--audio", "-a", help="An audio file query (repeatable).", show_default=False)]
CombineOpt = Annotated[bool, typer.Option("--combine", help="Combine the i-th --text with the i-th --audio into one query.")]
MonthOpt = Annotated[Optional[list[str]], typer.Option("--month", help="Month 1-12 (repeatable, or a range like 1-12 for a series).", show_default=False)]
HourOpt = Annotated[Optional[list[str]], typer.Option("--hour", help="Hour 0-23 (repeatable, or a range like 0-23 for a series).", show_default=False)]
AudioSourceOpt = Annotated[Optional[str], typer.Option("--audio-source", help="yfcc, iNat, aporee or freesound.", show_default=False)]
CaptionSourceOpt = Annotated[Optional[str], typer.Option("--caption-source", help="meta, qwen or pengi.", show_default=False)]
LatlonOpt = Annotated[Optional[bool], typer.Option("--latlon/--no-latlon", help="Give the model each cell's centre lat/lon (default: on when the model takes it).", show_default=False)]
ScoreOpt = Annotated[Optional[str], typer.Option("--score", help="csd or cosine (default: the model's).", show_default=False)]
ZoomOpt = zoom_option("the single embedded one")
ModelOpt = model_option("the one that made the embeddings")
MapZoomOpt = zoom_option("5 above ~100 km across, else 1")
MapModelOpt = model_option("the PSM Sentinel model, offered for download on first use")
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output GeoTIFF (siblings get suffixes).")]
NormalizeOpt = Annotated[Optional[str], typer.Option("--normalize", help="Also write a 0-1 version: minmax or percentile (2-98).", show_default=False)]
RgbOpt = Annotated[bool, typer.Option("--rgb", help="RGB composite of exactly three queries.")]
UncertaintyOpt = Annotated[bool, typer.Option("--uncertainty", help="Per-cell uncertainty map (PSM only).")]
PngOpt = Annotated[bool, typer.Option("--png", help="Quick-look PNG with colour bar, title and attribution.")]
GifOpt = Annotated[bool, typer.Option("--gif", help="Animated GIF of a series (several hours or months).")]
StoreUrlOpt = Annotated[Optional[str], typer.Option("--store-url", help="Read the embeddings from under this fsspec URL (default: $SOUNDMAP_STORE_URL, else the one recorded by `soundmap embed --store-url`, else the workspace).", show_default=False)]
SubcellOpt = Annotated[bool, typer.Option("--subcell", help="Also write <out>_subcell.tif: each cell's 14×14 image tokens scored (Sat2Sound models with metadata), on a 14× finer grid aligned with the cells.")]
FusedCacheOpt = Annotated[bool, typer.Option("--fused-cache/--no-fused-cache", help="Keep fused embeddings in the workspace for later queries.")]


def register(app: typer.Typer) -> None:
    """Add ``query`` and ``map`` to the root app."""
    app.command("query", help=QUERY_HELP)(query_command)
    app.command("map", help=MAP_HELP)(map_command)


def _options(out: Path, text: Optional[list[str]], audio: Optional[list[Path]], combine: bool,
             month: Optional[list[str]], hour: Optional[list[str]], audio_source: Optional[str],
             caption_source: Optional[str], latlon: Optional[bool], score: Optional[str], normalize: Optional[str],
             rgb: bool, uncertainty: bool, png: bool, gif: bool, zoom: Optional[int], bbox: Optional[str]):
    from ..query.plan import QueryOptions

    return QueryOptions(out=out, texts=tuple(text or ()), audios=tuple(audio or ()), combine=combine,
                        months=tuple(month or ()), hours=tuple(hour or ()), audio_source=audio_source,
                        caption_source=caption_source, latlon=latlon, score=score, normalize=normalize, rgb=rgb,
                        uncertainty=uncertainty, png=png, gif=gif, zoom=zoom, bbox=bbox)


def _report(result) -> None:
    from ..progress import info

    for path in result.paths:
        typer.echo(str(path))
    if result.cached_blocks and not result.computed_blocks:
        info("fused embeddings reused from the workspace cache")


PartialOpt = Annotated[bool, typer.Option("--partial", help="Map a store whose embedding is unfinished (its pending cells become nodata; the coverage is recorded in the output's tags).")]


def query_command(
    out: OutOpt = Path("soundmap.tif"), text: TextOpt = None, audio: AudioOpt = None, combine: CombineOpt = False,
    month: MonthOpt = None, hour: HourOpt = None, audio_source: AudioSourceOpt = None,
    caption_source: CaptionSourceOpt = None, latlon: LatlonOpt = None, score: ScoreOpt = None,
    normalize: NormalizeOpt = None, rgb: RgbOpt = False, uncertainty: UncertaintyOpt = False, png: PngOpt = False,
    gif: GifOpt = False, zoom: ZoomOpt = None, model: ModelOpt = None, bbox: BBoxOpt = None,
    fused_cache: FusedCacheOpt = True, workspace: WorkspaceOpt = None, cache_dir: CacheDirOpt = None,
    device: DeviceOpt = "auto", quiet: QuietOpt = False, scheduler: SchedulerOpt = None,
    resources: ResourcesOpt = None, store_url: StoreUrlOpt = None, subcell: SubcellOpt = False,
    partial: PartialOpt = False,
) -> None:
    from ..distributed.cluster import resolve_scheduler
    from ..pipeline.query import query_workspace

    apply_quiet(quiet)
    cluster = resolve_scheduler(scheduler, resources)
    options = _options(out, text, audio, combine, month, hour, audio_source, caption_source, latlon, score,
                       normalize, rgb, uncertainty, png, gif, zoom, bbox)
    if cluster is None:
        from ..scratch import terminate_as_exception

        with terminate_as_exception(f"terminated (SIGTERM); the scratch files beside {out} were removed and "
                                    "no output was written"):
            result = query_workspace(workspace, options, model=model, device=device, cache_dir=cache_dir,
                                     fused_cache=fused_cache, store_url=store_url, partial=partial)
    else:
        from ..distributed.query import query_on_cluster

        result = query_on_cluster(cluster, workspace, options, model=model, device=device, cache_dir=cache_dir,
                                  fused_cache=fused_cache, store_url=store_url, partial=partial)
    _report(result)
    if subcell:
        from ..pipeline.query import subcell_for_workspace

        typer.echo(str(subcell_for_workspace(workspace, options, model=model, device=device, cache_dir=cache_dir,
                                             store_url=store_url)))


def map_command(
    bbox: RequiredBBoxOpt,
    out: OutOpt = Path("soundmap.tif"), text: TextOpt = None, audio: AudioOpt = None, combine: CombineOpt = False,
    month: MonthOpt = None, hour: HourOpt = None, audio_source: AudioSourceOpt = None,
    caption_source: CaptionSourceOpt = None, latlon: LatlonOpt = None, score: ScoreOpt = None,
    normalize: NormalizeOpt = None, rgb: RgbOpt = False, uncertainty: UncertaintyOpt = False, png: PngOpt = False,
    gif: GifOpt = False,
    zoom: MapZoomOpt = None, model: MapModelOpt = None, source: SourceOpt = "s2cloudless-2020", stride: StrideOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Download the default model and large tile sets without asking.")] = False,
    tiles_config: TilesConfigOpt = None, fused_cache: FusedCacheOpt = True, workspace: WorkspaceOpt = None, cache_dir: CacheDirOpt = None,
    device: DeviceOpt = "auto", quiet: QuietOpt = False, subcell: SubcellOpt = False,
    explore: Annotated[bool, typer.Option("--explore", help="Then open the map in `soundmap explore` (127.0.0.1:8765).")] = False,
) -> None:
    from ..pipeline.query import map_region

    apply_quiet(quiet)
    options = _options(out, text, audio, combine, month, hour, audio_source, caption_source, latlon, score,
                       normalize, rgb, uncertainty, png, gif, zoom, None)
    result = map_region(bbox, options, source=source, zoom=zoom, model=model, workspace=workspace, yes=yes,
                        confirm=_confirm, device=device, cache_dir=cache_dir, stride=stride, fused_cache=fused_cache,
                        tiles_config=tiles_config)
    _report(result)
    if subcell or explore:
        from .explore import launch, map_workspace_path

        ws_path = map_workspace_path(bbox, source, zoom, stride, workspace, cache_dir, tiles_config)
    if subcell:
        from ..pipeline.query import subcell_for_workspace

        typer.echo(str(subcell_for_workspace(ws_path, options, model=model, device=device, cache_dir=cache_dir)))
    if explore:
        launch(ws_path, model=model, open_browser=True, cache_dir=cache_dir)


def _confirm(question: str) -> bool:
    """Ask on an interactive terminal; never block a script (answer no without a TTY)."""
    import sys

    if not sys.stdin.isatty():
        return False
    return typer.confirm(question, default=True)
