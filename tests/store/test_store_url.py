"""Embedding stores at an fsspec URL, through fsspec's in-process ``memory://`` filesystem (a real
fsspec URL and the real FsspecStore route in Zarr; no network): the same features as a local
store, resume, one-line errors, and a query reading the URL store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from soundmap.cli.main import run
from soundmap.errors import CacheError
from soundmap.pipeline.embed import embed_region
from soundmap.store import open_embedding_store
from soundmap.store.embeddings import (STORE_URL_ENV, EmbeddingStore, embedding_store_location,
                                       embedding_store_path, record_store_url, store_exists)
from tests.fixtures.embed_workspace import EMBED_ZOOM as Z

#: Attributes new at every creation: the only ones a URL store and a local store may differ in.
PER_CREATION = {"store_id", "created"}


@pytest.fixture
def store_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh ``memory://`` prefix (the memory filesystem is per process), removed afterwards."""
    import fsspec

    monkeypatch.delenv(STORE_URL_ENV, raising=False)
    url = f"memory://soundmap-test-{uuid.uuid4().hex}/embeddings"
    yield url
    fs = fsspec.filesystem("memory")
    root = url.removeprefix("memory://").split("/")[0]
    if fs.exists(f"/{root}"):
        fs.rm(f"/{root}", recursive=True)


def _embed(workspace: Path, model, **kwargs) -> object:
    return embed_region(workspace, Z, model, batch_size=3, workers=2, progress=False, dtype="float32",
                        chunk_cells=2, **kwargs)


def _same_store(a: EmbeddingStore, b: EmbeddingStore) -> None:
    np.testing.assert_array_equal(np.asarray(a.features[:]), np.asarray(b.features[:]))
    np.testing.assert_array_equal(a.state_array(), b.state_array())
    assert {k: v for k, v in a.attrs.items() if k not in PER_CREATION} == \
        {k: v for k, v in b.attrs.items() if k not in PER_CREATION}
    assert a.features.chunks == b.features.chunks and a.features.dtype == b.features.dtype


def test_embedding_into_a_url_store_equals_the_local_store(fetched_workspace: Path, tiny_model,
                                                           store_url: str) -> None:
    _embed(fetched_workspace, tiny_model)
    report = _embed(fetched_workspace, tiny_model, store_url=store_url)
    assert report.store_path == f"{store_url}/zoom{Z}.zarr" and report.embedded == 8
    url_store = open_embedding_store(fetched_workspace, Z, model=tiny_model, store_url=store_url)
    assert url_store.path == report.store_path and store_exists(url_store.path)
    assert url_store.valid_mask().all()
    _same_store(url_store, open_embedding_store(fetched_workspace, Z))
    assert not Path(f"{store_url}/zoom{Z}.zarr").exists()  # nothing written to a local "memory:" dir


