"""``soundmap estimate``: tiles, bytes, cells and hours a map of a bbox will take, before starting.

Thin: parse options, call :func:`soundmap.estimate.estimate`, print its lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import CacheDirOpt, DeviceOpt, QuietOpt, apply_quiet

BBoxArg = Annotated[str, typer.Option("--bbox", help="west,south,east,north in EPSG:4326 degrees.")]
ZoomOpt = Annotated[str, typer.Option("--zoom", help="PSM zoom levels, comma-separated (1, 3, 5).")]
SourceOpt = Annotated[Optional[str], typer.Option("--source", help="Imagery source name from tiles.yaml or an XYZ template [default: the default source].", show_default=False)]
StrideOpt = Annotated[Optional[float], typer.Option("--stride", help="Metres between cell centres (default: the cell footprint).", show_default=False)]
RatesOpt = Annotated[Optional[Path], typer.Option("--rates", help="JSON file of measured rates (see --save-rates) instead of calibrating here.", show_default=False)]
SaveRatesOpt = Annotated[Optional[Path], typer.Option("--save-rates", help="Also write the rates used to this JSON file (e.g. to estimate for a GPU machine elsewhere).", show_default=False)]
RecalibrateOpt = Annotated[bool, typer.Option("--recalibrate", help="Measure this machine's rates again instead of using the cached ones.")]
BandwidthOpt = Annotated[float, typer.Option("--bandwidth-mbps", help="Assumed download bandwidth, Mbit/s.")]
LatencyOpt = Annotated[float, typer.Option("--latency-ms", help="Assumed latency of one tile request, ms.")]
WorkersOpt = Annotated[int, typer.Option("--workers", help="Concurrent downloads (as `soundmap tiles fetch --workers`).")]
QueriesOpt = Annotated[int, typer.Option("--queries", help="Queries per map (3 for an RGB composite).")]
StepsOpt = Annotated[int, typer.Option("--steps", help="Metadata steps per query (24 for an hourly series).")]
TilesConfigOpt = Annotated[Optional[Path], typer.Option("--tiles-config", help="Extra tiles.yaml merged over the packaged and user ones.", show_default=False)]


def register(app: typer.Typer) -> None:
    """Add the ``estimate`` command to the root app."""
    app.command("estimate")(estimate_command)


def estimate_command(
    bbox: BBoxArg, zoom: ZoomOpt = "1", source: SourceOpt = None, device: DeviceOpt = "auto",
    stride: StrideOpt = None, rates: RatesOpt = None, save_rates: SaveRatesOpt = None,
    recalibrate: RecalibrateOpt = False, bandwidth_mbps: BandwidthOpt = 50.0, latency_ms: LatencyOpt = 150.0,
    workers: WorkersOpt = 16, queries: QueriesOpt = 1, steps: StepsOpt = 1, tiles_config: TilesConfigOpt = None,
    cache_dir: CacheDirOpt = None, quiet: QuietOpt = False,
) -> None:
    """Estimate tiles, bytes, cells and hours to fetch, embed and query a region, from exact
    counts and rates measured on this machine (calibrated once, then cached)."""
    from ..estimate import FetchAssumptions, estimate
    from ..families import parse_zooms

    apply_quiet(quiet)
    result = estimate(bbox, parse_zooms(zoom), source=source, device=device, rates_file=rates,
                      recalibrate=recalibrate,
                      fetch=FetchAssumptions(bandwidth_mbps=bandwidth_mbps, latency_ms=latency_ms, workers=workers),
                      stride=stride, queries=queries, steps=steps, tiles_config=tiles_config, cache_dir=cache_dir)
    for line in result.lines():
        typer.echo(line)
    if save_rates is not None:
        result.rates.save(save_rates)
