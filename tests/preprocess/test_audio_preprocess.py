"""Audio decoding, the torchaudio-style resampler and CLAP fusion features (soundmap.preprocess.audio)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import torch

from soundmap.errors import AudioError, InputError
from soundmap.preprocess.audio import (
    AudioFeaturizer,
    load_audio,
    resample,
    sinc_resample_kernel,
    to_mono,
)
from tests.fixtures.audio import sine_mix

# ----------------------------------------------------------------------------- decoding


def test_every_format_rate_and_channel_count_decodes_to_mono_of_the_right_length(audio_clips):
    assert {c.extension for c in audio_clips} == {"wav", "flac", "ogg", "mp3"}
    for clip in audio_clips:
        waveform, rate = load_audio(clip.path)
        assert rate == clip.sample_rate, clip.path
        assert waveform.dtype == np.float32 and waveform.ndim == 1, clip.path
        assert len(waveform) == round(clip.seconds * clip.sample_rate), clip.path  # mp3 decodes gaplessly
        # stereo files hold (mix, mix/2): their channel mean is 0.75 × the mix
        expected = sine_mix(clip.seconds, clip.sample_rate) * (0.75 if clip.channels == 2 else 1.0)
        if clip.extension in ("wav", "flac"):  # lossless 16-bit: quantisation error ≤ 1/32768
            np.testing.assert_allclose(waveform, expected, atol=1e-4)
        else:  # lossy: same loudness (RMS of two 0.3-amplitude sines = 0.3) and the same 440 Hz peak
            interior = waveform[clip.sample_rate // 10 : -clip.sample_rate // 10]
            expected_rms = 0.3 * (0.75 if clip.channels == 2 else 1.0)
            assert np.sqrt(np.mean(interior**2)) == pytest.approx(expected_rms, rel=0.1), clip.path
            spectrum = np.abs(np.fft.rfft(interior))
            freqs = np.fft.rfftfreq(len(interior), 1 / clip.sample_rate)
            assert abs(freqs[np.argmax(spectrum)] - 440) < 5 or abs(freqs[np.argmax(spectrum)] - 1000) < 5


def test_missing_and_undecodable_files_are_one_line_audio_errors(tmp_path):
    missing = tmp_path / "nowhere.wav"
    with pytest.raises(AudioError) as info:
        load_audio(missing)
    message = str(info.value)
    assert "nowhere.wav" in message and "mp3" in message and "\n" not in message

    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioError, match="garbage.mp3"):
        load_audio(garbage)


def test_to_mono_averages_channels_on_either_axis():
    frames_by_channels = np.array([[1.0, 3.0], [2.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(to_mono(frames_by_channels), [2.0, 3.0, 0.0])
    np.testing.assert_array_equal(to_mono(frames_by_channels.T), [2.0, 3.0, 0.0])


# ----------------------------------------------------------------------------- resampling


def test_sinc_kernel_taps_match_the_formula_by_hand():
    # 24 kHz → 48 kHz: o = 1, n = 2, f_c = 0.99, width = ceil(6 / 0.99) = 7 → taps m = −7 … 7.
    kernel, width = sinc_resample_kernel(24_000, 48_000)
    assert width == 7 and kernel.shape == (2, 15)
    # phase 0, m = 0: t = 0 → f_c / o = 0.99
    assert kernel[0, 7].item() == pytest.approx(0.99, abs=1e-12)
    # phase 0, m = 1: t = 0.99 → 0.99 · sin(0.99π)/(0.99π) · cos²(0.99π/12) = 0.0093416207602
    assert kernel[0, 8].item() == pytest.approx(0.0093416207602, abs=1e-12)
    # phase 1, m = 0 and 1: t = ∓0.495 → 0.99 · sin(0.495π)/(0.495π) · cos²(0.495π/12) = 0.6259110280245
    assert kernel[1, 7].item() == pytest.approx(0.6259110280245, abs=1e-12)
    assert kernel[1, 8].item() == pytest.approx(0.6259110280245, abs=1e-12)
    # phase 0, m = 7: t = 6.93 is clamped to 6 zero crossings, where the Hann window is 0
    assert abs(kernel[0, 14].item()) < 1e-30
    # 44.1 kHz → 48 kHz reduces by gcd 300 to o = 147, n = 160; width = ceil(6·147/145.53) = 7
    kernel, width = sinc_resample_kernel(44_100, 48_000)
    assert width == 7 and kernel.shape == (160, 2 * 7 + 147)


def test_float32_audio_is_resampled_with_a_float32_kernel_like_torchaudio():
    """torchaudio builds the kernel in the waveform's dtype. At 44.1 → 48 kHz (o = 147, n = 160),
    phase i = 104, tap m = 95: t = (95/147 − 104/160)·145.53 cancels catastrophically, so float32
    arithmetic (each step rounded to float32, by hand: 95/147 = 0.6462585, 104/160 = 0.65,
    t = −0.54449224) gives the tap 0.56154215, while exact arithmetic gives 0.5615319210.
    Resampling a unit impulse at input sample 95 + 147 returns that tap at output 160 + 104."""
    impulse = np.zeros(1000, dtype=np.float32)
    impulse[95 + 147] = 1.0
    tap = float(resample(impulse, 44_100, 48_000)[160 + 104])
    assert tap == pytest.approx(0.56154215, abs=2e-7)
    assert abs(tap - 0.5615319210282689) > 5e-6
    kernel64, _ = sinc_resample_kernel(44_100, 48_000)  # float64 stays available (and exact)
    assert kernel64.dtype == torch.float64 and kernel64[104, 95 + 7].item() == pytest.approx(0.5615319210282689,
                                                                                              abs=1e-12)


@pytest.mark.parametrize(
    ("n", "orig", "new", "expected"),
    [(1000, 16_000, 48_000, 3000), (44_100, 44_100, 48_000, 48_000), (1001, 44_100, 48_000, 1090),
     (1001, 48_000, 16_000, 334), (100, 22_050, 48_000, 218), (7, 8_000, 48_000, 42)],
)
def test_resampled_length_is_ceil_n_new_over_orig(n, orig, new, expected):
    assert len(resample(np.zeros(n, dtype=np.float32), orig, new)) == expected


@pytest.mark.parametrize(("orig", "new", "freq"), [(16_000, 48_000, 440.0), (44_100, 48_000, 1000.0),
                                                   (48_000, 16_000, 5000.0)])
def test_resampling_a_sinusoid_keeps_its_amplitude_and_frequency(orig, new, freq):
    t = np.arange(orig) / orig
    x = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    y = resample(x, orig, new)
    expected = 0.5 * np.sin(2 * np.pi * freq * np.arange(len(y)) / new)
    interior = slice(new // 10, -new // 10)  # edges see the zero padding
    np.testing.assert_allclose(y[interior], expected[interior], atol=3e-3)


def test_downsampling_removes_tones_above_the_new_nyquist():
    t = np.arange(48_000) / 48_000
    y = resample(np.sin(2 * np.pi * 10_000 * t).astype(np.float32), 48_000, 16_000)  # Nyquist 8 kHz
    assert np.abs(y[1600:-1600]).max() < 0.02


def test_resample_agrees_with_scipy_resample_poly_in_the_passband():
    x = sine_mix(1.0, 44_100, freqs=(220.0, 1500.0, 6000.0))
    ours = resample(x, 44_100, 48_000)
    theirs = scipy.signal.resample_poly(x.astype(np.float64), 160, 147)
    assert len(theirs) == len(ours)
    np.testing.assert_allclose(ours[4800:-4800], theirs[4800:-4800], atol=3e-3)


def test_rates_without_a_useful_common_factor_are_a_clear_audio_error():
    with pytest.raises(AudioError, match="44099 Hz"):
        resample(np.zeros(100, dtype=np.float32), 44_099, 48_000)


def test_resample_keeps_the_container_type_and_leading_axes():
    batch = torch.randn(3, 1600)
    out = resample(batch, 16_000, 48_000)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 4800)
    same = np.ones(10, dtype=np.float32)
    assert resample(same, 48_000, 48_000) is same


# ----------------------------------------------------------------------------- CLAP features

HOP = 480  # 10 ms at 48 kHz
CHUNK_FRAMES = 480_000 // HOP + 1  # 1001: 10 s, +1 from the centred STFT


@pytest.fixture(scope="module")
def featurizer(clap_files) -> AudioFeaturizer:
    """Built from the fixture's preprocessor_config.json (the real loading path)."""
    return AudioFeaturizer(clap_files, seed=0)


