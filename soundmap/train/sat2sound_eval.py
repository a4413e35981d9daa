"""``soundmap evaluate --hf-dataset`` for Sat2Sound: the authors' retrieval protocol on the public
Parquet layout of ``MVRL/GeoSound`` and ``MVRL/SoundingEarth``.

Protocol (the authors' evaluation script): the **test** split; zoom 1; the first of the five
stored mel crops (``mel_features[0]``, shape 1 × 1001 × 64); metadata as the checkpoint takes it
with no random dropping; cosine scores; image → audio and audio → image; R@10 % (K = 0.1 × N as a
float, counting rank < K, ranks 1-based with average ties) and median rank — the same definitions
as PSM, so the figures print beside PSM's published ones.

Data: the split's Parquet files are fetched through :mod:`soundmap.hub` (HF cache, ``HF_ENDPOINT``,
offline switches) and read **streamed**: record batches of only the needed columns
(``sample_id``, ``source``, ``latitude``, ``longitude``, ``date`` / ``date_recorded``, the family's
image column ``{bingmap,sentinel,googleearth}_image`` and ``mel_features``), so memory holds one
batch plus the 1024-d embeddings.

Row → inputs, as the authors' dataset class does it: the stored image (Bing 1500², Sentinel 1280²)
is centre-cropped to ``zoom × tile`` px (300 Bing, 256 otherwise) and resized to 224 (bicubic,
antialias), ImageNet-normalised; lat/lon always valid; the date is parsed with dateutil (a date
without a clock time counts as hour 0; an unparsable one drops month and hour); freesound clips
never have an hour; SoundingEarth rows are source "aporee"; the caption source is the row's
``audio_caption_source`` (``meta``, the demos' default, where the column is absent).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..progress import progress

#: Image column of each imagery family in the datasets.
IMAGE_COLUMNS = {"bing": "bingmap_image", "sentinel": "sentinel_image", "googleEarth": "googleearth_image"}
#: PSM's published figures (psm-reference.md, paper tables; metadata and text at evaluation):
#: (dataset, family) → {direction: (R@10 %, median rank)}.
PSM_PUBLISHED = {
    ("GeoSound", "sentinel"): {"i2a": (0.872, 142), "a2i": (0.940, 104)},
    ("GeoSound", "bing"): {"i2a": (0.901, 113), "a2i": (0.943, 100)},
    ("SoundingEarth", "googleEarth"): {"i2a": (0.690, 264), "a2i": (0.608, 371)},
}
ROW_BATCH = 64
#: The source of the row's best audio caption (meta, qwen or pengi): the caption-source token.
CAPTION_SOURCE_COLUMN = "audio_caption_source"


@dataclass
class _Rows:
    """Decoded inputs of one record batch."""

    pixels: torch.Tensor
    mel: torch.Tensor
    metadata: Any
    captions: list[str]


def split_files(repo_id: str, split: str = "test") -> list[Path]:
    """The split's Parquet files (downloaded once into the HF cache), in name order."""
    from ..hub import hub_snapshot

    patterns = [f"*{split}-*.parquet", f"*{split}/*.parquet", f"{split}-*.parquet", f"*/{split}*.parquet"]
    root = hub_snapshot(repo_id, repo_type="dataset", allow_patterns=patterns)
    files = sorted(p for p in root.rglob("*.parquet") if split in p.relative_to(root).as_posix())
    if not files:
        raise InputError(f"{repo_id} has no Parquet files for the {split} split")
    return files


def _date_parts(value: Any) -> tuple[float, float]:
    """(month, hour) of a date string, NaN for both when it does not parse."""
    from dateutil import parser

    if not isinstance(value, str) or not value.strip():
        return float("nan"), float("nan")
    try:
        parsed = parser.parse(value)
    except (ValueError, OverflowError):
        return float("nan"), float("nan")
    return float(parsed.month), float(parsed.hour)


def _image_pixels(cell: Any, zoom: int, tile_px: int) -> torch.Tensor:
    """One stored image (HF Image struct or bytes) → normalised 3 × 224 × 224."""
    from PIL import Image

    from ..preprocess.image import center_crop, normalize_imagenet, resize_bicubic, to_float_nchw

    data = cell.get("bytes") if isinstance(cell, dict) else cell
    with Image.open(io.BytesIO(data)) as image:
        array = np.asarray(image.convert("RGB"))
    x = to_float_nchw(array)
    crop = zoom * tile_px
    if min(x.shape[-2:]) < crop:  # torchvision zero-pads a crop larger than the image
        pad_h, pad_w = max(0, crop - x.shape[-2]), max(0, crop - x.shape[-1])
        x = torch.nn.functional.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    return normalize_imagenet(resize_bicubic(center_crop(x, crop), 224, 224))[0]


def _mel_stack(column: Any, n: int) -> np.ndarray:
    """``mel_features`` of a record batch → (n × 5 × 1 × T × 64) float32."""
    values = column
    while hasattr(values, "flatten") and hasattr(values.type, "value_type"):
        values = values.flatten()
    flat = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32)
    return flat.reshape(n, 5, 1, -1, 64)


