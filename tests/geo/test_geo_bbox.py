"""Bad bboxes stop the run with a one-line InputError; good ones parse exactly."""

from __future__ import annotations

import pytest

from soundmap.errors import InputError
from soundmap.geo.bbox import BBox, parse_bbox


def test_parse_bbox_reads_four_numbers_with_commas_or_spaces() -> None:
    assert parse_bbox("13.3,52.4,13.5,52.6") == BBox(13.3, 52.4, 13.5, 52.6)
    assert parse_bbox(" -125, 24 ,-66, 50 ") == BBox(-125.0, 24.0, -66.0, 50.0)
    assert parse_bbox("1 2 3 4") == BBox(1.0, 2.0, 3.0, 4.0)
    assert parse_bbox(BBox(1, 2, 3, 4).to_text()) == BBox(1, 2, 3, 4)


@pytest.mark.parametrize(("text", "needle"), [
    ("13.3,52.4,abc,52.6", "not a number"),
    ("13.3,52.4,13.5", "4 numbers"),
    ("13.3,52.4,13.5,52.6,1", "4 numbers"),
    ("", "west,south,east,north"),
    ("13.5,52.4,13.3,52.6", "west"),          # W > E
    ("13.3,52.4,13.3,52.6", "west"),          # W == E
    ("13.3,52.6,13.5,52.4", "south"),         # S > N
    ("13.3,52.4,13.5,52.4", "south"),         # S == N
    ("10,80,11,86", "85"),                    # |lat| > 85
    ("10,-86,11,-80", "85"),
    ("-181,0,1,1", "-180..180"),
    ("nan,0,1,1", "finite"),
    ("0,0,inf,1", "finite"),
])
def test_bad_bbox_is_a_one_line_input_error(text: str, needle: str) -> None:
    with pytest.raises(InputError) as info:
        parse_bbox(text)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message and message.strip() == message and message


def test_bbox_constructor_validates_too() -> None:
    with pytest.raises(InputError, match="antimeridian"):
        BBox(170.0, 0.0, -170.0, 1.0)