def rising_tone(seconds: float, db_per_second: float = 2.0) -> np.ndarray:
    """A 1 kHz sine at 48 kHz whose level rises linearly in dB (amplitude 10^((t−T)·r/20)), so
    the mel level at frame f is D0 + r·f/100: the frame's time can be read from its level."""
    t = np.arange(round(seconds * 48_000)) / 48_000
    envelope = 10 ** ((t - seconds) * db_per_second / 20)
    return (envelope * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)


def test_a_25_s_clip_takes_the_fusion_path(featurizer):
    out = featurizer([(rising_tone(25.0), 48_000)])
    features = out["input_features"]
    assert features.shape == (1, 4, CHUNK_FRAMES, 64) and features.dtype == torch.float32
    assert out["is_longer"].tolist() == [True]
    mel = features[0].numpy().astype(np.float64)
    band = int(np.argmax(mel[1].mean(axis=0)))  # the mel band holding 1 kHz
    level = mel[:, :, band]  # 4 × 1001 dB
    per_frame = 2.0 * HOP / 48_000  # 0.02 dB per 10 ms frame
    frames = np.arange(10, CHUNK_FRAMES - 10)
    # channel 0 is the whole 2501-frame mel (1 + 1_200_000/480) shrunk bilinearly to 1001 frames:
    # output frame i samples input frame (i + 0.5)·2501/1001 − 0.5, so its slope is 0.02·2501/1001 dB
    source = (frames + 0.5) * 2501 / 1001 - 0.5
    assert np.polyfit(frames, level[0, frames], 1)[0] == pytest.approx(per_frame * 2501 / 1001, rel=0.01)
    d0 = np.mean(level[0, frames] - per_frame * source)
    # channels 1–3 are 10 s chunks at 0.02 dB/frame whose starts lie in the thirds of the
    # admissible starts 0…1500: [0, 500], [501, 1000], [1001, 1500] (np.array_split of 1501)
    thirds = [(0, 500), (501, 1000), (1001, 1500)]
    starts = []
    for channel, (low, high) in zip((1, 2, 3), thirds):
        assert np.polyfit(frames, level[channel, frames], 1)[0] == pytest.approx(per_frame, rel=0.01)
        start = np.mean((level[channel, frames] - d0) / per_frame - frames)
        assert abs(start - round(start)) < 0.2
        assert low - 0.5 <= start <= high + 0.5, (channel, start)
        starts.append(round(start))
    # seed 0: the starts are numpy's seeded draws, one uniform choice per third, in order
    legacy_rng = np.random.RandomState(0)  # the global numpy RNG's algorithm, seeded with 0
    assert starts == [int(legacy_rng.choice(np.arange(low, high + 1))) for low, high in thirds]


