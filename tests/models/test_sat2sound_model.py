"""Sat2Sound end to end at model level: import of the authors' Lightning checkpoint (round trip,
refusals), the full-size tensor counts, the text encoder lookup, and the PSM-compatible API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import soundmap
from soundmap.errors import ModelError
from soundmap.models.embedding import l2_normalize
from soundmap.models.sat2sound.checkpoint import export_checkpoint
from soundmap.models.sat2sound.configuration import Sat2SoundConfig
from soundmap.models.sat2sound.modeling import Sat2SoundModel
from soundmap.preprocess.metadata import Metadata
from tests.fixtures.audio import sine_mix, write_clip
from tests.fixtures.sat2sound import ALL_METADATA, build_tiny_sat2sound, save_tiny_t5, write_sat2sound_checkpoint

IMAGES = np.random.default_rng(3).integers(0, 255, (3, 256, 256, 3), dtype=np.uint8)
TEXTS = ["birds singing on a beach", "traffic noise"]
META = Metadata(lat=[50.0, 51.0, 52.0], lon=[9.0, 9.5, 10.0], month=5, hour=13, audio_source="yfcc",
                caption_source="meta")


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_t5(tmp_path_factory.mktemp("t5") / "tiny-t5")


def _outputs(model, t5: Path, clip: Path) -> dict[str, torch.Tensor]:
    model.text_encoder_dir = t5
    features = model.encode_image(IMAGES, [1, 3, 5])
    mel = torch.randn(2, 1001, 64, generator=torch.Generator().manual_seed(0))
    return {"features": features, "image": model.fuse(features, META).mu, "text": model.encode_text(TEXTS).mu,
            "audio": model.encode_audio(input_features=mel).mu, "clip": model.encode_audio([str(clip)]).mu}


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("audio") / "mix.wav", sine_mix(12.0, 44100), 44100, 2)


@pytest.mark.parametrize("metadata", [ALL_METADATA, (), ("caption_source", "latlon", "month", "hour")])
def test_authors_checkpoint_round_trip_is_exact(tmp_path: Path, t5_dir: Path, clip: Path, metadata, capsys) -> None:
    from soundmap.cli.main import run

    model = build_tiny_sat2sound(family="googleEarth" if len(metadata) == 4 else "sentinel", metadata=metadata)
    ckpt = write_sat2sound_checkpoint(model, tmp_path / "sentinel_withmeta.ckpt")
    assert run(["models", "import", str(ckpt), "--name", "s2s", "--quiet"]) == 0
    loaded = soundmap.load_model("s2s", "cpu", text_encoder=t5_dir)
    assert isinstance(loaded, Sat2SoundModel)
    assert loaded.config.metadata == model.config.metadata and loaded.family == model.family
    assert loaded.feature_dim == (196 * 32 if metadata else 32)
    ours, theirs = _outputs(model, t5_dir, clip), _outputs(loaded, t5_dir, clip)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    from soundmap.models.registry import installed_models

    assert [m.config.variant for m in installed_models()] == ["sat2sound"]  # `models list` reads it
    capsys.readouterr()
    assert run(["models", "info", "s2s"]) == 0
    shown = capsys.readouterr().out
    assert "variant:     sat2sound (deterministic, scored with cosine)" in shown and "sha256" in shown


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: s.pop("fdt.txt_query_model.q_map.4.bias"), "missing 1 (fdt.txt_query_model.q_map.4.bias)"),
    (lambda s: s.__setitem__("fdt.extra_table", torch.zeros(3)), "unexpected 1 (fdt.extra_table)"),
    (lambda s: s.__setitem__("satmae_backbone.projector.linear1.bias", torch.zeros(5)),
     "wrong shape 1 (satmae_backbone.projector.linear1.bias: (5,) vs (32,))"),
])
def test_incomplete_checkpoints_are_refused_naming_the_keys(tmp_path: Path, edit, message) -> None:
    from soundmap.models.checkpoint import import_checkpoint

    model = build_tiny_sat2sound()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    edit(state)
    ckpt = write_sat2sound_checkpoint(model, tmp_path / "bad.ckpt", state_dict=state)
    with pytest.raises(ModelError, match="do not match the model") as err:
        import_checkpoint(ckpt, "bad")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_checkpoint_pickling_other_objects_is_refused(tmp_path: Path) -> None:
    from soundmap.models.checkpoint import import_checkpoint

    checkpoint = export_checkpoint(build_tiny_sat2sound(metadata=()))
    checkpoint["callbacks"] = {"cb": Path("/tmp")}  # a class the safe unpickler refuses
    torch.save(checkpoint, tmp_path / "odd.ckpt")
    with pytest.raises(ModelError, match="safe loader refuses"):
        import_checkpoint(tmp_path / "odd.ckpt", "odd")


@pytest.mark.parametrize(("metadata", "count", "params"), [
    (ALL_METADATA, 431, 166.65), ((), 381, 141.24), (("caption_source", "latlon", "month", "hour"), 430, None)])
def test_full_size_tensor_counts(metadata, count, params) -> None:
    with torch.device("meta"):
        model = Sat2SoundModel(Sat2SoundConfig.full(metadata=metadata))
    state = model.state_dict()
    assert len(state) == count
    assert tuple(state["fdt.space_dict"].shape) == (16000, 1024)
    if params is not None:
        trained = sum(v.numel() for k, v in state.items() if not k.endswith(("_index", "attn_mask")))
        assert round(trained / 1e6, 2) == params


def test_full_size_model_encodes_a_cell_a_text_and_a_clip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Sat2SoundModel(Sat2SoundConfig.full(metadata=ALL_METADATA))
    model.text_encoder_dir = save_tiny_t5(tmp_path / "t5", d_model=1024, d_kv=64, d_ff=2816, num_heads=16)
    features = model.encode_image(IMAGES[:1], 1)
    assert features.shape == (1, 196 * 1024)
    image = model.fuse(features, Metadata(month=5, hour=13, audio_source="yfcc", caption_source="meta"))
    text = model.encode_text("birds singing")
    audio = model.encode_audio(input_features=torch.randn(1, 1001, 64))
    for emb in (image, text, audio):
        assert emb.mu.shape == (1, 1024) and emb.logvar is None and torch.isfinite(emb.mu).all()
    assert -1 <= float(soundmap.score(text, image)) <= 1


def test_text_encoder_from_environment_and_width_check(tmp_path: Path, t5_dir: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_tiny_sat2sound(metadata=())
    model.save(tmp_path / "m")
    monkeypatch.setenv("SOUNDMAP_T5_DIR", str(t5_dir))
    from_env = soundmap.load_model(tmp_path / "m", "cpu")
    explicit = soundmap.load_model(tmp_path / "m", "cpu", text_encoder=t5_dir)
    assert torch.equal(from_env.encode_text(TEXTS).mu, explicit.encode_text(TEXTS).mu)
    wide = save_tiny_t5(tmp_path / "wide", d_model=24)
    with pytest.raises(ModelError, match="24 wide but this model needs 16"):
        soundmap.load_model(tmp_path / "m", "cpu", text_encoder=wide).encode_text("rain")


def test_text_path_matches_the_hand_composed_pipeline(t5_dir: Path) -> None:
    """Tokenizer pads to the longest; T5 hidden states → txt query model → codebook, pads score 0."""
    from transformers import T5EncoderModel

    model = build_tiny_sat2sound(metadata=())
    model.text_encoder_dir = t5_dir
    tokenizer, _ = model.text_encoder()
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert batch["input_ids"][0, -1] == 1 and batch["input_ids"][1, -1] == 0  # EOS 1 kept, pad 0
    with torch.no_grad():
        hidden = T5EncoderModel.from_pretrained(str(t5_dir)).eval()(**batch).last_hidden_state
        expected = l2_normalize(model.fdt.embed(model.fdt.txt_query_model, hidden, batch["attention_mask"] == 1))
    by_ids = model.encode_text(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert torch.allclose(by_ids.mu, expected, atol=1e-6)  # a padded batch, exactly as the authors batch
    # texts are encoded one by one: a text's embedding does not depend on the others of the call
    alone = [model.encode_text(text).mu for text in TEXTS]
    assert torch.equal(model.encode_text(TEXTS).mu, torch.cat(alone))
    assert torch.allclose(alone[0], expected[:1], atol=1e-6)  # the longest text has no padding either way


def test_api_matches_psm(t5_dir: Path, clip: Path) -> None:
    model = build_tiny_sat2sound()
    model.text_encoder_dir = t5_dir
    image = model.fuse(model.encode_image(IMAGES, 1), META)
    text, audio = model.encode_text(TEXTS[:1]), model.encode_audio(str(clip))
    assert image.logvar is None and model.probabilistic is False and model.default_score == "cosine"
    assert torch.allclose(soundmap.score(text, image), image.mu @ text.mu[0], atol=1e-6)
    combined = soundmap.Embedding.combine(audio, text)
    assert torch.allclose(combined.mu, l2_normalize(l2_normalize(audio.mu) + l2_normalize(text.mu)), atol=1e-6)
    # a 14 s clip at 44.1 kHz is resampled to 32 kHz and cut to its first 10 s
    from soundmap.models.sat2sound.preprocessing import clip_waveforms

    waves = clip_waveforms([str(clip)], None, model.config.mel)
    assert waves.shape == (1, 320_000)
    mel = model.audio_encoder.model.audio_enc.audio_feats_extractor(waves)
    assert torch.equal(model.encode_audio(input_features=mel[:, 0]).mu, audio.mu)


def test_nometa_features_are_the_embedding_and_metadata_is_ignored() -> None:
    model = build_tiny_sat2sound(metadata=())
    features = model.encode_image(IMAGES, 1)
    assert features.shape == (3, 32)
    with torch.no_grad():
        tokens = model.image_tokens(IMAGES, 1)
        expected = model.fdt.embed(model.fdt.img_query_model, tokens)
    assert torch.equal(features, expected)
    assert torch.equal(model.fuse(features, META).mu, l2_normalize(expected))


def test_fuse_chunks_agree_with_one_batch() -> None:
    model = build_tiny_sat2sound()
    features = model.encode_image(IMAGES, 1)
    assert torch.allclose(model.fuse(features, META, chunk=1).mu, model.fuse(features, META).mu, atol=1e-5)
