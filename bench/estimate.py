"""``soundmap estimate`` checked against a real small run on this machine.

Calibrates the rates (as ``soundmap estimate`` does on first use), estimates a tiny bbox, then
runs it for real — fetch from the loopback tile server (50 ms latency per tile), embed with the
released-size image encoder (ViT-B/16, random weights), one query with the released-size fusion —
and compares. The estimate's network assumptions are set to the loopback's (its latency, a
bandwidth far above what 127.0.0.1 limits), since the estimate cannot know a network it has not
measured. Model loading and text encoding are outside both sides.

Figures: ``cells_ratio`` and ``tiles_ratio`` (estimated ÷ real, exactly 1: the counts are
exact), per-step time ratios (estimated ÷ real) and ``estimate_error`` = |estimated − real| ÷ real
of the total time (target <= 0.30).

    python bench/estimate.py --quick
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figures, parser  # noqa: E402
from _workbench import (bbox_for_cells, build_model, device_description, loopback_source,  # noqa: E402
                        make_workspace, quiet_progress, tile_server, timed)

ZOOM = 1
LATENCY_S = 0.05


def build_parser() -> Any:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=None, help="cells of the real run [default: 36, --quick 20]")
    p.add_argument("--model-size", choices=("full", "tiny"), default="full",
                   help="image encoder and fusion of the real run: full = the released sizes (what the "
                        "estimate's rates are for); tiny only exercises the code (estimate_error is meaningless)")
    p.add_argument("--rates", default=None, help="use this rates JSON instead of calibrating (exercises the code only)")
    return p


def real_run(root: Path, server: Any, model: Any, n_cells: int, device: Any) -> dict[str, Any]:
    """Fetch, embed and query a small bbox for real; seconds of each step and the counts."""
    from soundmap.query.engine import run_query
    from soundmap.query.plan import QueryOptions, make_plan
    from soundmap.store.embeddings import open_embedding_store
    from soundmap.pipeline.embed import embed_region
    from soundmap.pipeline.workspace import fetch_workspace

    cache_dir = root / "cache"
    source = loopback_source(server, root)
    bbox = bbox_for_cells(n_cells, 2560.0 * ZOOM)
    ws = make_workspace(root, source, bbox, [ZOOM])
    fetch_s, fetched = timed(lambda: fetch_workspace(ws, ws.tile_cache(cache_dir)))
    embed_s, report = timed(lambda: embed_region(ws, ZOOM, model, device=device, progress=False, cache_dir=cache_dir),
                            device)
    store = open_embedding_store(ws, ZOOM, model=model)
    plan = make_plan(QueryOptions(out=root / "map.tif", texts=("birds singing",), hours=("12",), months=("6",)), model)
    query_s, _ = timed(lambda: run_query(plan, model=model, store=store, cache_root=None), device)
    return {"bbox": bbox, "source": source, "fetch_s": fetch_s, "embed_s": embed_s, "query_s": query_s,
            "tiles": sum(r.downloaded for r in fetched.reports.values()), "cells": report.embedded,
            "failed": len(fetched.failed_tiles)}


def main(argv: list[str] | None = None) -> Figures:
    args = build_parser().parse_args(argv)
    from soundmap.estimate import FetchAssumptions, Rates, calibrate, estimate_region
    from soundmap.geo.bbox import parse_bbox
    from soundmap.pipeline.models import resolve_device
    from tests.fixtures.clap_files import write_clap_files

    quiet_progress()
    device = resolve_device(args.device)
    n_cells = args.cells or (20 if args.quick else 36)
    figures = Figures(f"estimate vs real run ({args.model_size} models, {device_description(str(device))})")
    with tempfile.TemporaryDirectory(prefix="soundmap-bench-estimate-") as tmp, tile_server(LATENCY_S) as server:
        root = Path(tmp)
        model = build_model(args.model_size, fusion=args.model_size, device=str(device))
        model.clap_files = write_clap_files(root / "clap")
        source = loopback_source(server, root / "estimate")
        rates = Rates.load(args.rates) if args.rates else calibrate(device, source)
        real = real_run(root, server, model, n_cells, device)
    network = FetchAssumptions(bandwidth_mbps=10_000.0, latency_ms=LATENCY_S * 1000)
    guess = estimate_region(parse_bbox(real["bbox"]), [ZOOM], real["source"], rates, fetch=network).zooms[0]
    real_total = real["fetch_s"] + real["embed_s"] + real["query_s"]
    figures.add("cells_ratio", guess.cells / max(1, real["cells"]))
    figures.add("tiles_ratio", guess.tiles / max(1, real["tiles"]))
    figures.add("failed_tiles", real["failed"], "<= 0")
    figures.add("real_fetch_s", real["fetch_s"])
    figures.add("real_embed_s", real["embed_s"])
    figures.add("real_query_s", real["query_s"])
    figures.add("fetch_time_ratio", guess.fetch_s / real["fetch_s"])
    figures.add("embed_time_ratio", guess.embed_s / real["embed_s"])
    figures.add("query_time_ratio", guess.query_s / real["query_s"])
    figures.add("estimate_error", abs(guess.total_s - real_total) / real_total, "<= 0.30")
    figures.print()
    return figures


if __name__ == "__main__":
    main()
