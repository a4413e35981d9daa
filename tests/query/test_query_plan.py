"""Query planning: option parsing, metadata settings, query building, output checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from soundmap.errors import InputError
from soundmap.query.plan import (
    MetadataSetting,
    OutputPlan,
    QueryOptions,
    QuerySpec,
    build_queries,
    build_settings,
    check_outputs,
    check_score,
    make_plan,
    model_components,
    parse_hours,
    parse_months,
)

ALL = frozenset({"audio_source", "caption_source", "latlon", "month", "hour"})


def test_hours_accept_values_lists_and_ranges_in_order_without_duplicates() -> None:
    assert parse_hours(["20"]) == [20]
    assert parse_hours(["0-23"]) == list(range(24))
    assert parse_hours(["6,12", "18", "12"]) == [6, 12, 18]
    assert parse_months(["12", "1-2"]) == [12, 1, 2]


@pytest.mark.parametrize("values, message", [
    (["25"], "--hour 25 is out of range"),
    (["-1"], "--hour -1 is out of range"),
    (["noon"], "expects integers"),
    (["5-3"], "runs backwards"),
])
def test_bad_hours_are_one_line_input_errors(values: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_hours(values)


def test_month_13_and_0_are_rejected() -> None:
    for bad in ("13", "0"):
        with pytest.raises(InputError, match="out of range; use 1..12"):
            parse_months([bad])


def test_series_is_the_product_of_months_and_hours_with_sources_canonicalised() -> None:
    settings = build_settings(months=[1, 7], hours=[6, 18], audio_source="inat", caption_source="QWEN",
                              latlon=None, components=ALL)
    assert [(s.month, s.hour) for s in settings] == [(1, 6), (1, 18), (7, 6), (7, 18)]
    assert {s.audio_source for s in settings} == {"iNat"}
    assert {s.caption_source for s in settings} == {"qwen"}
    assert all(s.latlon for s in settings)  # default: used when the model takes it


def test_omitted_components_are_dropped_and_latlon_can_be_switched_off() -> None:
    (setting,) = build_settings(months=[], hours=[], audio_source=None, caption_source=None, latlon=False,
                                components=ALL)
    assert setting == MetadataSetting()
    assert setting.label() == "no metadata"
    assert setting.as_dict() == {}


def test_metadata_free_model_rejects_given_components_but_ignores_default_latlon() -> None:
    (setting,) = build_settings(months=[], hours=[], audio_source=None, caption_source=None, latlon=None,
                                components=frozenset())
    assert not setting.latlon
    with pytest.raises(InputError, match="does not take hour"):
        build_settings(months=[], hours=[20], audio_source=None, caption_source=None, latlon=None,
                       components=frozenset())


def test_unknown_source_names_are_rejected() -> None:
    with pytest.raises(InputError, match="unknown --audio-source 'radio'"):
        build_settings(months=[], hours=[], audio_source="radio", caption_source=None, latlon=None, components=ALL)


def test_setting_keys_differ_per_setting_and_are_stable() -> None:
    a, b = MetadataSetting(hour=1, latlon=True), MetadataSetting(hour=2, latlon=True)
    assert a.key() != b.key()
    assert a.key() == MetadataSetting(hour=1, latlon=True).key()


def test_model_components_read_reference_spellings() -> None:
    class Config:
        metadata = ("latlong", "month", "time", "asource", "tsource")

    class Model:
        config = Config()

    assert model_components(Model()) == ALL


def test_each_text_and_audio_is_a_query_unless_combined(tmp_path: Path) -> None:
    a1, a2 = tmp_path / "a1.wav", tmp_path / "a2.wav"
    a1.write_bytes(b"x")
    a2.write_bytes(b"x")
    assert build_queries(["birds"], [a1]) == [QuerySpec(text="birds"), QuerySpec(audio=a1)]
    assert build_queries(["birds", "rain"], [a1, a2], combine=True) == [
        QuerySpec(text="birds", audio=a1), QuerySpec(text="rain", audio=a2)]
    assert build_queries(["birds"], [a1, a2], combine=True) == [
        QuerySpec(text="birds", audio=a1), QuerySpec(text="birds", audio=a2)]
    assert QuerySpec(text="birds", audio=a1).label == "audio: a1.wav + text: birds"


def test_query_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="at least one --text or --audio"):
        build_queries([], [])
    with pytest.raises(InputError, match="does not exist"):
        build_queries([], [tmp_path / "missing.wav"])
    with pytest.raises(InputError, match="needs both --text and --audio"):
        build_queries(["x"], [], combine=True)
    files = []
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.wav").write_bytes(b"x")
        files.append(tmp_path / f"{name}.wav")
    with pytest.raises(InputError, match="got 2 texts and 3 audio files"):
        build_queries(["x", "y"], files, combine=True)


def test_output_checks() -> None:
    out = OutputPlan(out=Path("m.tif"), rgb=True)
    with pytest.raises(InputError, match="exactly three queries"):
        check_outputs(out, queries=2, settings=1, probabilistic=True)
    check_outputs(out, queries=3, settings=1, probabilistic=True)
    with pytest.raises(InputError, match="--gif animates a series"):
        check_outputs(OutputPlan(out=Path("m.tif"), gif=True), queries=1, settings=1, probabilistic=True)
    with pytest.raises(InputError, match="probabilistic"):
        check_outputs(OutputPlan(out=Path("m.tif"), uncertainty=True), queries=1, settings=1, probabilistic=False)
    with pytest.raises(InputError, match="ending in .tif"):
        check_outputs(OutputPlan(out=Path("m.png")), queries=1, settings=1, probabilistic=True)
    with pytest.raises(InputError, match="--normalize"):
        check_outputs(OutputPlan(out=Path("m.tif"), normalize="zscore"), queries=1, settings=1, probabilistic=True)


def test_score_defaults_to_the_model_and_csd_needs_a_probabilistic_model() -> None:
    assert check_score(None, probabilistic=True, default="csd") == "csd"
    assert check_score("COSINE", probabilistic=True, default="csd") == "cosine"
    with pytest.raises(InputError, match="csd needs a probabilistic"):
        check_score("csd", probabilistic=False, default="cosine")


def test_output_file_names_derive_from_out() -> None:
    out = OutputPlan(out=Path("/x/map.tif"))
    assert out.norm_path == Path("/x/map_norm.tif")
    assert out.uncertainty_path == Path("/x/map_uncertainty.tif")
    assert out.rgb_path(0, 1) == Path("/x/map_rgb.tif")
    assert out.rgb_path(1, 24) == Path("/x/map_rgb_t02.tif")
    assert out.gif_path(0, 1) == Path("/x/map.gif")
    assert out.gif_path(2, 3) == Path("/x/map_q3.gif")


def test_plan_orders_bands_query_major() -> None:
    plan = make_plan(QueryOptions(out="m.tif", texts=("a", "b"), hours=("1-3",)))
    assert plan.band_count == 6
    assert [plan.band_index(q, s) for q in range(2) for s in range(3)] == [1, 2, 3, 4, 5, 6]