def test_a_3_s_clip_is_repeat_padded_and_copied_to_four_channels(clap_files):
    duration_featurizer = AudioFeaturizer(clap_files, is_longer_policy="duration")
    clip = (sine_mix(3.0, 16_000), 16_000)  # 144 000 samples once resampled to 48 kHz
    out = duration_featurizer([clip])
    assert out["is_longer"].tolist() == [False]
    mel = out["input_features"][0].numpy()
    assert mel.shape == (4, CHUNK_FRAMES, 64)
    for channel in (1, 2, 3):
        np.testing.assert_array_equal(mel[channel], mel[0])
    # repeatpad: int(480 000 / 144 000) = 3 copies (432 000 samples) then 48 000 zeros.
    # Frames f and f + 300 (3 s / 10 ms) see identical samples while both 1024-sample windows,
    # centred on 480·f, stay inside the copies: 2 ≤ f ≤ 598.
    np.testing.assert_allclose(mel[0, 2:599], mel[0, 302:899], atol=1e-4)
    # windows entirely in the zero tail (480·f − 512 ≥ 432 000 → f ≥ 902) give the dB floor
    # 10·log10(1e-10) = −100
    np.testing.assert_array_equal(mel[0, 902:], -100.0)
    assert mel[0, 2:599].max() > -30  # the tone itself is loud


