"""``soundmap embed``: encode every cell of the workspace's region into its embedding store.

Thin: parse options, call :func:`soundmap.pipeline.embed.embed_region` per zoom, print.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..errors import TileError
from ..progress import info
from .common import (CacheDirOpt, DeviceOpt, QuietOpt, ResourcesOpt, SchedulerOpt, WorkspaceOpt, apply_quiet,
                     model_option, zoom_levels_option)

ZoomOpt = zoom_levels_option("the workspace's")
ModelOpt = model_option("the installed PSM model of the imagery's family")
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", help="Cells per forward pass (default: 8 on CPU, 128 on CUDA).", show_default=False)]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", help="Background threads rendering cells (default: 2 on CPU, all cores but one on CUDA).", show_default=False)]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="Storage precision of the features: float16 or float32.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Discard embeddings made with another model, source or preprocessing and start again.")]
StoreUrlOpt = Annotated[Optional[str], typer.Option("--store-url", help="Keep the workspace's embedding stores under this fsspec URL (s3://bucket/path, gs://...) instead of the workspace directory; recorded in the workspace so later embeds and queries use it (default: $SOUNDMAP_STORE_URL, else the recorded one).", show_default=False)]
RepairOpt = Annotated[bool, typer.Option("--repair", help="First find chunks of the store that fail their checksum or are missing under embedded cells, and re-embed only those.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="Image encoder precision: auto (bf16 on CUDA, fp32 on CPU) or fp32 (the authors' evaluation, exact parity; slower on GPU).")]


def register(app: typer.Typer) -> None:
    """Add the ``embed`` command to the root app."""
    app.command("embed")(embed_command)


def embed_command(
    zoom: ZoomOpt = None, model: ModelOpt = None, device: DeviceOpt = "auto", batch_size: BatchOpt = None,
    workers: WorkersOpt = None, dtype: DtypeOpt = "float16", overwrite: OverwriteOpt = False,
    precision: PrecisionOpt = "auto", store_url: StoreUrlOpt = None, workspace: WorkspaceOpt = None, cache_dir: CacheDirOpt = None,
    quiet: QuietOpt = False, scheduler: SchedulerOpt = None, resources: ResourcesOpt = None,
    repair: RepairOpt = False,
) -> None:
    """Embed every cell of the workspace's region with the image encoder (resumable)."""
    from ..distributed.cluster import resolve_scheduler
    from ..distributed.embed import embed_on_cluster
    from ..families import parse_zooms
    from ..store.embeddings import record_store_url
    from ..pipeline.embed import check_embed_options, embed_region, prepare_embedding
    from ..pipeline.workspace import Workspace

    apply_quiet(quiet)
    check_embed_options(batch_size=batch_size, workers=workers, dtype=dtype, precision=precision)
    cluster = resolve_scheduler(scheduler, resources)
    ws = Workspace.load(workspace)
    zooms = parse_zooms(zoom) if zoom is not None else list(ws.zooms)
    if store_url is not None:
        record_store_url(ws, store_url)
    if repair:
        _repair_stores(ws, zooms)
    if cluster is None:
        loaded = prepare_embedding(ws, zooms, model, device=device, cache_dir=cache_dir)
        reports = (embed_region(ws, level, loaded, batch_size=batch_size, device=device, workers=workers,
                                progress=not quiet, overwrite=overwrite, dtype=dtype, cache_dir=cache_dir,
                                precision=precision) for level in zooms)
    else:
        reports = embed_on_cluster(cluster, ws, zooms, model, batch_size=batch_size, device=device,
                                   overwrite=overwrite, dtype=dtype, cache_dir=cache_dir, progress=not quiet,
                                   precision=precision)
    missing: dict[int, int] = {}
    for report in reports:
        info(report.summary())
        if report.missing:
            missing[report.zoom] = report.missing
    if missing:
        counts = ", ".join(f"{n} at zoom {z}" for z, n in missing.items())
        raise TileError(f"{sum(missing.values())} cells have no imagery ({counts}); the rest is embedded: run "
                        f"`soundmap tiles fetch --workspace {ws.path}` to retry the tiles, then `soundmap embed` again")


def _repair_stores(ws: object, zooms: list[int]) -> None:
    """``--repair``: re-pend the damaged blocks of each zoom's store (the embed run that follows
    re-embeds them) and say how many there were."""
    from ..store.embeddings import embedding_store_location, repair_location

    for level in zooms:
        fixed = repair_location(embedding_store_location(ws, level))
        info(f"zoom {level}: {len(fixed)} damaged chunk(s) found" + (", re-embedding them" if fixed else ""))
