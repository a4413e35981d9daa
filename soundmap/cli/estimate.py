"""``soundmap estimate``: tiles, bytes, cells and hours a map of a bbox will take, before starting.

Thin: parse options, call :func:`soundmap.estimate.estimate`, print its lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import (CacheDirOpt, DeviceOpt, DownloadWorkersOpt, QuietOpt, RequiredBBoxOpt, SourceOpt, StrideOpt,
                     TilesConfigOpt, apply_quiet, zoom_levels_option)

ZoomOpt = zoom_levels_option("1")
RatesOpt = Annotated[Optional[Path], typer.Option("--rates", help="JSON file of measured rates (see --save-rates) instead of calibrating here.", show_default=False)]
SaveRatesOpt = Annotated[Optional[Path], typer.Option("--save-rates", help="Also write the rates used to this JSON file (e.g. to estimate for a GPU machine elsewhere).", show_default=False)]
RecalibrateOpt = Annotated[bool, typer.Option("--recalibrate", help="Measure this machine's rates again instead of using the cached ones.")]
BandwidthOpt = Annotated[float, typer.Option("--bandwidth-mbps", help="Assumed download bandwidth, Mbit/s.")]
LatencyOpt = Annotated[float, typer.Option("--latency-ms", help="Assumed latency of one tile request, ms.")]
QueriesOpt = Annotated[int, typer.Option("--queries", help="Queries per map (3 for an RGB composite).")]
StepsOpt = Annotated[int, typer.Option("--steps", help="Metadata steps per query (24 for an hourly series).")]


def register(app: typer.Typer) -> None:
    """Add the ``estimate`` command to the root app."""
    app.command("estimate")(estimate_command)


def estimate_command(
    bbox: RequiredBBoxOpt, zoom: ZoomOpt = "1", source: SourceOpt = None, device: DeviceOpt = "auto",
    stride: StrideOpt = None, rates: RatesOpt = None, save_rates: SaveRatesOpt = None,
    recalibrate: RecalibrateOpt = False, bandwidth_mbps: BandwidthOpt = 50.0, latency_ms: LatencyOpt = 150.0,
    workers: DownloadWorkersOpt = 16, queries: QueriesOpt = 1, steps: StepsOpt = 1, tiles_config: TilesConfigOpt = None,
    cache_dir: CacheDirOpt = None, quiet: QuietOpt = False,
) -> None:
    """Estimate the tiles, bytes, cells and hours a map of a region takes, before starting.

    Counts are exact; rates are measured on this machine (calibrated once, then cached).
    """
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
