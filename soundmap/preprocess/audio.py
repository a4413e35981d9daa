"""Audio decoding, resampling and CLAP mel features, as the reference prepares audio.

Reference pipeline (psm-reference.md, "Audio and text encoders"; ``clap_data_processor.py``):
decode → average channels to mono → resample to 48 kHz with torchaudio's default resampler →
HF ``ClapProcessor(max_length_s=10, padding="repeatpad", truncation="fusion")`` → features
B × 4 × 1001 × 64 and ``is_longer``. torchaudio is not available beside torch 2.13, so its
default resampler (windowed sinc, Hann window) is re-derived here from its formula.

Mel features need no model weights: HF's ``ClapFeatureExtractor`` is built from the CLAP files'
``preprocessor_config.json`` when present, otherwise from the same settings written in code.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from typing import Literal, Union

import numpy as np
import soundfile
import torch

from soundmap.errors import AudioError, InputError

#: Sample rate the CLAP audio tower was trained at.
CLAP_SAMPLE_RATE = 48_000
#: Formats soundfile (libsndfile ≥ 1.1) decodes and soundmap tests.
SUPPORTED_FORMATS = "wav, flac, ogg (vorbis/opus), mp3 and the other formats libsndfile reads"
#: ``laion/clap-htsat-fused``'s ``preprocessor_config.json`` settings, used when that file is absent.
CLAP_FEATURE_SETTINGS: dict[str, object] = {
    "feature_size": 64,
    "sampling_rate": CLAP_SAMPLE_RATE,
    "hop_length": 480,
    "max_length_s": 10,
    "fft_window_size": 1024,
    "padding_value": 0.0,
    "return_attention_mask": False,
    "frequency_min": 50,
    "frequency_max": 14_000,
    "top_db": None,
    "truncation": "fusion",
    "padding": "repeatpad",
}
#: Largest resampling kernel (phases × taps) built; beyond it the two rates share too small a
#: factor (e.g. 44 099 Hz → 48 kHz) for a polyphase filter to be reasonable.
MAX_KERNEL_ELEMENTS = 40_000_000
#: Longest clip featurized: the fusion path holds the whole clip's float64 STFT in memory
#: (≈ 3.4 MB per second of audio), so a field recording of hours would exhaust RAM.
MAX_CLIP_SECONDS = 600.0
#: More channels than this on both axes means the array is not one clip.
MAX_CHANNELS = 16

AudioInput = Union[str, os.PathLike, tuple[np.ndarray | torch.Tensor, int], np.ndarray, torch.Tensor]


# ----------------------------------------------------------------------------- decoding


def load_audio(path: str | os.PathLike, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode any file libsndfile reads → (float32 mono waveform in [-1, 1], sample rate).

    Channels are averaged, as the reference does (``track.mean(axis=0)``). Integer PCM is scaled
    by 1/32768 (16-bit) like torchaudio's loader. With ``max_seconds``, the duration the file's
    header declares is checked before anything is decoded (a 2-hour WAV would need gigabytes).
    """
    if max_seconds is not None:
        check_declared_duration(path, max_seconds)
    try:
        data, sample_rate = soundfile.read(os.fspath(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as exc:
        raise AudioError(
            f"cannot decode audio file {path}: {_first_line(exc)}; supported formats: {SUPPORTED_FORMATS}"
        ) from exc
    if data.shape[0] == 0:
        raise AudioError(f"audio file {path} contains no samples; give a clip of at least a few milliseconds")
    return to_mono(data), int(sample_rate)


def too_long_message(name: object, seconds: float, max_seconds: float) -> str:
    """The one line for a clip longer than queries allow."""
    return (f"{name} is {seconds:.0f} s long; queries are limited to {max_seconds:.0f} s "
            f"(the whole-clip mel needs ~3 MB per second): trim it, e.g. `ffmpeg -i in -t "
            f"{max_seconds:.0f} out.wav`")


def check_declared_duration(path: str | os.PathLike, max_seconds: float) -> None:
    """AudioError when the header of ``path`` declares more than ``max_seconds`` (soundfile.info
    reads the header only). Files whose header cannot be read are left to the decoder's error."""
    try:
        header = soundfile.info(os.fspath(path))
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError, TypeError):
        return
    if header.samplerate > 0 and 0 < header.frames / header.samplerate > max_seconds:
        raise AudioError(too_long_message(path, header.frames / header.samplerate, max_seconds))


def to_mono(data: np.ndarray) -> np.ndarray:
    """1-D, frames × channels (soundfile) or channels × frames (torchaudio) → float32 1-D mean
    over channels. The channel axis is the short one (at most 16 channels)."""
    array = np.asarray(data, dtype=np.float32)
    if array.ndim == 1:
        return array
    if array.ndim != 2 or min(array.shape) > MAX_CHANNELS:
        raise InputError(f"audio must be 1-D or frames × channels, got shape {array.shape}")
    channel_axis = 1 if array.shape[1] <= array.shape[0] else 0
    return array.mean(axis=channel_axis, dtype=np.float32)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# ----------------------------------------------------------------------------- resampling


def sinc_resample_kernel(
    orig_sr: int, new_sr: int, lowpass_filter_width: int = 6, rolloff: float = 0.99,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, int]:
    """Polyphase windowed-sinc kernel of torchaudio's default ``resample`` (``sinc_interp_hann``).

    With o = orig/gcd, n = new/gcd (time measured in units of gcd⁻¹ s, so input sample k sits at
    k/o and output sample j at j/n) and cutoff f_c = rolloff · min(o, n):
      width = ceil(lowpass_filter_width · o / f_c) input samples on each side;
      for output phase i ∈ [0, n) and tap m ∈ [−width, width + o):
        t = clamp((m/o − i/n) · f_c, −W, W)            (W = lowpass_filter_width, zero crossings)
        h[i, m] = (f_c / o) · sinc(π t) · cos²(π t / (2W))     (sinc(0) = 1)
    i.e. an ideal low-pass at f_c sampled at the input rate, tapered by a Hann window reaching
    zero W zero-crossings away. Returns (kernel n × (2·width + o), width).

    torchaudio builds the kernel in the *waveform's* dtype (float32 for the reference's audio),
    with the operations in the order used here; ``resample`` passes the signal's dtype so the
    taps are the reference's bit for bit (a float64 kernel differs by up to 1e-5 at 44.1 kHz).
    """
    divisor = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // divisor, int(new_sr) // divisor
    cutoff = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / cutoff)
    taps = torch.arange(-width, width + orig, dtype=dtype)[None, :] / orig
    t = torch.arange(0, -new, -1, dtype=dtype)[:, None] / new + taps
    t = (t * cutoff).clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    safe_t = torch.where(t == 0, torch.ones_like(t), t)
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(safe_t) / safe_t)
    return sinc * (window * (cutoff / orig)), width