def test_reference_policy_marks_every_clip_longer(featurizer):
    # The authors' data loader feeds is_longer = True for every clip (see AudioFeaturizer).
    out = featurizer([(sine_mix(3.0, 48_000), 48_000), (rising_tone(12.0), 48_000)])
    assert out["is_longer"].tolist() == [True, True]


def test_is_longer_follows_hf_frame_rule_for_clips_near_10_s(featurizer):
    assert not featurizer.is_truly_longer(480_000)
    assert not featurizer.is_truly_longer(480_479)  # still 1001 frames: HF uses the whole clip
    assert featurizer.is_truly_longer(480_480)


def test_fusion_chunks_are_reproducible_and_leave_the_global_rng_alone(featurizer, clap_files):
    clip = [(rising_tone(25.0), 48_000)]
    np.random.seed(123)
    state_before = np.random.get_state()[1].copy()
    first = featurizer(clip)["input_features"]
    assert np.array_equal(np.random.get_state()[1], state_before)
    again = featurizer(clip)["input_features"]
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    other_seed = AudioFeaturizer(clap_files, seed=1)(clip)["input_features"]
    torch.testing.assert_close(first[:, 0], other_seed[:, 0], rtol=0, atol=0)  # the whole clip
    assert not torch.equal(first[:, 1:], other_seed[:, 1:])  # different random chunks


def test_paths_pairs_and_bare_waveforms_give_the_same_features(featurizer, write_audio):
    waveform = sine_mix(2.0, 16_000)
    path = write_audio("clip.flac", waveform, 16_000)
    from_path = featurizer([path])["input_features"]
    from_pair = featurizer([(load_audio(path)[0], 16_000)])["input_features"]
    from_bare = featurizer([load_audio(path)[0]], sample_rate=16_000)["input_features"]
    torch.testing.assert_close(from_path, from_pair, rtol=0, atol=0)
    torch.testing.assert_close(from_path, from_bare, rtol=0, atol=0)
    two = featurizer((path, path))  # a tuple of paths is a batch, not a (waveform, rate) pair
    assert two["input_features"].shape[0] == 2
    with pytest.raises(InputError, match="sample_rate"):
        featurizer([waveform])


def test_builtin_settings_equal_the_preprocessor_config(featurizer, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))  # no CLAP files anywhere
    builtin = AudioFeaturizer(seed=0)
    clip = [(rising_tone(15.0), 48_000)]
    torch.testing.assert_close(builtin(clip)["input_features"], featurizer(clip)["input_features"])
    assert math.isclose(builtin.extractor.frequency_min, 50) and builtin.extractor.frequency_max == 14_000


def test_clips_longer_than_the_limit_are_refused_with_the_fix(clap_files):
    short_limit = AudioFeaturizer(clap_files, max_seconds=2.0)
    with pytest.raises(AudioError, match="limited to 2 s") as info:
        short_limit([(np.zeros(3 * 16_000, dtype=np.float32), 16_000)])
    assert "ffmpeg" in str(info.value) and "\n" not in str(info.value)
    assert short_limit([(np.zeros(16_000, dtype=np.float32), 16_000)])["input_features"].shape[0] == 1
