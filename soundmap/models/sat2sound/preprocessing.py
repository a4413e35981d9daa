"""Sat2Sound inputs: audio clips → 10 s at 32 kHz, and the FlanT5 text encoder + tokenizer.

Audio (the authors' feature script): channels averaged → torchaudio's default resampler to
32 kHz (re-derived in :mod:`soundmap.preprocess.audio`) → one **10 s** segment (320,000 samples):
a shorter clip is zero-padded at the end; a longer one is cut from the **start** here. (The
authors' loader picks a random start for longer clips although its docstring says "from the
start"; a deterministic crop is what a map query needs, so soundmap takes the start.) The log-mel
itself is computed inside the model from the checkpoint's STFT kernels and mel matrix.

Text: ``google/flan-t5-large``'s tokenizer (pad to the longest in the batch, truncation on; EOS
counts as a real token) and ``transformers.T5EncoderModel`` (``last_hidden_state``, fp32, frozen).
It is not part of the Sat2Sound checkpoint. It is found, in order, at ``text_encoder=DIR``,
``$SOUNDMAP_T5_DIR``, ``<cache>/text-encoders/<repo>`` (saved there after the first download),
and otherwise downloaded from the Hugging Face hub into a temporary directory, from which only the
encoder and the tokenizer are saved into soundmap's cache (the seq2seq download is ~3 GB; the
encoder alone ~1.4 GB).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soundmap.errors import InputError, ModelError
from soundmap.models.sat2sound.configuration import MelConfig

#: Environment variable naming a local ``save_pretrained`` T5 encoder directory.
T5_DIR_ENV = "SOUNDMAP_T5_DIR"


# ----------------------------------------------------------------------------- audio
def clip_waveforms(inputs: Any, sample_rate: int | None, config: MelConfig) -> torch.Tensor:
    """Audio paths / waveforms / (waveform, rate) pairs → (B × 320,000) float32 at 32 kHz."""
    from soundmap.preprocess.audio import _as_array, _as_batch, _is_pair, load_audio, resample, to_mono

    rows = []
    for item in _as_batch(inputs):
        if isinstance(item, (str, os.PathLike)):
            waveform, rate = load_audio(item)
        elif _is_pair(item):
            waveform, rate = to_mono(_as_array(item[0])), int(item[1])
        else:
            if sample_rate is None:
                raise InputError("raw waveforms need sample_rate= (or pass (waveform, sample_rate) pairs)")
            waveform, rate = to_mono(_as_array(item)), int(sample_rate)
        resampled = np.asarray(resample(waveform, rate, config.sample_rate), dtype=np.float32)
        rows.append(fit_clip(resampled, config.clip_samples))
    return torch.from_numpy(np.stack(rows))


def fit_clip(waveform: np.ndarray, samples: int) -> np.ndarray:
    """Exactly ``samples`` long: zero-padded at the end, or the first ``samples``."""
    if waveform.shape[0] >= samples:
        return waveform[:samples]
    return np.pad(waveform, (0, samples - waveform.shape[0]))


# ----------------------------------------------------------------------------- text
def t5_cache_dir(repo_id: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where soundmap keeps the encoder-only copy of ``repo_id``."""
    from soundmap.paths import cache_dir as cache_root

    return cache_root(cache_dir) / "text-encoders" / repo_id.replace("/", "--")


def _load_local(directory: Path) -> tuple[Any, Any]:
    from transformers import AutoTokenizer, T5EncoderModel

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        encoder = T5EncoderModel.from_pretrained(str(directory))
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot load a T5 encoder from {directory} ({first}); give a directory written by "
                         f"save_pretrained holding the tokenizer and the encoder") from None
    return tokenizer, encoder


def _download_encoder(repo_id: str, target: Path) -> None:
    """Fetch ``repo_id`` from the hub into a temporary directory and keep only the encoder and
    tokenizer (written to ``target`` atomically by renaming a finished sibling directory)."""
    from transformers import AutoTokenizer, T5EncoderModel

    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".t5-download.", dir=target.parent))
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(repo_id, cache_dir=str(scratch))
            encoder = T5EncoderModel.from_pretrained(repo_id, cache_dir=str(scratch))
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelError(f"cannot fetch the text encoder {repo_id} ({first}); connect to the internet once, "
                             f"or set {T5_DIR_ENV} to a local save_pretrained T5 encoder") from None
        tokenizer.save_pretrained(str(staging))
        encoder.save_pretrained(str(staging))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)


def load_text_encoder(repo_id: str, text_encoder: str | os.PathLike | None = None,
                      cache_dir: str | os.PathLike | None = None) -> tuple[Any, Any]:
    """(tokenizer, frozen fp32 ``T5EncoderModel`` in eval mode), found as the module docstring says."""
    explicit = text_encoder or os.environ.get(T5_DIR_ENV)
    if explicit:
        directory = Path(explicit).expanduser()
        if not directory.is_dir():
            raise ModelError(f"text encoder directory {directory} does not exist; give a save_pretrained T5 encoder")
    else:
        directory = t5_cache_dir(repo_id, cache_dir)
        if not (directory / "config.json").is_file():
            _download_encoder(repo_id, directory)
    tokenizer, encoder = _load_local(directory)
    encoder = encoder.float().eval()
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    return tokenizer, encoder


def tokenize(tokenizer: Any, texts: str | Sequence[str]) -> dict[str, torch.Tensor]:
    """The authors' call: pad to the longest in the batch, truncate at the tokenizer's limit."""
    batch = [texts] if isinstance(texts, str) else list(texts)
    if not batch or any(not isinstance(t, str) for t in batch):
        raise InputError("encode_text needs one or more strings")
    out = tokenizer(batch, padding=True, truncation=True, return_tensors="pt")
    return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}