def test_a_url_store_resumes_where_an_interrupted_run_stopped(fetched_workspace: Path, tiny_model,
                                                             store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _embed(fetched_workspace, tiny_model)
    reference = open_embedding_store(fetched_workspace, Z)
    original = type(tiny_model).encode_image.__get__(tiny_model)
    calls: list[int] = []

    def dies_on_second_batch(images, zoom):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(images, zoom)

    monkeypatch.setattr(tiny_model, "encode_image", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        _embed(fetched_workspace, tiny_model, store_url=store_url)
    kept = int(open_embedding_store(fetched_workspace, Z, store_url=store_url).valid_mask().sum())
    assert 0 < kept < 8
    monkeypatch.setattr(tiny_model, "encode_image", original)
    report = _embed(fetched_workspace, tiny_model, store_url=store_url)
    assert (report.already_done, report.embedded) == (kept, 8 - kept)
    _same_store(open_embedding_store(fetched_workspace, Z, store_url=store_url), reference)


def test_overwrite_on_a_url_replaces_the_store(fetched_workspace: Path, tiny_model, other_tiny_model,
                                               store_url: str) -> None:
    _embed(fetched_workspace, tiny_model, store_url=store_url)
    first = open_embedding_store(fetched_workspace, Z, store_url=store_url).attrs["store_id"]
    with pytest.raises(CacheError, match="--overwrite"):
        _embed(fetched_workspace, other_tiny_model, store_url=store_url)
    _embed(fetched_workspace, other_tiny_model, store_url=store_url, overwrite=True)
    replaced = open_embedding_store(fetched_workspace, Z, model=other_tiny_model, store_url=store_url)
    assert replaced.attrs["store_id"] != first and replaced.valid_mask().all()


def test_a_missing_url_store_is_a_one_line_cache_error(tmp_path: Path, store_url: str) -> None:
    with pytest.raises(CacheError) as caught:
        open_embedding_store(tmp_path, 3, store_url=store_url)
    message = str(caught.value)
    assert "\n" not in message and f"{store_url}/zoom3.zarr" in message and "soundmap embed" in message
    with pytest.raises(CacheError, match="no embeddings at memory://"):
        EmbeddingStore.open(f"{store_url}/zoom3.zarr")
    with pytest.raises(CacheError, match="fsspec URL"):
        open_embedding_store(tmp_path, 1, store_url="not-a-url")
    with pytest.raises(CacheError, match="nosuchscheme"):
        open_embedding_store(tmp_path, 1, store_url="nosuchscheme://bucket/x")


def test_the_store_url_is_found_from_the_argument_the_environment_or_the_workspace(
        tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    workspace = tmp_path / "ws"
    assert embedding_store_location(workspace, 1) == embedding_store_path(workspace, 1)
    record_store_url(workspace, store_url + "/")
    assert embedding_store_location(workspace, 1) == f"{store_url}/zoom1.zarr"
    monkeypatch.setenv(STORE_URL_ENV, "memory://elsewhere")
    assert embedding_store_location(workspace, 5) == "memory://elsewhere/zoom5.zarr"
    assert embedding_store_location(workspace, 5, "memory://given") == "memory://given/zoom5.zarr"
    monkeypatch.delenv(STORE_URL_ENV)
    record_store_url(workspace, None)
    assert embedding_store_location(workspace, 3) == embedding_store_path(workspace, 3)


def test_cli_embed_store_url_is_recorded_and_query_reads_it(fetched_workspace: Path, tiny_model, store_url: str,
                                                            tmp_path: Path, clap_files: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import rasterio

    monkeypatch.setenv("SOUNDMAP_CLAP_DIR", str(clap_files))  # the tiny model's text branch
    base = ["--workspace", str(fetched_workspace), "--quiet"]
    assert run(["embed", *base, "--batch-size", "2", "--workers", "2", "--dtype", "float32"]) == 0
    assert run(["query", *base, "--text", "birds singing", "--no-fused-cache",
                "--out", str(tmp_path / "local.tif")]) == 0
    assert run(["embed", *base, "--batch-size", "2", "--workers", "2", "--dtype", "float32",
                "--store-url", store_url]) == 0
    assert store_exists(f"{store_url}/zoom{Z}.zarr")
    assert run(["query", *base, "--text", "birds singing", "--no-fused-cache",  # found via the workspace
                "--out", str(tmp_path / "url.tif")]) == 0
    recorded = open_embedding_store(fetched_workspace, Z)
    assert recorded.path == f"{store_url}/zoom{Z}.zarr"
    _same_store(recorded, EmbeddingStore.open(embedding_store_path(fetched_workspace, Z)))
    with rasterio.open(tmp_path / "local.tif") as local, rasterio.open(tmp_path / "url.tif") as remote:
        assert local.transform == remote.transform and local.crs == remote.crs
        np.testing.assert_array_equal(local.read(), remote.read())


def test_cli_embed_rejects_a_store_url_that_is_no_url_in_one_line(fetched_workspace: Path, tiny_model,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert run(["embed", "--workspace", str(fetched_workspace), "--quiet", "--store-url", "bucket/path"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("soundmap: error:")]
    assert len(errors) == 1 and "fsspec URL" in errors[0]
    assert embedding_store_location(fetched_workspace, Z) == embedding_store_path(fetched_workspace, Z)
