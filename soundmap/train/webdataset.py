"""Streaming reader for WebDataset shards, with the standard library only (``tarfile``).

A WebDataset shard is a plain tar file whose members are grouped into samples by key: the key is
the member path up to the first ``.`` of its file name, the rest is the field's extension
(``iNat-123.meta.json`` → key ``iNat-123``, field ``meta.json``). Members of one sample are
consecutive. We read shards in streaming mode (``r|*``), so a shard is never loaded whole and
compressed shards (``.tar.gz``) work too.

Layout of the authors' shards (mvrl/PSM ``data_prep/create_webdataset.py`` and ``dataloader.py``):

=====================  =================================================================
``__key__``            ``<source>-<id>``: the audio source is the prefix (``iNat``, ``yfcc``,
                       ``aporee``, ``freesound``); SoundingEarth keys have no prefix (aporee)
``meta.json``          ``latitude``, ``longitude``, ``date`` (``date_recorded`` for
                       SoundingEarth), ``text`` (the caption; SoundingEarth: ``caption``, cut at
                       "The location of the sound is"), ``sample_id``, ...
``image.jpg``          the large source tile (1280 px Sentinel-2 / 1500 px Bing); zoom level l
                       is its centre (l × tile_px) px crop
``audio_mel1..5.pyd``  five pickled CLAP ``input_features`` (4 × 1001 × 64) from five random
                       fusion draws; training picks one at random, evaluation index 0
=====================  =================================================================

Quirks kept: ``is_longer`` is not stored and the authors feed ``True`` for every clip; Freesound
clips have no hour; dates are read as the authors' ``get_clean_date`` does
(:func:`reference_month_hour`: a date without a time of day has hour 0). Caption files the authors join from outside the shards (Qwen/Pengi
captions) are not part of the shards; the ``meta`` caption is used (caption source ``meta``).

soundmap's own documented layout (for users writing shards) is also read, by these keys:
``json`` (``lat``, ``lon``, ``datetime`` or ``month``/``hour``, ``audio_source``,
``caption_source``, ``caption``), ``jpg``/``png`` (source tile) or ``z1.jpg``/``z3.jpg``/
``z5.jpg`` (per-zoom images), ``mel.npy`` or ``input_features.npy``, ``is_longer.npy``/``.txt``,
``input_ids.npy`` + ``attention_mask.npy``, ``txt`` (caption), ``flac``/``wav``/``ogg``/``mp3``
(raw audio, featurized on the fly).

``.pyd`` members are pickles; they are loaded with a restricted unpickler that only rebuilds
tensors and numpy arrays, so a malicious shard cannot run code.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .samples import TrainSample

_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")

PSM_SOURCE_PREFIXES = {"inat": "iNat", "yfcc": "yfcc", "aporee": "aporee", "freesound": "freesound"}
SOUNDINGEARTH_CAPTION_CUT = "The location of the sound is"
AUDIO_EXTENSIONS = ("flac", "wav", "ogg", "mp3")
IMAGE_EXTENSIONS = ("image.jpg", "image.jpeg", "image.png", "jpg", "jpeg", "png")


@dataclass
class RawSample:
    """The undecoded members of one sample: ``fields`` maps extension → bytes."""

    key: str
    fields: dict[str, bytes]
    shard: str


def split_member_name(name: str) -> tuple[str, str] | None:
    """``dir/abc.meta.json`` → (``dir/abc``, ``meta.json``); names without an extension → None."""
    match = _KEY_RE.match(name)
    return (match.group(1), match.group(2)) if match else None


def iter_raw_samples(shard: str | Path) -> Iterator[RawSample]:
    """Stream the samples of one tar shard in file order (consecutive members share a key)."""
    path = str(shard)
    try:
        archive = tarfile.open(path, mode="r|*")
    except (OSError, tarfile.TarError) as exc:
        raise InputError(f"cannot read WebDataset shard {path}: {exc}") from None
    current: RawSample | None = None
    with archive:
        try:
            for member in archive:
                if not member.isfile():
                    continue
                parts = split_member_name(member.name)
                if parts is None:
                    continue
                key, ext = parts
                handle = archive.extractfile(member)
                data = handle.read() if handle is not None else b""
                if current is not None and key != current.key:
                    yield current
                    current = None
                if current is None:
                    current = RawSample(key=key, fields={}, shard=path)
                current.fields[ext.lower()] = data
        except tarfile.TarError as exc:
            raise InputError(f"WebDataset shard {path} is corrupt or truncated: {exc}") from None
    if current is not None:
        yield current


def expand_shards(specs: Iterable[str | Path]) -> list[str]:
    """Shard paths from files, directories (all ``*.tar*`` inside, sorted) or brace ranges
    ``train_{0..9}.tar`` (the WebDataset notation)."""
    out: list[str] = []
    for spec in specs:
        text = str(spec)
        brace = re.search(r"\{(\d+)\.\.(\d+)\}", text)
        if brace:
            lo, hi = brace.group(1), brace.group(2)
            width = len(lo) if lo.startswith("0") else 0
            for i in range(int(lo), int(hi) + 1):
                out.append(text[: brace.start()] + str(i).zfill(width) + text[brace.end():])
            continue
        path = Path(text).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if ".tar" in p.name)
            if not found:
                raise InputError(f"no .tar shards in directory {path}")
            out.extend(str(p) for p in found)
        else:
            out.append(str(path))
    missing = [p for p in out if not Path(p).is_file()]
    if missing:
        raise InputError(f"WebDataset shard not found: {missing[0]}")
    return out


class _TensorOnlyUnpickler(pickle.Unpickler):
    """Unpickles tensors and numpy arrays and nothing else (no arbitrary code from a shard)."""

    _ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"),
        ("collections", "OrderedDict"), ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            import torch

            return lambda data: torch.load(io.BytesIO(data), weights_only=True)
        if (module, name) in self._ALLOWED or (module == "torch" and name.endswith("Storage")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from a shard")


def decode_array(ext: str, data: bytes) -> np.ndarray:
    """Decode a ``.pyd`` (pickled tensor/array) or ``.npy`` member to a float32/int numpy array."""
    if ext.endswith("npy"):
        return np.load(io.BytesIO(data), allow_pickle=False)
    if ext.endswith("pyd") or ext.endswith("pickle"):
        obj = _TensorOnlyUnpickler(io.BytesIO(data)).load()
        if hasattr(obj, "detach"):
            obj = obj.detach().cpu().numpy()
        return np.asarray(obj)
    raise ValueError(f"not an array member: {ext}")


def decode_image(data: bytes) -> np.ndarray:
    """JPEG/PNG bytes → H × W × 3 uint8 RGB."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Audio bytes → (samples × channels float32, sample rate) with soundfile."""
    import soundfile

    wave, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return wave, int(rate)


