"""Each benchmark's ``main()`` runs end to end at a micro size and prints its figure lines.

No timing is asserted (these machines are shared and noisy); what is checked is that the real
code paths the benchmarks drive still fit together, and that every figure line has the one
comparable format ``name: value`` or ``name: value (target OP x)``.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
FIGURE_LINE = re.compile(r"^(?P<name>[a-z0-9_]+): (?P<value>-?[0-9.e+-]+|nan|inf)( \(target (<|<=|>|>=) [0-9.e+-]+\))?$")


def load_bench(name: str) -> ModuleType:
    """Import ``bench/<name>.py`` as a module (the bench directory is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def figure_lines(output: str) -> dict[str, str]:
    """The ``name: value (target ...)`` lines of a benchmark's output, checked for format."""
    lines = [line for line in output.splitlines() if line and not line.startswith("#")]
    figures = {}
    for line in lines:
        match = FIGURE_LINE.match(line)
        assert match, f"not a figure line: {line!r}"
        figures[match["name"]] = line
    return figures


def test_embed_bench_prints_its_figures(capsys: pytest.CaptureFixture[str]) -> None:
    load_bench("embed").main(["--model-size", "tiny", "--cells", "4", "--device", "cpu"])
    figures = figure_lines(capsys.readouterr().out)
    assert {"cells", "encoder_images_per_s", "pipeline_cells_per_s", "embed_efficiency", "render_cpu_ms_per_cell",
            "render_cpu_ms_per_cell_gdal", "projected_feed_cells_per_s_16_cores"} <= figures.keys()
    assert figures["embed_efficiency"].endswith("(target >= 0.9)")


def test_fetch_bench_prints_its_figures(capsys: pytest.CaptureFixture[str]) -> None:
    load_bench("fetch").main(["--tiles", "12", "--serial-tiles", "3", "--latency-ms", "1", "--workers", "4"])
    figures = figure_lines(capsys.readouterr().out)
    assert {"fetch_speedup", "failed_tiles", "rerun_downloaded", "rerun_time_fraction"} <= figures.keys()
    assert figures["failed_tiles"] == "failed_tiles: 0 (target <= 0)"
    assert figures["rerun_downloaded"] == "rerun_downloaded: 0 (target <= 0)"


def test_query_bench_prints_its_figures(capsys: pytest.CaptureFixture[str]) -> None:
    load_bench("query").main(["--sizes", "64,144", "--ratio-cells", "64", "--hours", "2"])
    figures = figure_lines(capsys.readouterr().out)
    assert {"cells_per_s_64", "peak_rss_gib_144", "rss_growth", "rgb_cost_ratio", "series_cost_ratio",
            "series_per_hour_cost_ratio"} <= figures.keys()
    assert figures["peak_rss_gib_64"].endswith("(target < 2)")
    # the released-size model's text query, loaded as `soundmap query` loads it (at the largest size)
    assert figures["query_peak_rss_gib_full_model"].endswith("(target <= 1.5)")


def test_estimate_bench_prints_its_figures(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rates = tmp_path / "rates.json"
    rates.write_text(json.dumps({"device": "cpu", "encoder_images_per_s": 100.0, "render_s_per_cell": 0.01,
                                 "render_threads": 2, "fusion_cells_per_s": 1000.0, "fetch_s_per_tile": 0.002}))
    load_bench("estimate").main(["--model-size", "tiny", "--cells", "2", "--rates", str(rates)])
    figures = figure_lines(capsys.readouterr().out)
    assert figures["cells_ratio"] == "cells_ratio: 1"
    assert figures["tiles_ratio"] == "tiles_ratio: 1"
    assert figures["estimate_error"].endswith("(target <= 0.30)")


def test_explore_bench_prints_its_figures(capsys: pytest.CaptureFixture[str]) -> None:
    load_bench("explore").main(["--sizes", "400", "--latency-cells", "400", "--queries", "1",
                                "--text-tower", "tiny"])
    figures = figure_lines(capsys.readouterr().out)
    assert {"query_first_tile_s", "query_cost_ratio", "tile_p95_ms", "peak_rss_gib_400", "rss_growth"} <= figures.keys()
    assert figures["tile_p95_ms"].endswith("(target <= 50)")
    assert figures["query_cost_ratio"].endswith("(target <= 1.5)")
