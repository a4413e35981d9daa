"""Models and audio that would give an all-nodata or wrong map with exit 0: changed weights under
an unchanged recorded SHA-256, NaN weights, NaN audio samples, non-finite query embeddings, a
config.json with a wrong type, and a 2-hour WAV refused from its header alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import load_file, save_file

from soundmap.errors import AudioError, ConfigError, InputError, ModelError
from soundmap.models.integrity import STAMP_FILE
from soundmap.models.soundscape import load_model
from soundmap.preprocess.audio import MAX_CLIP_SECONDS, load_audio
from tests.fixtures.embed_workspace import TINY_MODEL


@pytest.fixture
def model_copy(tiny_model_builds: dict[str, Path], tmp_path: Path) -> Path:
    target = tmp_path / TINY_MODEL
    shutil.copytree(tiny_model_builds[TINY_MODEL], target)
    (target / STAMP_FILE).unlink(missing_ok=True)
    return target


def _poison(directory: Path) -> None:
    """Write NaN into one tensor, leaving config.json (and its recorded SHA-256) untouched."""
    weights = directory / "model.safetensors"
    state = load_file(str(weights))
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, str(weights))


def test_weights_changed_under_the_recorded_hash_are_refused(model_copy: Path) -> None:
    load_model(model_copy, "cpu")                     # passes and stamps
    assert (model_copy / STAMP_FILE).is_file()
    _poison(model_copy)
    with pytest.raises(ModelError, match="does not match the SHA-256 recorded"):
        load_model(model_copy, "cpu")


def test_nan_weights_are_refused_even_with_a_matching_hash(model_copy: Path) -> None:
    from soundmap.download import sha256_of

    _poison(model_copy)
    config = json.loads((model_copy / "config.json").read_text())
    config["weights_sha256"] = sha256_of(model_copy / "model.safetensors")
    (model_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="non-finite values"):
        load_model(model_copy, "cpu")


def test_the_hash_is_checked_once_per_file_change(model_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import soundmap.download as download

    calls = []
    original = download.sha256_of
    monkeypatch.setattr(download, "sha256_of", lambda path: calls.append(path) or original(path))
    load_model(model_copy, "cpu")
    load_model(model_copy, "cpu")
    assert len(calls) == 1
    (model_copy / "model.safetensors").touch()        # any change to the file: checked again
    load_model(model_copy, "cpu")
    assert len(calls) == 2


@pytest.mark.parametrize("change", [{"weights_sha256": ["x"]}, {"family": 7}, {"fc_dim": "big"}])
def test_config_json_with_a_wrong_type_is_one_line(model_copy: Path, change: dict) -> None:
    config = json.loads((model_copy / "config.json").read_text())
    bad = {**config, **change}
    (model_copy / "config.json").write_text(json.dumps(bad if "weights_sha256" not in change else [bad]))
    with pytest.raises((ModelError, ConfigError), match="config.json|model config"):
        load_model(model_copy, "cpu")


def test_nan_audio_samples_are_refused(tmp_path: Path, tiny_psm) -> None:
    path = tmp_path / "nan.wav"
    wave = np.sin(np.linspace(0, 100, 48000)).astype(np.float32)
    wave[100:200] = np.nan
    soundfile.write(path, wave, 48000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN or infinite samples"):
        tiny_psm.encode_audio([str(path)])


def test_non_finite_query_embeddings_are_refused(tiny_psm, tmp_path: Path) -> None:
    from soundmap.query.engine import encode_queries
    from soundmap.query.plan import QueryOptions, make_plan

    plan = make_plan(QueryOptions(out=tmp_path / "m.tif", texts=("birds",)), tiny_psm)
    with torch.no_grad():
        for parameter in tiny_psm.parameters():
            parameter.fill_(float("nan"))
    with pytest.raises(InputError, match="non-finite embedding"):
        encode_queries(tiny_psm, plan.queries)


def test_a_two_hour_wav_is_refused_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    seconds = 2 * 3600
    with soundfile.SoundFile(path, "w", samplerate=8000, channels=1, subtype="PCM_U8") as handle:
        block = np.zeros(8000 * 60, dtype=np.float32)
        for _ in range(seconds // 60):
            handle.write(block)
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(AudioError, match="7200 s long"):
        load_audio(path, max_seconds=MAX_CLIP_SECONDS)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10 * 2**20                          # the header only: not the 230 MB of samples
