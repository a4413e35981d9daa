"""The image encoder's effective precision is part of a store's identity: fp32 and bf16
features never mix in one store (one-line CacheError, like the other invalidations)."""

from __future__ import annotations

from pathlib import Path

import pytest

from soundmap.errors import CacheError, InputError
from soundmap.geo.grid import Grid
from soundmap.models.soundscape import SoundscapeModel
from soundmap.pipeline.embed import embed_region
from soundmap.store import open_embedding_store
from soundmap.store.embeddings import EmbeddingStore, StoreIdentity, embedding_store_path
from tests.fixtures.embed_workspace import EMBED_ZOOM as Z


def _identity(precision: str) -> StoreIdentity:
    grid = Grid(crs="EPSG:3857", x0=0.0, y0=0.0, stride=2560.0, footprint=2560.0, rows=4, cols=4, zoom=1,
                family="sentinel")
    return StoreIdentity(model_name="tiny", weights_sha256="a" * 64, preprocess_version="1", model_family="sentinel",
                         source_name="loopback", source_key="xyz:abc", zoom=1, grid=grid.to_dict(),
                         precision=precision)


def test_precision_is_recorded_and_a_mismatch_is_one_line(tmp_path: Path) -> None:
    path = embedding_store_path(tmp_path, 1)
    store = EmbeddingStore.create(path, _identity("fp32"), rows=4, cols=4, feature_dim=3)
    assert store.attrs["precision"] == "fp32" and store.identity.precision == "fp32"
    with pytest.raises(CacheError) as err:
        EmbeddingStore.create_or_resume(path, _identity("bf16"), rows=4, cols=4, feature_dim=3)
    message = str(err.value)
    assert "\n" not in message and "fp32 precision, not bf16" in message and "--overwrite" in message


def test_a_store_without_recorded_precision_is_never_resumed() -> None:
    attrs = _identity("fp32").to_attrs()
    del attrs["precision"]
    old = StoreIdentity.from_attrs(attrs)
    assert old.precision == "unrecorded"
    assert "unrecorded precision, not fp32" in old.difference(_identity("fp32"))


@pytest.mark.filterwarnings("ignore:CUDA is not available")   # the bf16 branch asks for CUDA autocast on CPU
def test_embed_region_records_precision_and_refuses_to_mix(fetched_workspace: Path, tiny_model,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    report = embed_region(fetched_workspace, Z, tiny_model, batch_size=8, progress=False, precision="fp32")
    assert report.embedded == report.total_cells and tiny_model.precision == "fp32"
    assert open_embedding_store(fetched_workspace, Z).attrs["precision"] == "fp32"
    tiny_model.set_precision("auto")                 # CPU: auto is fp32 too, so the store resumes
    assert embed_region(fetched_workspace, Z, tiny_model, batch_size=8, progress=False).embedded == 0
    monkeypatch.setattr(SoundscapeModel, "image_precision", property(lambda self: "bf16"))   # as on a GPU
    with pytest.raises(CacheError, match="fp32 precision, not bf16"):
        embed_region(fetched_workspace, Z, tiny_model, batch_size=8, progress=False)
    embed_region(fetched_workspace, Z, tiny_model, batch_size=8, progress=False, overwrite=True)
    assert open_embedding_store(fetched_workspace, Z).attrs["precision"] == "bf16"
    with pytest.raises(InputError, match="--precision"):
        embed_region(fetched_workspace, Z, tiny_model, progress=False, precision="fp16")
