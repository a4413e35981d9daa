"""Fetch concurrency against the loopback tile server with injected latency (50 ms per tile).

Figures, measured side by side in one run:

* ``fetch_speedup`` = tiles/s of a workspace fetch with the default worker count ÷ tiles/s of
  the same fetcher with one worker (serial, one tile at a time) — target >= 0.8 × workers
  (workers capped at 32 for the target);
* ``failed_tiles`` — target 0;
* ``rerun_downloaded`` / ``rerun_time_fraction`` — a second fetch of the same bbox downloads
  nothing and takes < 5 % of the first run's time.

The tile server runs in its own process (as a real server is another machine), and encodes the
region's tiles before the timing starts (a real server sends stored bytes), so what is timed is
the fetcher: HTTP, the full image decode that guards the cache, and SQLite commits.

    python bench/fetch.py --quick
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figures, parser  # noqa: E402
from _workbench import (ServerProcess, bbox_for_cells, cpu_description, make_workspace, quiet_progress,  # noqa: E402
                        timed)

ZOOM = 1
LATENCY_S = 0.05
#: z14 tiles per zoom-1 cell side at 50° N (a 2560 m cell over 256 px × 6.1 m tiles), for sizing.
TILES_PER_CELL_SIDE = 1.6


def build_parser() -> Any:
    from soundmap.tiles.fetch import fetch_tiles

    default_workers = fetch_tiles.__kwdefaults__["workers"]
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--tiles", type=int, default=None, help="tiles in the region [default: 1200, --quick 500]")
    p.add_argument("--serial-tiles", type=int, default=None,
                   help="tiles fetched one at a time for the serial rate [default: 100, --quick 50]")
    p.add_argument("--workers", type=int, default=default_workers,
                   help=f"parallel downloads [default: the fetcher's, {default_workers}]")
    p.add_argument("--latency-ms", type=float, default=LATENCY_S * 1000, help="latency injected per tile")
    return p


def main(argv: list[str] | None = None) -> Figures:
    args = build_parser().parse_args(argv)
    from soundmap.tiles.cache import TileCache
    from soundmap.tiles.fetch import fetch_tiles
    from soundmap.tiles.sources import resolve_source
    from soundmap.pipeline.workspace import fetch_workspace, plan_zoom

    quiet_progress()
    n_tiles = args.tiles or (500 if args.quick else 1200)
    n_serial = args.serial_tiles or (50 if args.quick else 100)
    n_cells = max(1, round(n_tiles / TILES_PER_CELL_SIDE ** 2))
    figures = Figures(f"tile fetch concurrency, {args.latency_ms:g} ms latency ({cpu_description()})")
    with tempfile.TemporaryDirectory(prefix="soundmap-bench-fetch-") as tmp, \
            ServerProcess(Path(tmp), args.latency_ms / 1000) as server:
        root = Path(tmp)
        source = resolve_source("test-xyz", config_path=server.tiles_yaml)
        ws = make_workspace(root, source, bbox_for_cells(n_cells, 2560.0 * ZOOM), [ZOOM])
        tiles = plan_zoom(ws, ZOOM).tiles
        server.prewarm(tiles)
        serial_tiles = tiles[:n_serial]
        serial_s, serial = timed(lambda: fetch_tiles(source, serial_tiles, TileCache(root / "serial.sqlite"),
                                                     workers=1))
        cache = TileCache(root / "parallel.sqlite")
        first_s, first = timed(lambda: fetch_workspace(ws, cache, workers=args.workers))
        second_s, second = timed(lambda: fetch_workspace(ws, cache, workers=args.workers))
    downloaded = sum(r.downloaded for r in first.reports.values())
    failed = len(serial.failed) + len(first.failed_tiles)
    serial_rate = serial.downloaded / serial_s
    parallel_rate = downloaded / first_s
    workers = min(args.workers, len(tiles))
    figures.add("tiles", len(tiles))
    figures.add("workers", workers)
    figures.add("serial_tiles_per_s", serial_rate)
    figures.add("parallel_tiles_per_s", parallel_rate)
    figures.add("fetch_speedup", parallel_rate / serial_rate, f">= {0.8 * min(workers, 32):.3g}")
    figures.add("failed_tiles", failed, "<= 0")
    figures.add("rerun_downloaded", sum(r.downloaded for r in second.reports.values()), "<= 0")
    figures.add("rerun_time_fraction", second_s / first_s, "<= 0.05")
    figures.print()
    return figures


if __name__ == "__main__":
    main()
