"""Data paths into the trainer: authors' shards end to end, imagery rendered by soundmap's own
tile renderer for a manifest without images, augmentation draws, SatMAE initialisation."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from soundmap.errors import InputError, ModelError
from soundmap.train.batch import BatchBuilder, sample_rng
from soundmap.train.datasets import ShardSource
from soundmap.train.evaluate import EvalOptions, evaluate_model
from soundmap.train.imagery import TileImageProvider, image_for
from soundmap.train.loop import Trainer, TrainConfig
from soundmap.train.samples import TrainSample
from soundmap.train.setup import load_satmae
from soundmap.train.transforms import random_resized_crop_box, train_augment


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def psm_shard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four samples in the authors' layout: a 1280 px Sentinel source tile (5 × 256, so every zoom
    level crops from it) and two pickled CLAP mel draws (4 × 1001 × 64) per clip."""
    path = tmp_path_factory.mktemp("shards") / "test_sentinel.tar"
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w") as tar:
        for i, source in enumerate(("iNat", "yfcc", "aporee", "freesound")):
            key = f"{source}-{i}"
            meta = {"sample_id": key, "latitude": 40.0 + i, "longitude": -90.0 + i,
                    "date": f"2020-0{1 + i}-02 1{i}:00:00", "text": "the sound of birds"}
            _add(tar, f"{key}.meta.json", json.dumps(meta).encode())
            buf = io.BytesIO()
            ramp = np.linspace(0, 255, 1280, dtype=np.float32)
            tile = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (1280, 1)), np.full((1280, 1280), 40 * i)], -1)
            Image.fromarray(tile.astype(np.uint8)).save(buf, format="JPEG")
            _add(tar, f"{key}.image.jpg", buf.getvalue())
            for m in (1, 2):
                mel = torch.from_numpy(rng.normal(-40, 10, size=(4, 1001, 64)).astype(np.float32))
                _add(tar, f"{key}.audio_mel{m}.pyd", pickle.dumps(mel))
    return path


def test_trainer_and_evaluator_on_authors_shards(psm_shard: Path, tiny_psm, clap_files: Path, tmp_path: Path) -> None:
    from soundmap.preprocess.text import TextTokenizer

    tokenizer = TextTokenizer(clap_files)
    source = ShardSource([psm_shard], shuffle_buffer=4)
    config = TrainConfig(batch_size=2, grad_accum=2, max_steps=1, warmup_steps=1, lr=1e-3, checkpoint_every=0,
                         log_every=1, freeze_clap=True)
    trainer = Trainer(tiny_psm, source, config, tmp_path / "run", tokenizer=tokenizer)
    history = trainer.fit()
    assert [h.step for h in history] == [1] and np.isfinite(history[0].loss)
    assert trainer.samples_seen == 4                           # 2 micro-batches of 2 per step
    assert "loss_it" in history[0].parts                       # captions from meta.json -> text pairs
    report = evaluate_model(tiny_psm, source, EvalOptions(zoom=3, k=3, metadata=("latlon", "month")),
                            tokenizer=tokenizer)
    assert report.i2a.gallery_size == 4 and report.metadata_used == ("latlon", "month")


def test_zoom_levels_crop_the_source_tile() -> None:
    tile = np.zeros((1280, 1280, 3), dtype=np.uint8)
    tile[512:768, 512:768] = 255                                    # the central 256 px are white
    sample = TrainSample(key="k", source_image=tile)
    z1 = image_for(sample, 1, "sentinel")
    z5 = image_for(sample, 5, "sentinel")
    assert tuple(z1.shape) == (3, 256, 256) and float(z1.mean()) == pytest.approx(1.0)
    assert float(z5.mean()) == pytest.approx(1 / 25, abs=0.01)     # zoom 5 covers 25x the area
    with pytest.raises(InputError):
        image_for(TrainSample(key="none"), 1, "sentinel")


