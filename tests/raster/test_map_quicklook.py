"""The ``--png`` map quick-look, rendered through ``soundmap query`` on the loopback-fetched
workspace and checked by its pixels: the composite itself with a colour triangle, the heatmap over
the region's own imagery, lat/lon ticks, a scale bar and a plain-language title."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from PIL import Image

from soundmap.cli.main import run
from soundmap.raster.preview import MapGeometry, _lonlat_ticks, colour_triangle, nice_length
from tests.fixtures.query_workspace import QueryEnv, _Built, install_models


@pytest.fixture
def imagery_env(query_env: QueryEnv, _built_query_workspace: _Built, monkeypatch: pytest.MonkeyPatch) -> QueryEnv:
    """The query workspace with the tile cache its imagery was fetched into."""
    monkeypatch.setenv("SOUNDMAP_CACHE", str(_built_query_workspace.workspace.parent / "cache"))
    install_models(_built_query_workspace.models)
    return query_env


def _png(env: QueryEnv, out: Path, *args: str) -> np.ndarray:
    code = run(["query", "--workspace", str(env.workspace), "--out", str(out), "--png", "--quiet", *args])
    assert code == 0
    with Image.open(out.with_suffix(".png")) as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


def _share_near(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 40) -> float:
    return float((np.abs(pixels - np.array(colour)).max(axis=-1) <= tolerance).mean())


def test_rgb_quicklook_is_the_composite_with_a_colour_triangle(imagery_env: QueryEnv, tmp_path: Path) -> None:
    forward = _png(imagery_env, tmp_path / "rgb.tif", "--text", "birds", "--text", "traffic", "--text", "rain",
                   "--rgb", "--hour", "20", "--score", "cosine")
    backward = _png(imagery_env, tmp_path / "bgr.tif", "--text", "rain", "--text", "traffic", "--text", "birds",
                    "--rgb", "--hour", "20", "--score", "cosine")
    height, width, _ = forward.shape
    legend = forward[:, int(width * 0.78):]  # the colour triangle sits right of the map
    for corner in ((255, 0, 0), (0, 255, 0), (0, 0, 255)):
        assert _share_near(legend, corner) > 0.0005, corner
    # One map of the composite itself: swapping the first and third query swaps red and blue in it
    # (the imagery under it is the same), and leaves green alone.
    area = (slice(int(height * 0.15), int(height * 0.85)), slice(int(width * 0.14), int(width * 0.74)))
    change = forward[area] - backward[area]
    moved = np.abs(change).sum(axis=-1) > 3
    assert moved.mean() > 0.2
    red, green, blue = (change[..., c][moved].astype(float) for c in range(3))
    assert np.corrcoef(red, blue)[0, 1] < -0.8
    assert np.abs(green).mean() < 0.2 * np.abs(red).mean()


def test_heatmap_is_drawn_over_the_regions_imagery(imagery_env: QueryEnv, _built_query_workspace: _Built,
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with_imagery = _png(imagery_env, tmp_path / "a.tif", "--text", "birds", "--hour", "6")
    monkeypatch.setenv("SOUNDMAP_CACHE", str(tmp_path / "empty-cache"))  # same models, no imagery tiles
    install_models(_built_query_workspace.models)
    without = _png(imagery_env, tmp_path / "b.tif", "--text", "birds", "--hour", "6")
    assert with_imagery.shape == without.shape
    map_area = (slice(int(with_imagery.shape[0] * 0.15), int(with_imagery.shape[0] * 0.85)),
                slice(int(with_imagery.shape[1] * 0.12), int(with_imagery.shape[1] * 0.75)))
    difference = np.abs(with_imagery[map_area] - without[map_area]).sum(axis=-1)
    assert (difference > 30).mean() > 0.2  # the imagery shows through the heatmap
    footer = slice(int(without.shape[0] * 0.95), None)
    assert not np.array_equal(with_imagery[footer], without[footer])  # "imagery not drawn" said when missing


def test_plain_language_title_and_lonlat_ticks_and_scale_bar() -> None:
    from matplotlib.figure import Figure

    from soundmap.query.engine import _MapContext, _map_title
    from soundmap.query.plan import QueryOptions, make_plan

    plan = make_plan(QueryOptions(out="m.tif", texts=("birds singing",), months=("5",), hours=("20",)))
    title = _map_title(plan, _MapContext(model_name="psm-geosound-sentinel-meta", grid=None))
    assert title == "Where “birds singing” is likely heard — May, 20:00 — model psm-geosound-sentinel-meta"
    rgb = make_plan(QueryOptions(out="m.tif", texts=("a", "b", "c"), rgb=True, hours=("0-23",)))
    assert _map_title(rgb, _MapContext("m", None)) == "Red “a”, green “b”, blue “c” — 00:00–23:00 — model m"
    assert nice_length(7200) == 1000 and nice_length(60_000) == 10_000 and nice_length(900) == 100
    geometry = MapGeometry(crs="EPSG:32632", transform=Affine(100.0, 0, 560_000, 0, -100.0, 5_550_000),
                           shape=(100, 150))
    ax = Figure().add_subplot()
    ax.set_xlim(*geometry.extent[:2])
    _lonlat_ticks(ax, geometry)
    labels = [t.get_text() for t in ax.get_xticklabels()] + [t.get_text() for t in ax.get_yticklabels()]
    assert any(label.endswith("°E") for label in labels) and any(label.endswith("°N") for label in labels)
    triangle = colour_triangle()
    assert triangle[2, 80, 0] > 0.9 and triangle[2, 80, 1] < 0.1  # red apex
    assert triangle[0, 0, 3] == 0  # transparent outside
