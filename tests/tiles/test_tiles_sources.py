"""tiles.yaml: shipped sources, URL templates, merging/overrides, validation, and --source parsing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from soundmap.errors import ConfigError, InputError
from soundmap.tiles.sources import (TileSource, fill_template, load_config, load_sources, packaged_config_path,
                                    quadkey, resolve_source)

REPO = Path(__file__).resolve().parents[2]
EOX = "https://tiles.maps.eox.at/wmts/1.0.0/{layer}/default/g/{{z}}/{{y}}/{{x}}.jpg"


# ----------------------------------------------------------------------------- shipped sources

def test_packaged_tiles_yaml_ships_every_eox_year_in_zyx_order() -> None:
    sources = load_sources()
    layers = {"s2cloudless-2016": "s2cloudless_3857", **{f"s2cloudless-{y}": f"s2cloudless-{y}_3857"
                                                          for y in (2018, 2019, 2020, 2021, 2022, 2023, 2024)}}
    for name, layer in layers.items():
        src = sources[name]
        assert src.url == EOX.format(layer=layer)
        assert (src.kind, src.family, src.tile_size, src.resolution_m) == ("xyz", "sentinel", 256, 10.0)
        assert "EOX" in src.attribution and src.licence
    assert "CC BY 4.0" == sources["s2cloudless-2016"].licence
    assert "CC BY-NC-SA 4.0" in sources["s2cloudless-2020"].licence


def test_default_is_the_2020_layer_the_psm_models_were_trained_on() -> None:
    config = load_config()
    assert config.default == "s2cloudless"
    default = config.sources["s2cloudless"]
    assert default.url == config.sources["s2cloudless-2020"].url
    assert default.psm_training_layer and not config.sources["s2cloudless-2023"].psm_training_layer
    assert "trained" in packaged_config_path().read_text()
    assert resolve_source(None).name == "s2cloudless"


def test_bing_is_a_quadkey_source_with_key_env_and_retirement_note() -> None:
    sources = load_sources()
    bing = sources["bing"]
    assert bing.kind == "quadkey" and bing.family == "bing" and bing.api_key_env == "BING_MAPS_KEY"
    assert "2028" in bing.licence and "Azure" in bing.note
    assert bing.metadata_url == ("https://dev.virtualearth.net/REST/v1/Imagery/Metadata/Aerial"
                                 "?key={api_key}&uriScheme=https")
    assert sources["esri-world-imagery"].url.endswith("/tile/{z}/{y}/{x}")


def test_top_level_tiles_yaml_is_the_packaged_file() -> None:
    assert (REPO / "tiles.yaml").resolve() == packaged_config_path().resolve()


def test_eox_url_fills_z_then_row_then_column() -> None:
    src = load_sources()["s2cloudless"]
    assert src.tile_url(13, 4402, 2687).endswith("/s2cloudless-2020_3857/default/g/13/2687/4402.jpg")


# ----------------------------------------------------------------------------- URL templates

def test_quadkey_matches_the_bing_documentation_example() -> None:
    # Bing Maps Tile System: tile x=3 (011), y=5 (101) at level 3 -> digits (x_bit + 2*y_bit)
    # per level from the top: (0+2, 1+0, 1+2) = "213".
    assert quadkey(3, 3, 5) == "213"
    assert quadkey(1, 1, 0) == "1" and quadkey(1, 0, 1) == "2"


def test_template_placeholders() -> None:
    assert fill_template("http://h/{z}/{x}/{-y}.png", 2, 3, 1) == "http://h/2/3/2.png"  # TMS row: 4-1-1
    assert fill_template("http://h/a{q}.jpeg", 3, 3, 5) == "http://h/a213.jpeg"
    assert fill_template("http://h/{quadkey}", 3, 3, 5) == "http://h/213"
    subs = ("t0", "t1", "t2", "t3")
    assert fill_template("http://{s}.h/{z}", 5, 1, 2, subdomains=subs) == "http://t3.h/5"
    assert fill_template("http://h/{z}?k={api_key}", 1, 0, 0, api_key="K") == "http://h/1?k=K"


def test_cache_key_follows_the_url_not_the_name() -> None:
    sources = load_sources()
    assert sources["s2cloudless"].cache_key == sources["s2cloudless-2020"].cache_key
    assert sources["s2cloudless-2020"].cache_key != sources["s2cloudless-2021"].cache_key


def test_source_round_trips_through_a_dict() -> None:
    src = load_sources()["bing"]
    assert TileSource.from_dict(src.to_dict()) == src


def test_api_key_comes_from_the_named_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    bing = load_sources()["bing"]
    monkeypatch.delenv("BING_MAPS_KEY", raising=False)
    with pytest.raises(ConfigError, match="BING_MAPS_KEY"):
        bing.api_key()
    monkeypatch.setenv("BING_MAPS_KEY", "secret")
    azure = load_sources()["azure-imagery"]
    assert bing.api_key() == "secret"
    monkeypatch.setenv("AZURE_MAPS_KEY", "az")
    assert "subscription-key=az" in azure.tile_url(2, 1, 1, api_key=azure.api_key())
    assert "az" not in azure.cache_key


# ----------------------------------------------------------------------------- overrides

def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_user_file_merges_by_name_and_tiles_config_wins(_isolated_config: Path, tmp_path: Path) -> None:
    _write(_isolated_config / "soundmap" / "tiles.yaml", {"sources": {
        "s2cloudless": {"headers": {"Referer": "https://example.org"}},
        "mine": {"kind": "xyz", "url": "https://example.org/{z}/{x}/{y}.png", "family": "bing",
                 "attribution": "me", "licence": "CC0"}}})
    sources = load_sources()
    assert dict(sources["s2cloudless"].headers) == {"Referer": "https://example.org"}
    assert sources["s2cloudless"].url.endswith("s2cloudless-2020_3857/default/g/{z}/{y}/{x}.jpg")  # untouched
    assert sources["mine"].family == "bing" and sources["mine"].resolution_m == 0.6  # family gsd by default
    explicit = _write(tmp_path / "extra.yaml", {"default": "mine", "sources": {"mine": {"max_zoom": 17}}})
    config = load_config(explicit)
    assert config.default == "mine" and config.sources["mine"].max_zoom == 17
    assert config.files[-1] == explicit


@pytest.mark.parametrize(("entry", "message"), [
    ({"kind": None}, "missing required field 'kind'"),
    ({"kind": "wms"}, "kind must be one of"),
    ({"family": "landsat"}, "family must be"),
    ({"min_zoom": 10, "max_zoom": 5}, "min_zoom (10) is larger than max_zoom (5)"),
    ({"max_zoom": "high"}, "max_zoom must be an integer"),
    ({"tile_size": 0}, "tile_size must be an integer"),
    ({"resolution_m": -1}, "resolution_m must be a positive number"),
    ({"colour": "red"}, "unknown field 'colour'"),
    ({"url": "https://h/{z}/{x}.png"}, "needs {z}, {x} and {y}"),
    ({"url": "https://h/{z}/{x}/{y}/{t}.png"}, "unknown placeholder {t}"),
    ({"url": "ftp://h/{z}/{x}/{y}"}, "must start with http"),
    ({"url": "https://{s}.h/{z}/{x}/{y}"}, "no subdomains"),
    ({"url": "https://h/{z}/{x}/{y}?k={api_key}"}, "api_key_env is not set"),
    ({"api_key_env": "not a name"}, "api_key_env must be"),
    ({"kind": "quadkey"}, "needs {q} or {quadkey}"),
    ({"headers": ["User-Agent"]}, "headers must be a mapping"),
    ({"metadata_url": "ftp://h/meta"}, "metadata_url must be an http(s) URL"),
    ({"metadata_url": "https://h/meta?key={api_key}"}, "metadata_url uses {api_key} but api_key_env"),
])
def test_invalid_entries_fail_with_one_line_naming_the_field(tmp_path: Path, entry: dict, message: str) -> None:
    base = {"kind": "xyz", "url": "https://h/{z}/{x}/{y}", "family": "sentinel", "attribution": "a", "licence": "l"}
    base.update(entry)
    base = {k: v for k, v in base.items() if v is not None}  # None = leave the field out
    path = _write(tmp_path / "bad.yaml", {"sources": {"broken": base}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert message in text and "'broken'" in text and str(path) in text and "\n" not in text


def test_malformed_files_fail_with_one_line(tmp_path: Path) -> None:
    bad_yaml = tmp_path / "a.yaml"
    bad_yaml.write_text("sources: {s2: [unclosed\n")
    with pytest.raises(ConfigError, match=r"cannot parse YAML at line \d+"):
        load_config(bad_yaml)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="unknown top-level key 'source'"):
        load_config(_write(tmp_path / "b.yaml", {"source": {}}))
    with pytest.raises(ConfigError, match="default source 'ghost' is not defined"):
        load_config(_write(tmp_path / "c.yaml", {"default": "ghost"}))
    with pytest.raises(ConfigError, match="must be a mapping of fields"):
        load_config(_write(tmp_path / "d.yaml", {"sources": {"x": "https://h/{z}/{x}/{y}"}}))


# ----------------------------------------------------------------------------- --source

def test_source_as_raw_template_is_sentinel_unless_family_says_otherwise() -> None:
    src = resolve_source("https://tiles.example.org/{z}/{x}/{y}.jpg")
    assert (src.kind, src.family, src.resolution_m) == ("xyz", "sentinel", 10.0)
    assert src.spec == "https://tiles.example.org/{z}/{x}/{y}.jpg" and "tiles.example.org" in src.attribution
    assert src.tile_url(5, 1, 2) == "https://tiles.example.org/5/1/2.jpg"
    bing = resolve_source("https://t.example.org/a{q}.jpeg", family="bing")
    assert (bing.kind, bing.family, bing.resolution_m) == ("quadkey", "bing", 0.6)
    assert resolve_source("https://t.example.org/{z}/{x}/{y}", family="googleEarth").family == "googleEarth"


def test_source_as_name_with_family_override() -> None:
    assert resolve_source("esri-world-imagery").family == "bing"
    assert resolve_source("esri-world-imagery", family="googleEarth").family == "googleEarth"


def test_source_as_raster_path(tmp_path: Path) -> None:
    import rasterio
    from rasterio.transform import from_origin

    path = tmp_path / "ortho.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(400000, 5800000, 2.5, 2.5)) as dst:
        dst.write(np.zeros((3, 8, 8), dtype=np.uint8))
    src = resolve_source(str(path), family="bing")
    assert (src.kind, src.family, src.resolution_m, src.url) == ("file", "bing", 2.5, str(path.resolve()))
    assert not src.is_remote and src.cache_key.startswith("file:")
    assert resolve_source(str(path)).family == "sentinel"


@pytest.mark.parametrize(("spec", "message"), [
    ("no-such-source", "unknown --source 'no-such-source'"),
    ("/data/missing.tif", "raster file not found"),
    ("https://example.org/tiles", "URL without placeholders"),
    ("https://example.org/{z}/{x}", "needs {z}, {x} and {y}"),
    ("https://example.org/{zoom}/{x}/{y}", "unknown placeholder {zoom}"),
])
def test_bad_source_specs_are_one_line_input_errors(spec: str, message: str) -> None:
    with pytest.raises(InputError) as err:
        resolve_source(spec)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unreadable_raster_is_an_input_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not a tiff")
    with pytest.raises(InputError, match="not a raster"):
        resolve_source(str(junk))
    with pytest.raises(InputError, match="unknown imagery family"):
        resolve_source("s2cloudless", family="landsat")