def resample(
    waveform: np.ndarray | torch.Tensor, orig_sr: int, new_sr: int = CLAP_SAMPLE_RATE
) -> np.ndarray | torch.Tensor:
    """Resample the last axis from ``orig_sr`` to ``new_sr`` like ``torchaudio.functional.resample``
    with its defaults (Hann-windowed sinc, lowpass_filter_width 6, rolloff 0.99).

    Output length is ceil(len · new / orig). Each output phase is a strided convolution of the
    input padded by ``width`` before and ``width + o`` after (see :func:`sinc_resample_kernel`);
    phases are then interleaved. The kernel is computed and applied in the input's precision, as
    torchaudio does. Returns the same kind (numpy / torch) as given.
    """
    if orig_sr <= 0 or new_sr <= 0:
        raise InputError(f"sample rates must be positive, got {orig_sr} → {new_sr}")
    is_numpy = isinstance(waveform, np.ndarray)
    signal = torch.from_numpy(np.ascontiguousarray(waveform)) if is_numpy else waveform
    if not torch.is_floating_point(signal):
        signal = signal.to(torch.float32)
    if orig_sr == new_sr:
        return waveform
    divisor = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // divisor, int(new_sr) // divisor
    if new * (orig + 2 * math.ceil(6 * orig / (0.99 * min(orig, new)))) > MAX_KERNEL_ELEMENTS:
        raise AudioError(
            f"cannot resample {orig_sr} Hz to {new_sr} Hz exactly (the rates share no useful factor); "
            f"convert the file to {new_sr} Hz first, e.g. `ffmpeg -i in -ar {new_sr} out.wav`"
        )
    kernel, width = sinc_resample_kernel(orig_sr, new_sr, dtype=signal.dtype)
    shape = signal.shape
    flat = signal.reshape(-1, 1, shape[-1])
    padded = torch.nn.functional.pad(flat, (width, width + orig))
    phases = torch.nn.functional.conv1d(padded, kernel[:, None, :], stride=orig)
    interleaved = phases.transpose(1, 2).reshape(flat.shape[0], -1)
    target_length = math.ceil(new * shape[-1] / orig)
    out = interleaved[:, :target_length].reshape(*shape[:-1], target_length)
    return out.numpy() if is_numpy else out


