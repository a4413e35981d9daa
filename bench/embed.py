"""Embedding pipeline efficiency: the real embed loop against the bare image encoder.

Figure: ``embed_efficiency`` = cells/s of :func:`soundmap.pipeline.embed.embed_region` over cells
whose tiles are already in the tile cache (rendering, preprocessing, encoding and Zarr writes all
included) ÷ images/s of the bare image-encoder forward on pre-made normalised tensors — same model
size (ViT-B/16 by default), batch size and device, measured side by side in one run. The bare
encoder is timed half before and half after the pipeline so that a change of machine load during
the run affects both sides alike.

Targets: >= 0.90 on CPU, >= 0.85 on CUDA. On CUDA the fraction of the card's bf16 roofline is
printed too (ViT-B/16 at 224 px ≈ 17.6 GFLOPs per image).

Rendering, side by side in the same run, over one block of textured JPEG tiles (in memory, so
only decoding and warping are timed): ``render_cpu_ms_per_cell_gdal`` (today's per-cell GDAL
cubic warp, process CPU time per cell) beside the block renderer's. The block renderer runs here
on the CPU; its warp kernels (prefilter, lattice resize, ``grid_sample``, un-premultiply) are
timed separately in process CPU time and subtracted, because on a GPU they run on the device:
``render_cpu_ms_per_cell`` is the host-side share (tile decoding, mosaicking, pyproj lattices,
bookkeeping) and ``projected_feed_cells_per_s_16_cores`` = 16 / that.

    python bench/embed.py --quick                # ~64 cells, ViT-B/16, CPU
    python bench/embed.py --device cuda --cells 4096
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figures, parser  # noqa: E402
from _workbench import (bbox_for_cells, build_model, device_description, loopback_source,  # noqa: E402
                        make_workspace, quiet_progress, tile_server, timed_cpu)

#: ViT-B/16 forward at 224 px, FLOPs per image (2 × multiply-adds).
VIT_B16_GFLOPS_PER_IMAGE = 17.6
#: Dense bf16 tensor-core peak of an H100/H200 SXM (TFLOP/s); override with --peak-tflops.
DEFAULT_PEAK_TFLOPS = 989.0
ZOOM = 1
METRES_PER_DEGREE = 111_320.0
TARGET = {"cpu": 0.90, "cuda": 0.85}


def build_parser() -> Any:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=None, help="cells to embed [default: 256, --quick 64; on CUDA 4096, --quick 1024]")
    p.add_argument("--batch-size", type=int, default=None, help="[default: the pipeline's, 8 on CPU, 128 on CUDA]")
    p.add_argument("--model-size", choices=("full", "tiny"), default="full",
                   help="full = ViT-B/16 (the released image encoder); tiny = the tests' toy ViT")
    p.add_argument("--workers", type=int, default=None, help="render threads [default: the pipeline's]")
    p.add_argument("--render-side", type=int, default=None, help="side of the rendered block [default: √cells, at most 16: --quick 8]")
    p.add_argument("--skip-embed", action="store_true", help="only the render figures")
    p.add_argument("--peak-tflops", type=float, default=DEFAULT_PEAK_TFLOPS,
                   help="the GPU's dense bf16 peak, for the roofline fraction [default: H100/H200 SXM, 989]")
    return p


def bare_encoder_rate(model: Any, device: Any, batch_size: int, n_images: int) -> tuple[int, float, float]:
    """(images, wall seconds, CPU seconds) of the image encoder alone on pre-made normalised 224-px
    tensors, in batches of ``batch_size`` under the same autocast as the pipeline."""
    import torch

    from soundmap.pipeline.blocks import encoder_autocast

    pixels = torch.randn(batch_size, 3, 224, 224, device=device)
    res = model.resolutions(ZOOM, batch_size).to(device)
    batches = max(1, math.ceil(n_images / batch_size))

    def run() -> None:
        with torch.inference_mode(), encoder_autocast(device):
            for _ in range(batches):
                model.image_encoder(pixels, res).float()

    seconds, cpu_seconds, _ = timed_cpu(run, device)
    return batches * batch_size, seconds, cpu_seconds


def render_figures(figures: Figures, side: int) -> None:
    """Old (GDAL per cell) and new (block) renders of one side × side block of textured JPEG tiles."""
    import time

    import numpy as np

    from soundmap.geo.bbox import BBox
    from soundmap.geo.grid import make_grid
    from soundmap.tiles.block_render import render_cells_torch
    from soundmap.tiles.render import render_cells
    from soundmap.tiles.sources import TileSource
    from tests.fixtures.textured_tiles import TexturedTiles

    source = TileSource(name="textured", kind="xyz", url="http://127.0.0.1:9/{z}/{x}/{y}.jpg", max_zoom=14)
    footprint_deg = 2560.0 / METRES_PER_DEGREE
    grid = make_grid(BBox(10.0, 50.0, 10.0 + side * footprint_deg * 1.55, 50.0 + side * footprint_deg), "sentinel", ZOOM)
    rows, cols = (a.ravel() for a in np.indices((min(side, grid.rows), min(side, grid.cols))))
    tiles = TexturedTiles(fmt="JPEG")
    render_cells_torch(grid, rows, cols, source, tiles)  # synthesise and encode the tiles once (not timed)
    started = time.process_time()
    for start in range(0, rows.size, 64):  # today's render groups of 64 cells
        render_cells(grid, rows[start:start + 64], cols[start:start + 64], source, tiles)
    gdal_ms = (time.process_time() - started) / rows.size * 1e3
    timings: dict[str, float] = {}
    started = time.process_time()
    render_cells_torch(grid, rows, cols, source, tiles, timings=timings)  # the whole block at once
    block_ms = (time.process_time() - started) / rows.size * 1e3
    kernel_ms = timings.get("kernel_cpu_s", 0.0) / rows.size * 1e3
    host_ms = block_ms - kernel_ms
    figures.add("render_cells", rows.size)
    figures.add("render_cpu_ms_per_cell_gdal", gdal_ms)
    figures.add("render_cpu_ms_per_cell_block_on_cpu", block_ms)
    figures.add("render_warp_kernel_cpu_ms_per_cell", kernel_ms)
    figures.add("render_cpu_ms_per_cell", host_ms, "<= 4")
    figures.add("projected_feed_cells_per_s_16_cores", 16.0 / (host_ms / 1e3), ">= 4000")


def main(argv: list[str] | None = None) -> Figures:
    args = build_parser().parse_args(argv)
    from soundmap.pipeline.blocks import DEFAULT_BATCH_SIZE
    from soundmap.pipeline.embed import embed_region
    from soundmap.pipeline.models import resolve_device
    from soundmap.pipeline.workspace import fetch_workspace

    quiet_progress()
    device = resolve_device(args.device)
    if device.type == "cuda":  # batches of 128: enough cells for many batches
        n_cells = args.cells or (1024 if args.quick else 4096)
    else:
        n_cells = args.cells or (64 if args.quick else 256)
    batch_size = args.batch_size or DEFAULT_BATCH_SIZE.get(device.type, 8)
    figures = Figures(f"embed pipeline vs bare encoder ({args.model_size} ViT, {device_description(str(device))})")
    render_figures(figures, args.render_side or max(2, min(16, math.isqrt(n_cells))))
    if args.skip_embed:
        figures.print()
        return figures
    model = build_model(args.model_size, device=str(device))
    with tempfile.TemporaryDirectory(prefix="soundmap-bench-embed-") as tmp, tile_server() as server:
        root = Path(tmp)
        cache_dir = root / "cache"
        source = loopback_source(server, root)
        footprint = 2560.0 * ZOOM  # sentinel: zoom × 256 px × 10 m
        ws = make_workspace(root, source, bbox_for_cells(n_cells, footprint), [ZOOM])
        fetched = fetch_workspace(ws, ws.tile_cache(cache_dir))
        if fetched.failed_tiles:
            raise RuntimeError(f"{len(fetched.failed_tiles)} tiles failed to fetch from the loopback server")
        grid = ws.grid(ZOOM)
        cells = grid.rows * grid.cols
        bare_encoder_rate(model, device, batch_size, batch_size)  # warm-up: allocator, kernels, caches
        before = bare_encoder_rate(model, device, batch_size, cells // 2)
        seconds, cpu_seconds, report = timed_cpu(lambda: embed_region(
            ws, ZOOM, model, batch_size=batch_size, device=device, workers=args.workers, progress=False,
            overwrite=True, cache_dir=cache_dir), device)
        after = bare_encoder_rate(model, device, batch_size, cells - cells // 2)
    if report.embedded != cells:
        raise RuntimeError(f"the pipeline embedded {report.embedded} of {cells} cells ({report.missing} without imagery)")
    images_per_s = (before[0] + after[0]) / (before[1] + after[1])
    images_per_cpu_s = (before[0] + after[0]) / (before[2] + after[2])
    cells_per_s = cells / seconds
    target = TARGET["cuda" if device.type == "cuda" else "cpu"]
    figures.add("cells", cells)
    figures.add("batch_size", batch_size)
    figures.add("encoder_images_per_s", images_per_s)
    figures.add("pipeline_cells_per_s", cells_per_s)
    if device.type == "cpu":  # the same ratio in CPU time: not stretched by other users' load
        figures.add("embed_efficiency_cpu_time", (cells / cpu_seconds) / images_per_cpu_s)
    figures.add("embed_efficiency", cells_per_s / images_per_s, f">= {target:g}")
    if device.type == "cuda":
        achieved = images_per_s * VIT_B16_GFLOPS_PER_IMAGE / 1e3
        if args.model_size == "full":
            figures.add("encoder_bf16_roofline_fraction", achieved / args.peak_tflops)
    figures.print()
    return figures


if __name__ == "__main__":
    main()