def _first(fields: dict[str, bytes], names: Sequence[str]) -> tuple[str, bytes] | None:
    for name in names:
        if name in fields:
            return name, fields[name]
    return None


def _scalar_text(data: bytes) -> str:
    return data.decode("utf-8").strip()


def canonical_audio_source(value: Any) -> str | None:
    """``iNat``/``inaturalist``/``yfcc``/``aporee``/``freesound`` in any case → the reference's
    spelling; anything else → None (the component is treated as unknown, i.e. dropped)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip().lower()
    if text in ("inaturalist", "inat"):
        return "iNat"
    return PSM_SOURCE_PREFIXES.get(text)


def parse_month_hour(value: Any) -> tuple[int | None, int | None]:
    """Month (1–12) and hour (0–23) of a date/datetime value; the hour only if a time of day is
    written (``2021-05-03`` alone has no hour). Unparseable → (None, None)."""
    import pandas as pd

    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None, None
    text = str(value).strip()
    if not text or text.lower() in ("nan", "none", "nat", "null") or re.fullmatch(r"\d{1,4}(\.0)?", text):
        return None, None  # a bare year (or number) says nothing about the month
    try:
        stamp = pd.to_datetime(text, errors="coerce", utc=False, format="mixed")
    except (ValueError, OverflowError, TypeError):
        return None, None
    if stamp is pd.NaT or pd.isna(stamp):
        return None, None
    has_time = re.search(r"\d{1,2}:\d{2}", text) is not None
    return int(stamp.month), (int(stamp.hour) if has_time else None)


def reference_month_hour(value: Any) -> tuple[int | None, int | None]:
    """Month and hour of an authors'-shard date, as their ``get_clean_date`` reads it
    (utilities/date_cleanup.py): lower-case, cut just after the first ``am``/``pm`` or just before
    ``gmt`` (iNat's ``2021/10/31 3:11 PM EDT`` → ``2021/10/31 3:11 pm``), then dateutil's parser.

    Quirk reproduced on purpose: dateutil fills a missing time with midnight, so a date without a
    time of day (``2015-07-01``, SoundingEarth/aporee) gives hour **0, valid**. The caller still
    drops the hour of Freesound samples (the reference never gives them a time). One difference:
    a bare year (or number) gives no month here, where dateutil would take today's month.
    Unparseable → (None, None).
    """
    from dateutil import parser as date_parser

    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None, None
    text = str(value).lower().strip()
    if not text or re.fullmatch(r"\d{1,4}(\.0)?", text):
        return None, None
    if "am" in text or "pm" in text:
        marker = "am" if "am" in text else "pm"
        text = text[: text.find(marker) + 2].strip()
    elif "gmt" in text:
        text = text[: text.find("gmt")].strip()
    try:
        stamp = date_parser.parse(text)
    except (ValueError, OverflowError, TypeError):
        return None, None
    return int(stamp.month), int(stamp.hour)


def _opt_int(value: Any) -> int | None:
    try:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return None
        return int(value)
    except (TypeError, ValueError):
        return None


def _opt_float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def decode_sample(raw: RawSample) -> TrainSample:
    """Decode one raw sample in either layout (the authors' or soundmap's) into a TrainSample."""
    f = raw.fields
    meta_item = _first(f, ("meta.json", "json"))
    meta: dict[str, Any] = json.loads(meta_item[1].decode("utf-8")) if meta_item else {}
    basename = raw.key.rsplit("/", 1)[-1]
    sample = TrainSample(key=basename)

    sample.lat = _opt_float(meta.get("lat", meta.get("latitude")))
    sample.lon = _opt_float(meta.get("lon", meta.get("longitude")))

    source = canonical_audio_source(meta.get("audio_source"))
    if source is None and "-" in basename:
        source = canonical_audio_source(basename.split("-", 1)[0])
    if source is None and meta_item is not None and meta_item[0] == "meta.json":
        source = "aporee"  # SoundingEarth shards: keys without a source prefix are all aporee
    sample.audio_source = source

    if "month" in meta or "hour" in meta:
        sample.month, sample.hour = _opt_int(meta.get("month")), _opt_int(meta.get("hour"))
    else:
        date = next((meta[k] for k in ("datetime", "date", "date_recorded") if meta.get(k) is not None), None)
        authors_layout = meta_item is not None and meta_item[0] == "meta.json"
        sample.month, sample.hour = (reference_month_hour if authors_layout else parse_month_hour)(date)
    if source == "freesound":
        sample.hour = None  # reference: Freesound has no time of day

    caption_item = _first(f, ("txt", "caption.txt"))
    if caption_item is not None:
        sample.caption = _scalar_text(caption_item[1])
    elif meta.get("caption") is not None:
        text = str(meta["caption"])
        if SOUNDINGEARTH_CAPTION_CUT in text:
            text = text.split(SOUNDINGEARTH_CAPTION_CUT)[0] + "."
        sample.caption = text
    elif meta.get("text") is not None:
        sample.caption = str(meta["text"])
    if sample.caption is not None:
        sample.caption_source = str(meta.get("caption_source", "meta"))

    image_item = _first(f, IMAGE_EXTENSIONS)
    if image_item is not None:
        sample.source_image = decode_image(image_item[1])
    for zoom in (1, 3, 5):
        item = _first(f, (f"z{zoom}.jpg", f"z{zoom}.png", f"z{zoom}.jpeg"))
        if item is not None:
            sample.zoom_images[zoom] = decode_image(item[1])

    mel_names = sorted((k for k in f if re.fullmatch(r"audio_mel\d+\.pyd", k)),
                       key=lambda k: int(re.findall(r"\d+", k)[0]))
    mel_names += [k for k in ("mel.npy", "input_features.npy", "mel.pyd", "input_features.pyd") if k in f]
    sample.mel_features = [decode_array(k, f[k]).astype(np.float32, copy=False) for k in mel_names]
    longer = _first(f, ("is_longer.npy", "is_longer.txt", "is_longer.cls"))
    if longer is not None:
        value = decode_array(*longer) if longer[0].endswith("npy") else _scalar_text(longer[1])
        sample.is_longer = bool(np.asarray(value).reshape(-1)[0]) if not isinstance(value, str) \
            else value.lower() in ("1", "true", "yes")
    elif sample.mel_features:
        sample.is_longer = True  # reference quirk: is_longer is always True for the stored mels
    if "input_ids.npy" in f:
        sample.input_ids = decode_array("npy", f["input_ids.npy"]).astype(np.int64).reshape(-1)
        if "attention_mask.npy" in f:
            sample.attention_mask = decode_array("npy", f["attention_mask.npy"]).astype(np.int64).reshape(-1)
    audio_item = _first(f, AUDIO_EXTENSIONS)
    if audio_item is not None and not sample.mel_features:
        sample.waveform, sample.sample_rate = decode_audio(audio_item[1])
    return sample


def iter_shard_samples(shards: Sequence[str | Path]) -> Iterator[TrainSample]:
    """Decoded samples of the shards, in order (for evaluation)."""
    for shard in shards:
        for raw in iter_raw_samples(shard):
            yield decode_sample(raw)


class ShuffleBuffer:
    """Seeded reservoir-style shuffle of a stream, as WebDataset's ``shuffle(n)``.

    Deterministic for a given generator, so a resumed run can replay an epoch's order exactly.
    """

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size = max(1, int(size))
        self.rng = rng

    def __call__(self, items: Iterable[Any]) -> Iterator[Any]:
        buffer: list[Any] = []
        for item in items:
            buffer.append(item)
            if len(buffer) >= self.size:
                j = int(self.rng.integers(len(buffer)))
                buffer[j], buffer[-1] = buffer[-1], buffer[j]
                yield buffer.pop()
        while buffer:
            j = int(self.rng.integers(len(buffer)))
            buffer[j], buffer[-1] = buffer[-1], buffer[j]
            yield buffer.pop()


def iter_epoch_raw(shards: Sequence[str], *, seed: int, epoch: int, shuffle_buffer: int = 1000) -> Iterator[RawSample]:
    """One training epoch over the shards: shard order and buffer shuffle seeded by (seed, epoch).

    Raw (undecoded) samples, so that skipping ahead on resume costs only tar reading.
    """
    rng = np.random.default_rng([seed, epoch, 7])
    order = [shards[i] for i in rng.permutation(len(shards))]

    def stream() -> Iterator[RawSample]:
        for shard in order:
            yield from iter_raw_samples(shard)

    if shuffle_buffer <= 1:
        yield from stream()
    else:
        yield from ShuffleBuffer(shuffle_buffer, rng)(stream())
