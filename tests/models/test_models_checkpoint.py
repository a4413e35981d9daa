"""Import of the authors' Lightning checkpoints: round trip, strict checks, variant detection,
safe unpickling."""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from soundmap.errors import ModelError
from soundmap.models.checkpoint import (
    config_from_checkpoint,
    convert_checkpoint,
    export_author_state_dict,
    import_checkpoint,
    infer_audio_config,
    infer_text_config,
    read_lightning_checkpoint,
)
from soundmap.models.clap import tiny_audio_config, tiny_text_config
from soundmap.models.soundscape import load_model
from soundmap.paths import model_dir
from soundmap.preprocess.metadata import Metadata
from tests.fixtures.tiny_models import author_hparams, build_tiny_model, write_author_checkpoint

ALL = ("audio_source", "caption_source", "latlon", "month", "hour")


class NotAllowed:
    """A class the safe unpickler must refuse (stands for any arbitrary pickled object)."""

    def __init__(self) -> None:
        self.value = 1


def _images(n: int = 2, px: int = 256) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, px, px, 3), dtype=np.uint8)


def test_round_trip_gives_identical_outputs(tiny_psm_model, author_checkpoint_factory, tmp_path: Path, clap_files) -> None:
    ckpt = author_checkpoint_factory(tiny_psm_model, tmp_path / "psm.ckpt")
    directory = import_checkpoint(ckpt, "psm-test")
    assert directory == model_dir() / "psm-test"
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_model("psm-test", device="cpu", clap_files=clap_files)
    assert loaded.config.variant == "psm" and loaded.config.metadata == ALL and loaded.family == "sentinel"
    assert loaded.config.vit == tiny_psm_model.config.vit and loaded.config.fusion == tiny_psm_model.config.fusion
    assert len(loaded.weights_sha256) == 64
    assert json.loads((directory / "config.json").read_text())["weights_sha256"] == loaded.weights_sha256

    images = _images()
    f0, f1 = tiny_psm_model.encode_image(images, [1, 5]), loaded.encode_image(images, [1, 5])
    assert torch.equal(f0, f1)
    meta = Metadata(lat=[10.0, 20.0], lon=[5.0, 6.0], month=[3, None], hour=7, audio_source="iNat")
    e0, e1 = tiny_psm_model.fuse(f0, meta), loaded.fuse(f1, meta)
    assert torch.equal(e0.mu, e1.mu) and torch.equal(e0.logvar, e1.logvar)

    tokens = loaded._text_tokenizer()(["bird song", "rain"])
    t0 = tiny_psm_model.encode_text(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    t1 = loaded.encode_text(["bird song", "rain"])
    assert torch.equal(t0.mu, t1.mu) and torch.equal(t0.logvar, t1.logvar)

    torch.manual_seed(0)
    features = torch.randn(2, 4, 1001, 64)
    longer = torch.tensor([True, False])
    a0 = tiny_psm_model.encode_audio(input_features=features, is_longer=longer)
    a1 = loaded.encode_audio(input_features=features, is_longer=longer)
    assert torch.equal(a0.mu, a1.mu) and torch.equal(a0.logvar, a1.logvar)
    wave = np.sin(np.linspace(0, 2000, 48_000 * 2)).astype(np.float32)
    from_wave = loaded.encode_audio([(wave, 48_000)])
    assert from_wave.mu.shape == (1, 512) and torch.isfinite(from_wave.logvar).all()


def test_geoclap_round_trip_without_metadata(tiny_geoclap_model, tmp_path: Path) -> None:
    ckpt = write_author_checkpoint(tiny_geoclap_model, tmp_path / "g.ckpt")
    loaded = load_model(import_checkpoint(ckpt, "geoclap-test"), device="cpu")
    assert not loaded.probabilistic and loaded.default_score == "cosine" and loaded.fuser is None
    assert loaded.family == "bing"
    images = _images(1, 300)
    e0 = tiny_geoclap_model.fuse(tiny_geoclap_model.encode_image(images, 3))
    e1 = loaded.fuse(loaded.encode_image(images, 3), Metadata(month=5))  # ignored: model has no metadata
    assert e1.logvar is None and torch.equal(e0.mu, e1.mu)
    torch.testing.assert_close(e1.mu.norm(dim=1), torch.ones(1))


def test_missing_and_misshaped_tensors_fail_with_one_line(tiny_psm_model, tmp_path: Path) -> None:
    state = export_author_state_dict(tiny_psm_model)
    del state["sat_encoder.encoder.backbone.blocks.0.attn.qkv.weight"]
    with pytest.raises(ModelError) as err:
        import_checkpoint(write_author_checkpoint(tiny_psm_model, tmp_path / "a.ckpt", state), "broken")
    message = str(err.value)
    assert "\n" not in message and "missing 1 (sat_encoder.encoder.backbone.blocks.0.attn.qkv.weight)" in message
    assert not (model_dir() / "broken").exists()

    state = export_author_state_dict(tiny_psm_model)
    state["sat_encoder.encoder.mean_head.linear1.bias"] = torch.zeros(7)
    with pytest.raises(ModelError, match=r"wrong shape 1 \(sat_encoder.encoder.mean_head.linear1.bias: \(7,\) vs \(512,\)\)"):
        convert_checkpoint({"state_dict": state, "hyper_parameters": author_hparams(tiny_psm_model)})

    state = export_author_state_dict(tiny_psm_model)
    state["sat_encoder.encoder.backbone.pos_embed"] = torch.zeros(1, 197, 32)
    with pytest.raises(ModelError, match=r"unexpected 1 \(sat_encoder.encoder.backbone.pos_embed\)"):
        convert_checkpoint({"state_dict": state, "hyper_parameters": author_hparams(tiny_psm_model)})

    state = export_author_state_dict(tiny_psm_model)
    state.update({f"other_encoder.w{i}": torch.zeros(1) for i in range(5)})
    with pytest.raises(ModelError, match=r"5 tensors outside .*other_encoder.w0, other_encoder.w1, other_encoder.w2, …"):
        convert_checkpoint({"state_dict": state, "hyper_parameters": author_hparams(tiny_psm_model)})


def test_hyper_parameters_must_agree_with_the_tensors(tiny_psm_model) -> None:
    state = export_author_state_dict(tiny_psm_model)
    # PSM tensors declared as metadata-free: the fuser tensors are unexpected
    with pytest.raises(ModelError, match="unexpected"):
        convert_checkpoint({"state_dict": state, "hyper_parameters": author_hparams(tiny_psm_model, metadata_type="none")})
    # PSM loss with a deterministic image encoder
    with pytest.raises(ModelError, match="sat_encoder_type=baselineSatMAE"):
        convert_checkpoint({"state_dict": state, "hyper_parameters": author_hparams(tiny_psm_model, sat_encoder_type="baselineSatMAE")})
    with pytest.raises(ModelError, match="loss_type"):
        convert_checkpoint({"state_dict": state, "hyper_parameters": author_hparams(tiny_psm_model, loss_type="triplet")})
    # declared as GeoCLAP while the tensors are PSM's
    with pytest.raises(ModelError):
        convert_checkpoint({"state_dict": state, "hyper_parameters": author_hparams(
            tiny_psm_model, loss_type="infonce", probabilistic=False, sat_encoder_type="baselineSatMAE",
            audio_encoder_type="baselineCLAP", text_encoder_type="baselineCLAP")})
    with pytest.raises(ModelError, match="hyper_parameters"):
        convert_checkpoint({"state_dict": state})


@functools.lru_cache(maxsize=None)
def _author_state(variant: str, components: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Tensors do not depend on the imagery family, so one tiny model per (variant, metadata)."""
    return export_author_state_dict(build_tiny_model(variant, metadata=components))


@pytest.mark.parametrize("loss", ["pcmepp", "infonce"])
@pytest.mark.parametrize("metadata_type", ["none", "latlong_month_time_asource_tsource", "month_time"])
@pytest.mark.parametrize("sat_type", ["sentinel", "bingmap", "googleEarth"])
def test_variant_detection(loss: str, metadata_type: str, sat_type: str) -> None:
    variant = "psm" if loss == "pcmepp" else "geoclap"
    components = {"none": (), "month_time": ("month", "hour")}.get(metadata_type, ALL)
    family = {"bingmap": "bing"}.get(sat_type, sat_type)
    state = _author_state(variant, components)
    hparams = dict(loss_type=loss, sat_type=sat_type, metadata_type=metadata_type, fc_dim=512,
                   probabilistic=loss == "pcmepp",
                   sat_encoder_type="probSatMAE" if loss == "pcmepp" else "baselineSatMAE",
                   audio_encoder_type="probCLAP" if loss == "pcmepp" else "baselineCLAP")
    checkpoint = {"state_dict": state, "hyper_parameters": argparse.Namespace(**hparams)}
    config, _ = config_from_checkpoint(checkpoint)
    assert (config.variant, config.family, config.metadata) == (variant, family, components)
    assert config.probabilistic == (loss == "pcmepp")
    if sat_type == "sentinel":  # the strict tensor check, once per (variant, metadata)
        converted = convert_checkpoint(checkpoint)
        assert (converted.fuser is None) == (components == ())
        assert (converted.image_heads is None) == (variant == "geoclap")


def test_clap_configs_inferred_from_shapes(tiny_psm_model) -> None:
    state = tiny_psm_model.state_dict()
    audio, text = infer_audio_config(state), infer_text_config(state)
    for key, value in tiny_audio_config().items():
        assert audio[key] == value, key
    for key, value in tiny_text_config().items():
        assert text[key] == value, key


def test_safe_loader_refuses_arbitrary_objects_unless_unsafe(tiny_geoclap_model, tmp_path: Path) -> None:
    path = tmp_path / "odd.ckpt"
    torch.save({"state_dict": export_author_state_dict(tiny_geoclap_model),
                "hyper_parameters": author_hparams(tiny_geoclap_model), "extra": NotAllowed()}, path)
    with pytest.raises(ModelError, match="--unsafe-pickle") as err:
        read_lightning_checkpoint(path)
    assert "NotAllowed" in str(err.value)
    with pytest.warns(UserWarning, match="unsafe-pickle"):
        checkpoint = read_lightning_checkpoint(path, unsafe_pickle=True)
    assert isinstance(checkpoint["hyper_parameters"], argparse.Namespace)
    # the Namespace alone is allow-listed for the safe loader
    plain = write_author_checkpoint(tiny_geoclap_model, tmp_path / "plain.ckpt")
    assert isinstance(read_lightning_checkpoint(plain)["hyper_parameters"], argparse.Namespace)
    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes(plain.read_bytes()[:1000])
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        read_lightning_checkpoint(truncated)


def test_criterion_tensors_are_optional_and_reimport_replaces(tiny_psm_model, tmp_path: Path) -> None:
    state = {k: v for k, v in export_author_state_dict(tiny_psm_model).items() if not k.startswith("criterion.")}
    ckpt = write_author_checkpoint(tiny_psm_model, tmp_path / "nocrit.ckpt", state)
    first = import_checkpoint(ckpt, "same-name")
    config = json.loads((first / "config.json").read_text())
    assert config["source"]["criterion_imported"] is False
    tiny_psm_model.criterion.shift.data.fill_(3.25)
    try:
        second = import_checkpoint(write_author_checkpoint(tiny_psm_model, tmp_path / "crit.ckpt"), "same-name")
    finally:
        tiny_psm_model.criterion.shift.data.fill_(5.0)
    assert second == first
    loaded = load_model("same-name", device="cpu")
    assert loaded.criterion.shift.detach().tolist() == [3.25]
    # shapes as the authors' PCME++ criterion creates them: init × torch.ones(1)
    assert loaded.criterion.shift.shape == loaded.criterion.negative_scale.shape == (1,)
    assert [p.name for p in model_dir().iterdir()] == ["same-name"]  # no staging left behind
