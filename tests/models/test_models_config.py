"""ModelConfig JSON round trip and validation; device resolution; image input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from soundmap.errors import ConfigError, InputError
from soundmap.models.config import ModelConfig
from soundmap.models.soundscape import resolve_device


def test_config_json_round_trip_and_derived_facts() -> None:
    config = ModelConfig.tiny("psm", "bingmap", metadata=["hour", "latlon", "audio_source"], name="x")
    assert config.family == "bing" and config.gsd == 0.6
    assert config.metadata == ("audio_source", "latlon", "hour")  # reference token order
    assert config.metadata_type == "asource_latlong_time"
    assert (config.probabilistic, config.default_score, config.loss) == (True, "csd", "pcmepp")
    again = ModelConfig.from_json(config.to_json())
    assert again == config
    geoclap = ModelConfig.tiny("geoclap", "googleEarth", metadata=())
    assert (geoclap.probabilistic, geoclap.default_score, geoclap.metadata_type) == (False, "cosine", "none")


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="variant"):
        ModelConfig.tiny("pcme")
    with pytest.raises(ConfigError, match="weather"):
        ModelConfig.tiny(metadata=("month", "weather"))
    with pytest.raises(InputError, match="family"):
        ModelConfig.tiny(family="landsat")
    with pytest.raises(ConfigError):
        ModelConfig.from_json("{not json")
    with pytest.raises(ConfigError):
        ModelConfig.from_dict({"variant": "psm", "family": "sentinel", "colour": "red"})


def test_device_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(InputError):
        resolve_device("gpu-please")


def test_image_input_validation(tiny_psm_model) -> None:
    with pytest.raises(InputError):
        tiny_psm_model.encode_image(np.zeros((2, 64, 64), dtype=np.uint8), 1)
    with pytest.raises(InputError, match="zoom levels"):
        tiny_psm_model.encode_image(np.zeros((2, 224, 224, 3), dtype=np.uint8), [1, 3, 5])
    with pytest.raises(InputError, match="positive"):
        tiny_psm_model.encode_image(np.zeros((1, 224, 224, 3), dtype=np.uint8), 0)
    single = tiny_psm_model.encode_image(np.zeros((224, 224, 3), dtype=np.uint8), 1)
    assert single.shape == (1, 512)
    assert not torch.is_inference(single)  # callers may modify results in place
    assert tiny_psm_model.resolutions(3, 2).tolist() == [30.0, 30.0]  # zoom × gsd (sentinel 10 m)
    assert tiny_psm_model.resolutions(np.int64(5), 1).tolist() == [50.0]
    assert tiny_psm_model.resolutions(np.array([1, 3]), 2).tolist() == [10.0, 30.0]


def test_public_api_is_lazy_and_complete() -> None:
    import soundmap

    for name in ("load_model", "Metadata", "Embedding", "score", "SoundscapeModel"):
        assert getattr(soundmap, name) is not None


def test_installed_tiny_model_fixture_loads_by_name(installed_tiny_model: str) -> None:
    from soundmap.models.soundscape import load_model

    model = load_model(installed_tiny_model, device="cpu")
    assert model.name == installed_tiny_model and model.probabilistic and len(model.weights_sha256) == 64
