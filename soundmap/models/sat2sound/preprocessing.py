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
and otherwise downloaded through :mod:`soundmap.hub` (``HF_ENDPOINT``, offline switches), after
which only the encoder and the tokenizer are kept, in soundmap's cache (the seq2seq download is
~3 GB; the encoder alone ~1.4 GB).
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


#: Files of a T5 repository needed for the encoder + tokenizer (no TF/Flax/PyTorch-bin copies).
T5_PATTERNS = ["config.json", "*.safetensors", "*.safetensors.index.json", "tokenizer*", "special_tokens_map.json",
               "spiece.model"]


def _download_encoder(repo_id: str, target: Path) -> None:
    """Fetch ``repo_id`` through :mod:`soundmap.hub` and keep only the encoder and tokenizer,
    written to ``target`` atomically (a finished sibling directory renamed into place). A
    snapshot that this call downloaded is removed from the Hugging Face cache afterwards: it holds
    the whole seq2seq model (~3 GB), of which only the encoder (~1.4 GB) is kept."""
    from soundmap.hub import hub_snapshot

    was_cached = _cached_snapshot(repo_id)
    snapshot = hub_snapshot(repo_id, allow_patterns=T5_PATTERNS)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenizer, encoder = _load_local(snapshot)
        tokenizer.save_pretrained(str(staging))
        encoder.save_pretrained(str(staging))
        del encoder
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not was_cached:
        _drop_from_hf_cache(repo_id, snapshot)


def _cached_snapshot(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    from soundmap.hub import hub_settings

    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=hub_settings().cache_dir)
    return isinstance(found, str)


def _drop_from_hf_cache(repo_id: str, snapshot: Path) -> None:
    """Delete the downloaded revision (its snapshot and blobs) through huggingface_hub's cache API."""
    from huggingface_hub import scan_cache_dir

    from soundmap.hub import hub_settings

    try:
        info = scan_cache_dir(hub_settings().cache_dir)
        commits = {rev.commit_hash for repo in info.repos if repo.repo_id == repo_id for rev in repo.revisions
                   if Path(rev.snapshot_path) == snapshot}
        if commits:
            info.delete_revisions(*commits).execute()
    except (OSError, ValueError):
        pass  # the encoder copy is complete; a leftover download only costs disk


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