# ----------------------------------------------------------------------------- CLAP features


def build_feature_extractor(clap_files: str | os.PathLike | None = None):
    """HF ``ClapFeatureExtractor`` from ``preprocessor_config.json`` of the CLAP files when one is
    found, otherwise from :data:`CLAP_FEATURE_SETTINGS` (the same values; no download needed)."""
    from transformers import ClapFeatureExtractor

    from soundmap.preprocess.text import find_clap_files

    directory = find_clap_files(clap_files, required=("preprocessor_config.json",))
    if directory is not None:
        try:
            return ClapFeatureExtractor.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise AudioError(f"unreadable {directory / 'preprocessor_config.json'} ({exc}); delete it "
                             "or fetch it again with `soundmap models clap-files`") from exc
    return ClapFeatureExtractor(**CLAP_FEATURE_SETTINGS)


class AudioFeaturizer:
    """Paths or waveforms → CLAP fusion features, as the reference computes them.

    ``is_longer_policy``:
      * ``"reference"`` (default): ``is_longer`` is True for **every** clip. The authors' data
        loader hard-codes ``audio_is_longer = True`` for all samples (dataloader.py), and their
        per-clip ``ClapProcessor`` call would set it anyway (HF marks one random clip of a batch
        with no long clip as longer; in a batch of one that is the clip). The released
        checkpoints were trained and evaluated that way, so the fused AFF path always runs.
      * ``"duration"``: True only when the clip really exceeds 10 s (HF's per-clip meaning,
        without its random batch-level override).

    Reproducibility: for clips longer than 10 s the fusion path draws three chunk starts with
    numpy's *global* RNG (one from each third of the admissible range). The reference draws
    them unseeded (and stored five draws per training clip). Here the global RNG is seeded with
    ``seed`` before each clip and restored afterwards, so a clip always gives the same features
    whatever its batch; ``seed=None`` leaves the RNG alone (reference behaviour).

    ``max_seconds`` (default 600) refuses longer clips with an AudioError instead of running out
    of memory (the reference has no limit; None removes it).
    """

    def __init__(
        self,
        clap_files: str | os.PathLike | None = None,
        *,
        seed: int | None = 0,
        is_longer_policy: Literal["reference", "duration"] = "reference",
        max_seconds: float | None = MAX_CLIP_SECONDS,
    ) -> None:
        if is_longer_policy not in ("reference", "duration"):
            raise ValueError(f"unknown is_longer_policy {is_longer_policy!r}")
        self.extractor = build_feature_extractor(clap_files)
        self.sample_rate = int(self.extractor.sampling_rate)
        self.max_samples = int(self.extractor.nb_max_samples)
        self.hop_length = int(self.extractor.hop_length)
        self.seed = seed
        self.is_longer_policy = is_longer_policy
        self.max_seconds = max_seconds

    def __call__(
        self, inputs: AudioInput | Sequence[AudioInput], sample_rate: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Featurize paths, ``(waveform, sample_rate)`` pairs, or bare waveforms sharing
        ``sample_rate`` → ``input_features`` B × 4 × 1001 × 64 float32, ``is_longer`` B bool."""
        waveforms = [self._waveform_at_48k(item, sample_rate) for item in _as_batch(inputs)]
        features, longer = zip(*(self._features(w) for w in waveforms))
        return {
            "input_features": torch.from_numpy(np.stack(features)).to(torch.float32),
            "is_longer": torch.tensor(longer, dtype=torch.bool),
        }

    def _waveform_at_48k(self, item: AudioInput, sample_rate: int | None) -> np.ndarray:
        if isinstance(item, (str, os.PathLike)):
            waveform, rate = load_audio(item, max_seconds=self.max_seconds)
        elif _is_pair(item):
            waveform, rate = _as_array(item[0]), int(item[1])
        else:
            if sample_rate is None:
                raise InputError("raw waveforms need sample_rate= (or pass (waveform, sample_rate) pairs)")
            waveform, rate = _as_array(item), int(sample_rate)
        name = item if isinstance(item, (str, os.PathLike)) else "an audio clip"
        if waveform.size == 0:
            raise AudioError("an audio clip has no samples")
        if not np.isfinite(waveform).all():  # NaN in, NaN embedding out: an all-nodata map
            raise AudioError(f"{name} has NaN or infinite samples; re-export it as ordinary PCM audio")
        seconds = max(waveform.shape) / rate
        if self.max_seconds is not None and seconds > self.max_seconds:
            raise AudioError(too_long_message(name, seconds, self.max_seconds))
        return np.asarray(resample(to_mono(waveform), rate, self.sample_rate), dtype=np.float32)

    def _features(self, waveform: np.ndarray) -> tuple[np.ndarray, bool]:
        """One clip → (4 × 1001 × 64 mel, is_longer). The extractor sees float64 like the
        reference's torch-tensor input (HF converts it with ``np.asarray(..., float64)``)."""
        saved = np.random.get_state() if self.seed is not None else None
        try:
            if self.seed is not None:
                np.random.seed(self.seed)
            out = self.extractor(
                waveform.astype(np.float64),
                sampling_rate=self.sample_rate,
                max_length=self.max_samples,
                padding="repeatpad",
                truncation="fusion",
                return_tensors="np",
            )
        finally:
            if saved is not None:
                np.random.set_state(saved)
        mel = np.asarray(out["input_features"][0], dtype=np.float32)
        if self.is_longer_policy == "reference":
            return mel, True
        return mel, self.is_truly_longer(waveform.shape[0])

    def is_truly_longer(self, n_samples: int) -> bool:
        """Whether HF's fusion path (chunks + shrunk whole) applies: more than 10 s *and* more mel
        frames (1 + n // hop) than one chunk holds; a clip within one hop of 10 s is treated as
        fitting, as HF does."""
        chunk_frames = self.max_samples // self.hop_length + 1
        return n_samples > self.max_samples and n_samples // self.hop_length + 1 != chunk_frames


def _is_pair(item: object) -> bool:
    """``(waveform, sample_rate)``, as opposed to a tuple of paths."""
    return isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], numbers.Integral)


def _as_batch(inputs: AudioInput | Sequence[AudioInput]) -> list[AudioInput]:
    if isinstance(inputs, (str, os.PathLike, torch.Tensor)) or _is_pair(inputs):
        if isinstance(inputs, torch.Tensor) and inputs.ndim == 2:
            return list(inputs)
        return [inputs]
    if isinstance(inputs, np.ndarray):
        return [inputs] if inputs.ndim == 1 else list(inputs)
    batch = list(inputs)
    if not batch:
        raise InputError("no audio given")
    return batch


def _as_array(waveform: np.ndarray | torch.Tensor | Sequence[float]) -> np.ndarray:
    if isinstance(waveform, torch.Tensor):
        return waveform.detach().cpu().numpy()
    return np.asarray(waveform, dtype=np.float32)


__all__ = [
    "AudioFeaturizer",
    "AudioError",
    "CLAP_SAMPLE_RATE",
    "build_feature_extractor",
    "load_audio",
    "resample",
    "sinc_resample_kernel",
    "to_mono",
]
