"""Workflow helpers: which zoom a query uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from soundmap.errors import CacheError, InputError
from soundmap.pipeline.query import choose_zoom, embedded_zooms


def _fake_store(workspace: Path, zoom: int) -> None:
    (workspace / "embeddings" / f"zoom{zoom}.zarr").mkdir(parents=True)
    (workspace / "embeddings" / f"zoom{zoom}.zarr" / "zarr.json").write_text("{}")


def test_the_single_embedded_zoom_is_the_default(tmp_path: Path) -> None:
    _fake_store(tmp_path, 3)
    assert embedded_zooms(tmp_path) == [3]
    assert choose_zoom(tmp_path, None) == 3
    assert choose_zoom(tmp_path, 5) == 5  # an explicit zoom is checked when its store is opened


def test_several_zooms_need_zoom_and_none_needs_embed(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="run `soundmap embed` first"):
        choose_zoom(tmp_path, None)
    _fake_store(tmp_path, 1)
    _fake_store(tmp_path, 5)
    with pytest.raises(InputError, match="zooms 1, 5; pick one with --zoom"):
        choose_zoom(tmp_path, None)