def read_rows(files: list[Path], *, family: str, dataset: str, zoom: int, mel_index: int,
              limit: int | None = None) -> Iterator[_Rows]:
    """Stream the inputs of every row, ``ROW_BATCH`` rows at a time."""
    import pyarrow.parquet as pq

    from ..families import get_family
    from ..preprocess.metadata import Metadata

    tile_px = get_family(family).tile_px
    image_column = IMAGE_COLUMNS[family]
    date_column = "date" if dataset == "GeoSound" else "date_recorded"
    seen = 0
    for path in files:
        parquet = pq.ParquetFile(path)
        names = set(parquet.schema_arrow.names)
        missing = [c for c in (image_column, "mel_features", "latitude", "longitude") if c not in names]
        if missing:
            raise InputError(f"{path.name} lacks the column(s) {', '.join(missing)}; is it a {dataset} split?")
        columns = [c for c in (image_column, "mel_features", "latitude", "longitude", date_column, "source",
                               CAPTION_SOURCE_COLUMN, "audio_caption") if c in names]
        for batch in parquet.iter_batches(batch_size=ROW_BATCH, columns=columns):
            n = batch.num_rows if limit is None else min(batch.num_rows, limit - seen)
            if n <= 0:
                return
            batch = batch.slice(0, n)
            images = batch.column(image_column).to_pylist()
            mel = _mel_stack(batch.column("mel_features"), n)[:, mel_index]
            dates = batch.column(date_column).to_pylist() if date_column in columns else [None] * n
            sources = batch.column("source").to_pylist() if "source" in columns else ["aporee"] * n
            parts = [_date_parts(d) for d in dates]
            month = [m for m, _ in parts]
            hour = [float("nan") if s == "freesound" else h for s, (_, h) in zip(sources, parts)]
            captions = batch.column(CAPTION_SOURCE_COLUMN).to_pylist() if CAPTION_SOURCE_COLUMN in columns else "meta"
            metadata = Metadata(lat=batch.column("latitude").to_numpy(), lon=batch.column("longitude").to_numpy(),
                                month=month, hour=hour, audio_source=sources, caption_source=captions)
            pixels = torch.stack([_image_pixels(cell, zoom, tile_px) for cell in images])
            texts = batch.column("audio_caption").to_pylist() if "audio_caption" in columns else [""] * n
            yield _Rows(pixels=pixels, mel=torch.from_numpy(np.ascontiguousarray(mel)), metadata=metadata,
                        captions=[t or "" for t in texts])
            seen += n


def evaluate_sat2sound(model: Any, repo_id: str, *, split: str = "test", zoom: int = 1, mel_index: int = 0,
                       limit: int | None = None, add_text: bool = False) -> Any:
    """Embed every row of the split and compute both retrieval directions → :class:`EvalReport`.

    ``add_text`` is the authors' ``addtextto_audio`` setting: the audio side of every pair becomes
    ``l2n(l2n(audio) + l2n(audio caption))`` (:meth:`Embedding.combine`), as query and as gallery."""
    from ..models.embedding import Embedding
    from .evaluate import EvalOptions, EvalReport
    from .metrics import retrieval_metrics

    dataset = "SoundingEarth" if "soundingearth" in repo_id.lower() else "GeoSound"
    family = model.family
    if dataset == "SoundingEarth" and family != "googleEarth" or dataset == "GeoSound" and family == "googleEarth":
        raise InputError(f"{model.name} was trained on {family} imagery; {repo_id} has none for it")
    images, audios = [], []
    files = split_files(repo_id, split)
    for rows in progress(read_rows(files, family=family, dataset=dataset, zoom=zoom, mel_index=mel_index,
                                   limit=limit), desc=f"evaluating on {repo_id}", unit="batch"):
        res = torch.full((rows.pixels.shape[0],), float(zoom) * model.config.gsd)
        images.append(model.fuse(model.features_from_pixels(rows.pixels, res), rows.metadata))
        audio = model.encode_audio(input_features=rows.mel)
        audios.append(Embedding.combine(audio, model.encode_text(rows.captions)) if add_text else audio)
    image, audio = Embedding.cat(images), Embedding.cat(audios)
    scores = image.mu @ audio.mu.T
    report = EvalReport(i2a=retrieval_metrics(scores), a2i=retrieval_metrics(scores.T),
                        options=EvalOptions(zoom=zoom, mel_index=mel_index, limit=limit, add_text=add_text),
                        model=str(model.name),
                        metadata_used=tuple(model.metadata_components),
                        extra={"score": "cosine", "dataset": repo_id, "split": split})
    report.extra["psm_published"] = PSM_PUBLISHED.get((dataset, family))
    return report


def psm_line(report: Any) -> str:
    """PSM's published figures for the same dataset and imagery, for the table."""
    published = report.extra.get("psm_published")
    if not published:
        return "PSM published: none for this dataset and imagery"
    (i_r, i_m), (a_r, a_m) = published["i2a"], published["a2i"]
    return (f"PSM published (metadata + text at evaluation): image->audio R@10% {i_r:.3f} MdR {i_m}; "
            f"audio->image R@10% {a_r:.3f} MdR {a_m}")
