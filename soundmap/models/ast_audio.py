"""Audio Spectrogram Transformer (AST) embeddings of recordings, as the cross-modal study uses them.

The study (cross-modal urban sensing, §3.3 and §4.1) cuts every recording into 10-second
segments — AST's input length (1024 frames of 10 ms ≈ 10.24 s of 16 kHz audio, 128 log-Mel bins)
— and treats AST's 768-d output as the recording's sound feature. It does not say how the
segments of one recording are combined; soundmap takes the **mean of the segments' pooled
outputs** (``ASTModel``'s ``pooler_output``: the mean of its [CLS] and distillation tokens after
the final layer norm), so a recording's embedding is::

    z_AST(recording) = 1/S · Σ_s pooler_output(log-Mel(segment_s))

Segments are consecutive, non-overlapping ``SEGMENT_SECONDS`` windows from the start; a trailing
remainder shorter than one segment is dropped (it would be zero-padded to 10 s by the feature
extractor, diluting it with silence), so a recording shorter than one segment is an error.
Audio is decoded and averaged to mono with soundmap's decoder and resampled to 16 kHz with its
windowed-sinc resampler (:mod:`soundmap.preprocess.audio`).

torch/transformers are imported inside functions (heavy; ``--help`` must not pay for them).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AudioError, ModelError

AST_SAMPLE_RATE = 16_000
SEGMENT_SECONDS = 10.0


def segment_waveform(waveform: np.ndarray, sample_rate: int, seconds: float = SEGMENT_SECONDS) -> np.ndarray:
    """Consecutive non-overlapping segments of ``seconds`` (S × L); the remainder is dropped.

    Raises :class:`AudioError` when the clip is shorter than one segment.
    """
    length = int(round(seconds * sample_rate))
    wave = np.asarray(waveform, dtype=np.float32).ravel()
    count = wave.size // length
    if count == 0:
        raise AudioError(f"audio is {wave.size / sample_rate:.2f} s long, shorter than one {seconds:g} s "
                         f"AST segment; give recordings of at least {seconds:g} s")
    return wave[:count * length].reshape(count, length)


def pool_segments(segment_embeddings: np.ndarray) -> np.ndarray:
    """A recording's embedding: the mean of its segments' pooled outputs (S × D → D)."""
    return np.asarray(segment_embeddings, dtype=np.float64).mean(axis=0)


class ASTEncoder:
    """``ASTFeatureExtractor`` + ``ASTModel`` from a local snapshot directory (see :mod:`.hub`)."""

    def __init__(self, directory: str | os.PathLike, device: str = "cpu") -> None:
        from transformers import ASTFeatureExtractor, ASTModel

        self.directory = Path(directory)
        try:
            self.extractor = ASTFeatureExtractor.from_pretrained(str(self.directory), local_files_only=True)
            self.model = ASTModel.from_pretrained(str(self.directory), local_files_only=True).eval().to(device)
        except (OSError, ValueError) as err:
            raise ModelError(f"AST files in {self.directory} are unreadable ({str(err).splitlines()[0]}); "
                             "delete them from the Hugging Face cache and retry") from None
        if int(self.extractor.sampling_rate) != AST_SAMPLE_RATE:
            raise ModelError(f"AST feature extractor in {self.directory} expects {self.extractor.sampling_rate} Hz, "
                             f"not the study's {AST_SAMPLE_RATE} Hz")
        self.device = device

    def segment_embeddings(self, segments: np.ndarray, batch: int = 8) -> np.ndarray:
        """S × D pooled outputs of S segments of 16 kHz audio."""
        import torch

        outs = []
        for start in range(0, len(segments), batch):
            chunk = [np.asarray(s, dtype=np.float32) for s in segments[start:start + batch]]
            features = self.extractor(chunk, sampling_rate=AST_SAMPLE_RATE, return_tensors="pt")
            with torch.no_grad():
                pooled = self.model(input_values=features["input_values"].to(self.device)).pooler_output
            outs.append(pooled.detach().cpu().numpy().astype(np.float64))
        return np.concatenate(outs)

    def embed_waveform(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """One recording's D-vector: resample to 16 kHz, cut, embed the segments, average."""
        from ..preprocess.audio import resample

        wave = resample(np.asarray(waveform, dtype=np.float32), int(sample_rate), AST_SAMPLE_RATE)
        return pool_segments(self.segment_embeddings(segment_waveform(np.asarray(wave), AST_SAMPLE_RATE)))

    def embed_files(self, paths: Sequence[str | os.PathLike], progress_desc: str = "AST audio embeddings") -> np.ndarray:
        """N × D embeddings of audio files (an undecodable or too short file is a one-line error)."""
        from ..preprocess.audio import load_audio
        from ..progress import progress

        rows = []
        for path in progress(list(paths), desc=progress_desc, unit="recording"):
            wave, rate = load_audio(path)
            try:
                rows.append(self.embed_waveform(wave, rate))
            except AudioError as err:
                raise AudioError(f"{path}: {err}") from None
        return np.stack(rows)


def load_ast(device: str = "cpu") -> ASTEncoder:
    """The study's AST (``aux_models.yaml`` entry ``ast``), downloaded on first use."""
    from .auxiliary import fetch_aux

    return ASTEncoder(fetch_aux("ast"), device=device)


def describe() -> dict[str, Any]:
    """What the JSON report says about the audio embedding."""
    return {"encoder": "AST (ASTModel pooler_output)", "sample_rate": AST_SAMPLE_RATE,
            "segment_seconds": SEGMENT_SECONDS,
            "pooling": "mean of the pooled outputs of consecutive non-overlapping 10 s segments; "
                       "a remainder shorter than 10 s is dropped"}
