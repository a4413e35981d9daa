"""The WebDataset reader on small shards written here in the authors' layout (and soundmap's)."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from soundmap.errors import InputError
from soundmap.train.webdataset import (
    decode_sample,
    expand_shards,
    iter_epoch_raw,
    iter_raw_samples,
    iter_shard_samples,
    split_member_name,
)


def _jpeg(color: tuple[int, int, int], size: int = 40) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_psm_shard(path: Path) -> dict[str, list[torch.Tensor]]:
    """Three samples as the authors' create_webdataset.py writes them."""
    mels = {}
    samples = [
        ("iNat-001", {"sample_id": "iNat-001", "latitude": 38.6, "longitude": -90.2,
                      "date": "2019-05-03 14:22:00", "text": "birds chirping"}, (200, 30, 30)),
        ("freesound-77", {"sample_id": "freesound-77", "latitude": -33.9, "longitude": 151.2,
                          "date": "2020-11-30 08:00:00", "text": "waves"}, (20, 30, 200)),
        ("4455", {"long_key": "4455", "latitude": 52.5, "longitude": 13.4, "date_recorded": "2015-07-01",
                  "caption": "A tram passes. The location of the sound is Berlin."}, (30, 200, 30)),
    ]
    with tarfile.open(path, "w") as tar:
        for key, meta, color in samples:
            _add(tar, f"{key}.meta.json", json.dumps(meta).encode())
            _add(tar, f"{key}.image.jpg", _jpeg(color))
            mels[key] = []
            for i in range(1, 6):
                t = torch.full((4, 10, 8), float(i)) + torch.arange(8.0)
                mels[key].append(t)
                _add(tar, f"{key}.audio_mel{i}.pyd", pickle.dumps(t))
    return mels


def test_member_names_split_at_first_dot() -> None:
    assert split_member_name("iNat-001.audio_mel1.pyd") == ("iNat-001", "audio_mel1.pyd")
    assert split_member_name("dir/a-b.meta.json") == ("dir/a-b", "meta.json")
    assert split_member_name("noext") is None


def test_reads_authors_layout(tmp_path: Path) -> None:
    shard = tmp_path / "test_sentinel.tar"
    mels = _write_psm_shard(shard)
    samples = list(iter_shard_samples([shard]))
    assert [s.key for s in samples] == ["iNat-001", "freesound-77", "4455"]
    inat, free, aporee = samples
    assert (inat.lat, inat.lon, inat.month, inat.hour) == (38.6, -90.2, 5, 14)
    assert inat.audio_source == "iNat" and inat.caption == "birds chirping" and inat.caption_source == "meta"
    assert inat.source_image.shape == (40, 40, 3) and inat.source_image[..., 0].mean() > 150
    assert len(inat.mel_features) == 5 and inat.is_longer is True        # reference: always True
    for i in range(5):
        np.testing.assert_array_equal(inat.mel_features[i], mels["iNat-001"][i].numpy())
    assert free.audio_source == "freesound" and free.month == 11 and free.hour is None  # no time for Freesound
    assert aporee.audio_source == "aporee"                                 # SoundingEarth: unprefixed keys
    assert aporee.caption == "A tram passes. ."                            # cut at "The location of the sound is"
    assert (aporee.month, aporee.hour) == (7, 0)          # reference (dateutil): a date alone is hour 0, valid


def test_reads_soundmap_layout(tmp_path: Path) -> None:
    shard = tmp_path / "mine.tar"
    mel = np.random.default_rng(0).normal(size=(4, 6, 5)).astype(np.float32)
    buf = io.BytesIO()
    np.save(buf, mel)
    ids = io.BytesIO()
    np.save(ids, np.array([0, 5, 2, 1], dtype=np.int64))
    with tarfile.open(shard, "w") as tar:
        _add(tar, "s1.json", json.dumps({"lat": 1.5, "lon": 2.5, "month": 3, "hour": 23,
                                         "audio_source": "Freesound", "caption_source": "qwen"}).encode())
        _add(tar, "s1.z1.jpg", _jpeg((10, 10, 10)))
        _add(tar, "s1.z5.jpg", _jpeg((250, 250, 250)))
        _add(tar, "s1.mel.npy", buf.getvalue())
        _add(tar, "s1.is_longer.txt", b"false")
        _add(tar, "s1.input_ids.npy", ids.getvalue())
        _add(tar, "s1.txt", b"rain on a roof\n")
    (sample,) = list(iter_shard_samples([shard]))
    assert (sample.lat, sample.lon, sample.month) == (1.5, 2.5, 3)
    assert sample.hour is None                     # Freesound never has an hour
    assert sorted(sample.zoom_images) == [1, 5] and sample.source_image is None
    np.testing.assert_array_equal(sample.mel_features[0], mel)
    assert sample.is_longer is False
    assert sample.input_ids.tolist() == [0, 5, 2, 1]
    assert sample.caption == "rain on a roof" and sample.caption_source == "qwen"


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # noqa: D105
            return (os.system, ("echo pwned",))

    shard = tmp_path / "evil.tar"
    with tarfile.open(shard, "w") as tar:
        _add(tar, "x.meta.json", b"{}")
        _add(tar, "x.audio_mel1.pyd", pickle.dumps(Evil()))
    (raw,) = list(iter_raw_samples(shard))
    with pytest.raises(pickle.UnpicklingError):
        decode_sample(raw)


