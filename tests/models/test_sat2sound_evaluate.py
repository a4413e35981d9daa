"""``soundmap evaluate --hf-dataset MVRL/GeoSound`` on a tiny Parquet split in the dataset's layout,
served by the loopback Hub: the authors' protocol (test split, zoom 1, mel crop 0, metadata from the
row), R@10 % and median rank both ways, printed beside PSM's published figures."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import soundmap as sm
from soundmap.cli.main import run
from soundmap.train.metrics import retrieval_metrics
from tests.fixtures.hf_server import hf_server  # noqa: F401  (fixture)
from tests.fixtures.sat2sound import build_tiny_sat2sound, save_tiny_t5

ROWS = 12
DATES = ["2021-05-03 13:20:00", "2019-12-24", "not a date", "2020-07-01 06:00:00"] * 3
SOURCES = ["yfcc", "iNat", "aporee", "freesound"] * 3
CAPTION_SOURCES = ["meta", "qwen", "pengi"] * 4
CAPTIONS = ["birds singing", "traffic noise", "waves on a beach", "rain", "wind", "the city"] * 2


def _split_bytes(seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, (ROWS, 300, 300, 3), dtype=np.uint8)
    mel = rng.standard_normal((ROWS, 5, 1, 1001, 64)).astype(np.float32) * 10 - 40
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        encoded.append({"bytes": buffer.getvalue(), "path": None})
    mel_type = pa.list_(pa.list_(pa.list_(pa.list_(pa.float32()))))
    table = pa.table({
        "sample_id": [f"s{i}" for i in range(ROWS)], "source": SOURCES,
        "latitude": np.linspace(-30, 60, ROWS), "longitude": np.linspace(-120, 150, ROWS), "date": DATES,
        "sentinel_image": pa.array(encoded, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "mel_features": pa.array(mel.tolist(), mel_type),
        "audio_caption": CAPTIONS, "audio_caption_source": CAPTION_SOURCES,
    })
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=5)
    return sink.getvalue(), images, mel


def test_evaluate_on_the_geosound_layout(hf_server, capsys, tmp_path, monkeypatch) -> None:
    from soundmap.paths import model_dir

    model = build_tiny_sat2sound()
    model.save(model_dir() / "s2s")
    monkeypatch.setenv("SOUNDMAP_T5_DIR", str(save_tiny_t5(tmp_path / "t5")))
    test_bytes, images, mel = _split_bytes(0)
    hf_server.add_file("MVRL/GeoSound", "data/test-00000-of-00001.parquet", test_bytes, repo_type="dataset")
    hf_server.add_file("MVRL/GeoSound", "data/train-00000-of-00001.parquet", b"not needed", repo_type="dataset")
    assert run(["evaluate", "--model", "s2s", "--hf-dataset", "MVRL/GeoSound", "--json", "-", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert not hf_server.downloads("train-00000-of-00001.parquet")  # only the test split is fetched
    # the same protocol by hand: centre 256 px of the stored image (zoom 1 × Sentinel tile), mel crop 0,
    # metadata from the row (unparsable date: no month/hour; freesound: no hour; date only: hour 0)
    crops = images[:, 22:278, 22:278]
    months = [5, 12, None, 7] * 3
    hours = [13, 0, None, None] * 3
    loaded = sm.load_model("s2s", "cpu")
    image = loaded.fuse(loaded.encode_image(crops, 1),
                        sm.Metadata(lat=np.linspace(-30, 60, ROWS), lon=np.linspace(-120, 150, ROWS), month=months,
                                    hour=hours, audio_source=SOURCES, caption_source=CAPTION_SOURCES))
    audio = loaded.encode_audio(input_features=torch.from_numpy(mel[:, 0]))
    scores = image.mu @ audio.mu.T
    for key, matrix in (("image_to_audio", scores), ("audio_to_image", scores.T)):
        expected = retrieval_metrics(matrix)
        assert result[key]["recall_at_10pct"] == pytest.approx(expected.recall_at_10pct)
        assert result[key]["median_rank"] == pytest.approx(expected.median_rank)
        assert result[key]["gallery_size"] == ROWS
    assert run(["evaluate", "--model", "s2s", "--hf-dataset", "MVRL/GeoSound", "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "image->audio" in table and "PSM published" in table and "0.872" in table and "0.940" in table
    # "text added" (the authors' addtextto_audio): the audio side is l2n(l2n(audio) + l2n(caption))
    assert run(["evaluate", "--model", "s2s", "--hf-dataset", "MVRL/GeoSound", "--add-text", "--json", "-",
                "--quiet"]) == 0
    with_text = json.loads(capsys.readouterr().out)
    audio_text = sm.Embedding.combine(audio, loaded.encode_text(CAPTIONS))
    expected = retrieval_metrics(image.mu @ audio_text.mu.T)
    assert with_text["add_text"] is True
    assert with_text["image_to_audio"]["median_rank"] == pytest.approx(expected.median_rank)
