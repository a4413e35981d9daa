"""``soundmap estimate``: exact counts, the time formulas (checked against numbers worked out by
hand), the rates file and cache, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from soundmap.cli.main import run
from soundmap.errors import ConfigError
from soundmap.estimate import (FetchAssumptions, Rates, count_grid_tiles, embed_seconds, estimate,
                               fetch_seconds, machine_rates, query_seconds, rates_cache_path)

BBOX = "10.0,50.0,10.3,50.15"


def rates(**changes: object) -> Rates:
    values = dict(device="cpu", encoder_images_per_s=4.0, render_s_per_cell=0.05, render_threads=4,
                  fusion_cells_per_s=500.0, fetch_s_per_tile=0.01, query_io_s_per_cell_band=4e-6,
                  query_fixed_s=1.0)
    values.update(changes)
    return Rates(**values)  # type: ignore[arg-type]


def write_rates(path: Path, value: Rates) -> Path:
    path.write_text(json.dumps(value.to_dict()))
    return path


def test_tile_count_is_exactly_the_fetch_plan() -> None:
    from soundmap.geo.bbox import parse_bbox
    from soundmap.geo.grid import make_grid
    from soundmap.geo.tileplan import tiles_for_grid
    from soundmap.tiles.sources import resolve_source

    source = resolve_source("s2cloudless")
    grid = make_grid(parse_bbox(BBOX), "sentinel", 1)
    z, tiles = tiles_for_grid(grid, source)
    assert count_grid_tiles(grid, source) == (z, len(tiles))


def test_fetch_time_is_the_slowest_of_bandwidth_latency_and_local_cost() -> None:
    # 100 tiles of 20 kB over 8 Mbit/s: 2e6 B × 8 / 8e6 = 2.0 s; latency (0.1 + 0.01) × 100 / 10 = 1.1 s;
    # local 100 × 0.01 = 1.0 s  →  2.0 s (bandwidth-bound)
    assert fetch_seconds(100, 2e6, rates(), FetchAssumptions(bandwidth_mbps=8, latency_ms=100, workers=10)) == pytest.approx(2.0)
    # same tiles, 1 Gbit/s, one worker: latency 100 × 0.11 = 11 s
    assert fetch_seconds(100, 2e6, rates(), FetchAssumptions(bandwidth_mbps=1000, latency_ms=100, workers=1)) == pytest.approx(11.0)
    # 64 workers, no latency: local cost 1.0 s wins over latency 100 × 0.01 / 64
    assert fetch_seconds(100, 2e6, rates(), FetchAssumptions(bandwidth_mbps=1000, latency_ms=0, workers=64)) == pytest.approx(1.0)
    assert fetch_seconds(0, 0, rates(), FetchAssumptions()) == 0.0


def test_embed_time_adds_render_on_cpu_and_overlaps_it_on_gpu() -> None:
    # CPU: 100 / 4 + 100 × 0.05 = 25 + 5 = 30 s
    assert embed_seconds(100, rates()) == pytest.approx(30.0)
    # GPU: max(100 / 400, 100 × 0.05 / 4) = max(0.25, 1.25) = 1.25 s
    assert embed_seconds(100, rates(device="cuda", encoder_images_per_s=400.0)) == pytest.approx(1.25)


def test_query_time_is_one_fusion_per_step_shared_by_the_queries() -> None:
    # 1.0 s fixed + 1000 cells × 24 steps / 500 = 48 s + 1000 × 3 queries × 24 steps × 4e-6 = 0.288 s
    assert query_seconds(1000, rates(), queries=3, steps=24) == pytest.approx(49.288)
    # 1.0 + 1000 / 500 + 1000 × 4e-6 = 3.004 s
    assert query_seconds(1000, rates(), queries=1, steps=1) == pytest.approx(3.004)


def test_cli_prints_counts_and_hours_from_a_rates_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from soundmap.geo.bbox import parse_bbox
    from soundmap.geo.grid import make_grid
    from soundmap.geo.tileplan import tiles_for_grid
    from soundmap.tiles.sources import resolve_source

    path = write_rates(tmp_path / "rates.json", rates())
    code = run(["estimate", "--bbox", BBOX, "--zoom", "1,5", "--rates", str(path), "--source", "s2cloudless"])
    out = capsys.readouterr().out
    assert code == 0
    source = resolve_source("s2cloudless")
    for zoom in (1, 5):
        grid = make_grid(parse_bbox(BBOX), "sentinel", zoom)
        z, tiles = tiles_for_grid(grid, source)
        expected = f"zoom {zoom}: {grid.rows} × {grid.cols} = {grid.rows * grid.cols:,} cells; {len(tiles):,} tiles (z{z})"
        assert expected in out
    assert "total:" in out


def test_library_estimate_matches_the_formulas(tmp_path: Path) -> None:
    path = write_rates(tmp_path / "rates.json", rates())
    network = FetchAssumptions(bandwidth_mbps=100, latency_ms=200, workers=8)
    result = estimate(BBOX, [1], source="s2cloudless", rates_file=path, fetch=network, steps=24, queries=3)
    zoom = result.zooms[0]
    assert zoom.bytes == zoom.tiles * 20000  # s2cloudless: bytes_per_tile 20000 in tiles.yaml
    assert zoom.embed_s == pytest.approx(zoom.cells / 4.0 + zoom.cells * 0.05)
    assert zoom.query_s == pytest.approx(1.0 + zoom.cells * 24 / 500 + zoom.cells * 72 * 4e-6)
    assert zoom.fetch_s == pytest.approx(max(zoom.bytes * 8 / 100e6, zoom.tiles * 0.21 / 8, zoom.tiles * 0.01))
    assert result.total_s == pytest.approx(zoom.fetch_s + zoom.embed_s + zoom.query_s)


def test_cached_rates_are_used_without_calibrating(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from soundmap import estimate as module

    device = torch.device("cpu")
    rates().save(rates_cache_path(device))

    def fail(*args: object, **kwargs: object) -> Rates:
        raise AssertionError("calibrated although rates were cached")

    monkeypatch.setattr(module, "calibrate", fail)
    assert machine_rates(device, None).encoder_images_per_s == 4.0


def test_a_too_large_bbox_is_counted_with_a_note(tmp_path: Path) -> None:
    path = write_rates(tmp_path / "rates.json", rates())
    result = estimate("-100,-50,100,50", [5], source="s2cloudless", rates_file=path, stride=200_000.0)
    assert result.zooms[0].cells > 0
    assert any("too large for one grid" in note for note in result.notes)


def test_bad_rates_file_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rates.json"
    path.write_text('{"device": "cpu"}')
    assert run(["estimate", "--bbox", BBOX, "--rates", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("soundmap: error: rates file")
    with pytest.raises(ConfigError):
        Rates.load(tmp_path / "absent.json")


@pytest.mark.parametrize("args", [["--bbox", "10,50,9,51"], ["--bbox", BBOX, "--zoom", "2"],
                                  ["--bbox", BBOX, "--workers", "0"]])
def test_bad_input_is_a_one_line_error(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_rates(tmp_path / "rates.json", rates())
    assert run(["estimate", *args, "--rates", str(path)]) == 2
    assert capsys.readouterr().err.startswith("soundmap: error:")