def test_epoch_order_is_seeded_and_complete(tmp_path: Path) -> None:
    shards = []
    for s in range(3):
        path = tmp_path / f"train_{s}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(7):
                _add(tar, f"k{s}_{i}.json", b"{}")
        shards.append(str(path))
    assert expand_shards([str(tmp_path / "train_{0..2}.tar")]) == shards
    assert expand_shards([tmp_path]) == shards
    a = [r.key for r in iter_epoch_raw(shards, seed=1, epoch=0, shuffle_buffer=5)]
    b = [r.key for r in iter_epoch_raw(shards, seed=1, epoch=0, shuffle_buffer=5)]
    c = [r.key for r in iter_epoch_raw(shards, seed=1, epoch=1, shuffle_buffer=5)]
    assert a == b and a != c and sorted(a) == sorted(c) and len(set(a)) == 21


def test_missing_and_corrupt_shards(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        expand_shards([tmp_path / "nope.tar"])
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar file at all" * 20)
    with pytest.raises(InputError):
        list(iter_raw_samples(bad))


def test_authors_dates_read_as_reference(tmp_path: Path) -> None:
    """get_clean_date + dateutil: date-only → hour 0 except Freesound (never an hour); iNat's
    "3:11 PM EDT" cut after "pm" → 15; aporee's "1/29/09 10:28" is 24-hour."""
    shard = tmp_path / "dates.tar"
    dates = {"freesound-1": "June 26th, 2010", "yfcc-2": "2011-07-26", "iNat-3": "2021/10/31 3:11 PM EDT",
             "aporee-4": "1/29/09 10:28", "yfcc-5": "not a date"}
    with tarfile.open(shard, "w") as tar:
        for key, date in dates.items():
            _add(tar, f"{key}.meta.json", json.dumps({"latitude": 1.0, "longitude": 2.0, "date": date}).encode())
    got = {s.key: (s.month, s.hour) for s in iter_shard_samples([shard])}
    assert got == {"freesound-1": (6, None), "yfcc-2": (7, 0), "iNat-3": (10, 15), "aporee-4": (1, 10),
                   "yfcc-5": (None, None)}


def test_parse_month_hour() -> None:
    from soundmap.train.webdataset import parse_month_hour

    assert parse_month_hour("2019-05-03 14:22:00") == (5, 14)
    assert parse_month_hour("2019-05-03T07:05") == (5, 7)
    assert parse_month_hour("2021-12-24") == (12, None)         # no time of day written -> no hour
    assert parse_month_hour("2019") == (None, None)             # a bare year has no month
    assert parse_month_hour("not a date") == (None, None)
    assert parse_month_hour(None) == (None, None) and parse_month_hour(float("nan")) == (None, None)


def test_damaged_sample_is_skipped_with_a_warning(tmp_path: Path) -> None:
    from soundmap.train.datasets import ShardSource

    shard = tmp_path / "train_0.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(4):
            _add(tar, f"s{i}.json", json.dumps({"lat": 1.0, "lon": 2.0}).encode())
            _add(tar, f"s{i}.jpg", b"not a jpeg" if i == 1 else _jpeg((1, 2, 3), 8))
    source = ShardSource([shard], shuffle_buffer=1)
    with pytest.warns(UserWarning, match="s1"):
        items = list(source.iter_epoch(seed=0, epoch=0, shuffle=False))
    assert [(i, s.key) for i, s in items] == [(0, "s0"), (2, "s2"), (3, "s3")]   # positions stay valid
    assert [i for i, _ in source.iter_epoch(seed=0, epoch=0, start=3, shuffle=False)] == [3]
