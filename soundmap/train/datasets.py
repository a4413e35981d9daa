"""Training/evaluation data sources: a manifest (random access) or WebDataset shards (streaming).

Both yield ``(index, TrainSample)`` in an order fixed by ``(seed, epoch)``, where ``index`` is the
sample's position in the epoch's stream, and can start an epoch at any position — what makes a
resumed run replay exactly the batches an uninterrupted one would have seen. A shard sample
that cannot be decoded (corrupt JPEG, bad pickle) is skipped with a warning, as the authors'
loader does (``warn_and_continue``); its index is simply never yielded, so positions stay valid.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from .imagery import load_image_file
from .manifest import read_manifest, row_to_sample
from .samples import TrainSample
from .webdataset import RawSample, decode_sample, expand_shards, iter_epoch_raw, iter_raw_samples, iter_shard_samples


class ManifestSource:
    """Rows of a manifest (optionally one split of it); imagery files load on access."""

    def __init__(self, frame: pd.DataFrame, name: str = "manifest") -> None:
        self.frame = frame.reset_index(drop=True)
        self.name = name

    @classmethod
    def from_path(cls, path: str | Path, split: str | None = None) -> ManifestSource:
        frame = read_manifest(path)
        if split is not None:
            if "split" not in frame.columns:
                raise InputError(f"manifest {path} has no split column; run `soundmap data split` first "
                                 "or pass the whole manifest")
            frame = frame[frame["split"].astype(str) == split]
            if frame.empty:
                raise InputError(f"manifest {path} has no rows with split == {split!r}")
        return cls(frame, name=f"{Path(path).name}[{split or 'all'}]")

    def __len__(self) -> int:
        return len(self.frame)

    def get(self, index: int) -> TrainSample:
        row = self.frame.iloc[index]
        sample = row_to_sample(row)
        image = row.get("image")
        if isinstance(image, str):
            sample.source_image = load_image_file(image)
        for zoom in (1, 3, 5):
            path = row.get(f"image_z{zoom}")
            if isinstance(path, str):
                sample.zoom_images[zoom] = load_image_file(path)
        return sample

    def iter_epoch(self, *, seed: int, epoch: int, start: int = 0,
                   shuffle: bool = True) -> Iterator[tuple[int, TrainSample]]:
        order = np.random.default_rng([seed, epoch]).permutation(len(self)) if shuffle else np.arange(len(self))
        for position in range(start, len(order)):
            yield position, self.get(int(order[position]))

    def __iter__(self) -> Iterator[TrainSample]:
        return (self.get(i) for i in range(len(self)))


class ShardSource:
    """WebDataset shards, streamed; an epoch is one pass over every shard."""

    def __init__(self, shards: Sequence[str | Path], shuffle_buffer: int = 1000) -> None:
        self.shards = expand_shards(shards)
        self.shuffle_buffer = shuffle_buffer
        self.name = f"{len(self.shards)} shard(s)"

    def iter_epoch(self, *, seed: int, epoch: int, start: int = 0,
                   shuffle: bool = True) -> Iterator[tuple[int, TrainSample]]:
        if shuffle:
            raws: Iterator[RawSample] = iter_epoch_raw(self.shards, seed=seed, epoch=epoch,
                                                       shuffle_buffer=self.shuffle_buffer)
        else:
            raws = (raw for shard in self.shards for raw in iter_raw_samples(shard))
        for position, raw in enumerate(raws):
            if position < start:  # skipped samples are read but never decoded
                continue
            sample = decode_or_skip(raw)
            if sample is not None:
                yield position, sample

    def __iter__(self) -> Iterator[TrainSample]:
        return iter_shard_samples(self.shards)


DataSource = ManifestSource | ShardSource


def decode_or_skip(raw: RawSample) -> TrainSample | None:
    """Decode a shard sample, or warn and return None when it is damaged."""
    try:
        return decode_sample(raw)
    except Exception as exc:  # any decoding failure of one sample must not end a long run
        warnings.warn(f"skipping undecodable sample {raw.key!r} in {raw.shard}: "
                      f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", stacklevel=2)
        return None


def open_source(spec: str | Path | Sequence[str | Path], split: str | None = None,
                shuffle_buffer: int = 1000) -> DataSource:
    """A manifest file (``.csv``/``.parquet``) or shards (``.tar`` files, a directory, a brace range)."""
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    if not specs:
        raise InputError("no training data given")
    first = str(specs[0])
    if len(specs) == 1 and first.lower().endswith((".csv", ".parquet", ".pq", ".tsv")):
        return ManifestSource.from_path(first, split=split)
    return ShardSource(specs, shuffle_buffer=shuffle_buffer)