def test_manifest_imagery_rendered_with_soundmap_tiles(tmp_path: Path) -> None:
    """A recording without imagery gets the cell centred on it from a raster tile source."""
    import rasterio
    from rasterio.transform import from_origin

    path = tmp_path / "ground.tif"
    data = np.zeros((3, 400, 400), dtype=np.uint8)
    data[0, :, :200] = 200                                          # west half red, east half blue
    data[2, :, 200:] = 200
    with rasterio.open(path, "w", driver="GTiff", width=400, height=400, count=3, dtype="uint8",
                       crs="EPSG:4326", transform=from_origin(6.8, 45.2, 0.001, 0.001)) as dst:
        dst.write(data)
    provider = TileImageProvider(str(path), "sentinel")
    west = provider(TrainSample(key="w", lat=45.0, lon=6.9), 1)      # 2.56 km cell inside the red half
    east = provider(TrainSample(key="e", lat=45.0, lon=7.1), 1)
    assert west.shape == (256, 256, 3)
    assert west[..., 0].mean() > 150 and west[..., 2].mean() < 50
    assert east[..., 2].mean() > 150 and east[..., 0].mean() < 50


def test_augmentation_is_a_function_of_the_position() -> None:
    image = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    a = train_augment(image, sample_rng(1, 2, 3))
    b = train_augment(image, sample_rng(1, 2, 3))
    c = train_augment(image, sample_rng(1, 2, 4))
    assert a.shape == (3, 224, 224) and torch.equal(a, b) and not torch.equal(a, c)
    for seed in range(50):
        top, left, h, w = random_resized_crop_box(256, 256, np.random.default_rng(seed))
        assert 0 <= top <= 256 - h and 0 <= left <= 256 - w
        assert 0.2 * 256 * 256 * 0.9 <= h * w <= 256 * 256 and 0.7 <= w / h <= 1.4


def test_metadata_dropout_rate_and_eval_selection() -> None:
    samples = [TrainSample(key=str(i), lat=1.0, lon=2.0, month=3, hour=4, audio_source="iNat",
                           caption_source="meta", zoom_images={1: np.zeros((8, 8, 3), np.uint8)},
                           mel_features=[np.zeros((4, 2, 2), np.float32)]) for i in range(400)]
    comps = ("audio_source", "caption_source", "latlon", "month", "hour")
    train = BatchBuilder(family="sentinel", train=True, metadata_components=comps, use_text=False, input_size=16)
    meta = train._metadata(samples, np.random.default_rng(0))
    month_kept = np.array([not np.isnan(m) for m in meta.month])     # dropped numbers are NaN
    source_kept = np.array([m is not None for m in meta.audio_source])
    assert month_kept.sum() == 200 and source_kept.sum() == 200       # exactly int(0.5 × 400) masked
    assert (month_kept != source_kept).any()                          # each component draws its own rows
    evaluation = BatchBuilder(family="sentinel", train=False, metadata_components=comps,
                              keep_components=("month",), use_text=False, input_size=16)
    meta = evaluation._metadata(samples[:3], [sample_rng(0, 0, i) for i in range(3)])
    assert meta.present() == ("month",)


def test_satmae_initialisation(tiny_psm, tmp_path: Path) -> None:
    own = tiny_psm.state_dict()
    pretrain = {k.replace("image_encoder.backbone.", ""): torch.randn_like(v)
                for k, v in own.items() if k.startswith("image_encoder.backbone.") and "fc_norm" not in k}
    pretrain.update({"pos_embed": torch.zeros(1, 197, 32), "cls_token": torch.zeros(1, 1, 32),
                     "norm.weight": torch.ones(32), "norm.bias": torch.zeros(32),
                     "decoder_embed.weight": torch.zeros(16, 32), "mask_token": torch.zeros(1, 1, 16)})
    ckpt = tmp_path / "satmae.pth"
    torch.save({"model": pretrain, "epoch": 199}, ckpt)
    fresh = load_satmae(tiny_psm, ckpt)
    assert sorted(fresh) == ["image_encoder.backbone.fc_norm.bias", "image_encoder.backbone.fc_norm.weight"]
    key = "blocks.0.attn.qkv.weight"
    assert torch.equal(tiny_psm.state_dict()[f"image_encoder.backbone.{key}"], pretrain[key])
    pretrain["patch_embed.proj.weight"] = torch.zeros(32, 4, 16, 16)   # a 4-band model does not fit
    torch.save({"model": pretrain}, ckpt)
    with pytest.raises(ModelError):
        load_satmae(tiny_psm, ckpt)
