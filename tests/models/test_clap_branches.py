"""CLAP audio/text branches: shapes, raw (unnormalised) means, head init and the state-dict
layout the PSM/GeoCLAP checkpoint importer relies on (soundmap.models.clap)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from soundmap.models.clap import (
    ClapAudioBranch,
    ClapTextBranch,
    full_audio_config,
    full_text_config,
    tiny_audio_config,
    tiny_text_config,
)
from soundmap.preprocess.audio import AudioFeaturizer
from soundmap.preprocess.text import TextTokenizer
from tests.fixtures.audio import sine_mix

HEAD_KEYS = ["linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias"]


@pytest.fixture(scope="module")
def audio_batch(clap_files) -> dict[str, torch.Tensor]:
    featurizer = AudioFeaturizer(clap_files, is_longer_policy="duration")
    return featurizer([(sine_mix(12.0, 48_000), 48_000), (sine_mix(2.0, 16_000), 16_000)])


@pytest.fixture(scope="module")
def text_batch(clap_files) -> dict[str, torch.Tensor]:
    return TextTokenizer(clap_files)(["bird song", "rain on the water", "traffic"])


def _groups(state_dict: dict) -> Counter:
    """Tensor count per top-level group, e.g. 'model.model.audio_model', 'mean_head'."""
    counts: Counter = Counter()
    for key in state_dict:
        parts = key.split(".")
        counts[".".join(parts[:3]) if parts[0] == "model" else parts[0]] += 1
    return counts


@pytest.mark.parametrize("probabilistic", [True, False])
def test_tiny_audio_branch_shapes_on_real_features(audio_batch, probabilistic):
    assert audio_batch["input_features"].shape == (2, 4, 1001, 64)
    assert audio_batch["is_longer"].tolist() == [True, False]  # exercises both fusion paths
    branch = ClapAudioBranch(tiny_audio_config(), probabilistic=probabilistic).eval()
    with torch.no_grad():
        raw_mu, logvar = branch(audio_batch["input_features"], audio_batch["is_longer"])
    assert raw_mu.shape == (2, 512) and torch.isfinite(raw_mu).all()
    if probabilistic:
        assert logvar is not None and logvar.shape == (2, 512)
    else:
        assert logvar is None


@pytest.mark.parametrize("probabilistic", [True, False])
def test_tiny_text_branch_shapes_on_real_tokens(text_batch, probabilistic):
    branch = ClapTextBranch(tiny_text_config(), probabilistic=probabilistic).eval()
    with torch.no_grad():
        raw_mu, logvar = branch(text_batch["input_ids"], text_batch["attention_mask"])
    assert raw_mu.shape == (3, 512)
    assert (logvar.shape == (3, 512)) if probabilistic else logvar is None


def test_outputs_are_the_heads_on_the_clap_projection_unnormalised(audio_batch, text_batch):
    torch.manual_seed(0)
    audio = ClapAudioBranch(tiny_audio_config(), probabilistic=True).eval()
    text = ClapTextBranch(tiny_text_config(), probabilistic=False).eval()
    with torch.no_grad():
        raw_mu, logvar = audio(audio_batch["input_features"], audio_batch["is_longer"])
        embeds = audio.model.model(
            input_features=audio_batch["input_features"], is_longer=audio_batch["is_longer"][:, None]
        ).audio_embeds
        torch.testing.assert_close(raw_mu, audio.mean_head(embeds))
        torch.testing.assert_close(logvar, audio.std_head(embeds))
        text_mu, _ = text(text_batch["input_ids"], text_batch["attention_mask"])
        text_embeds = text.model.model(**text_batch).text_embeds
        torch.testing.assert_close(text_mu, text.head(text_embeds))
    assert not torch.allclose(raw_mu.norm(dim=-1), torch.ones(2), atol=1e-3)  # no L2 normalisation


def test_std_head_starts_at_minus_four():
    """The reference fills *both* std_head biases (linear1 and linear2) with −4, on the CLAP
    branches and on the image heads."""
    from soundmap.models.heads import ProbabilisticHeads

    image_heads = ProbabilisticHeads(512)
    for heads in (ClapAudioBranch(tiny_audio_config(), True), ClapTextBranch(tiny_text_config(), True), image_heads):
        assert torch.equal(heads.std_head.linear1.bias, torch.full((512,), -4.0))
        assert torch.equal(heads.std_head.linear2.bias, torch.full((512,), -4.0))
        assert not torch.equal(heads.mean_head.linear2.bias, torch.full((512,), -4.0))
    # hand value: with the hidden layer's weights zeroed, log σ² = W2·gelu(−4) − 4 for every input,
    # gelu(−4) = −4·Φ(−4) = −4 × 3.1671242e-5 = −1.2668497e-4; with W2 = 1/512 everywhere → −4.00012668
    with torch.no_grad():
        image_heads.std_head.linear1.weight.zero_()
        image_heads.std_head.linear2.weight.fill_(1.0 / 512)
        _, logvar = image_heads(torch.randn(2, 512))
    torch.testing.assert_close(logvar, torch.full((2, 512), -4.00012668), atol=1e-6, rtol=0)


def test_state_dict_layout_matches_the_authors_prefixes():
    audio = ClapAudioBranch(tiny_audio_config(), probabilistic=True).state_dict()
    assert set(_groups(audio)) == {"model.model.audio_model", "model.model.audio_projection",
                                   "mean_head", "std_head"}
    assert [k for k in audio if k.startswith("mean_head.")] == [f"mean_head.{k}" for k in HEAD_KEYS]
    assert [k for k in audio if k.startswith("std_head.")] == [f"std_head.{k}" for k in HEAD_KEYS]
    text = ClapTextBranch(tiny_text_config(), probabilistic=False).state_dict()
    assert set(_groups(text)) == {"model.model.text_model", "model.model.text_projection", "head"}
    assert [k for k in text if k.startswith("head.")] == [f"head.{k}" for k in HEAD_KEYS]


def test_full_size_tensor_counts_equal_the_released_checkpoints():
    # psm-reference.md: audio_encoder.model.model.audio_model.* 266 + audio_projection 4,
    # text_encoder.model.model.text_model.* 201 + text_projection 4, heads 8 (PSM) / 4 (GeoCLAP)
    with torch.device("meta"):
        audio = ClapAudioBranch(full_audio_config(), probabilistic=True)
        text = ClapTextBranch(full_text_config(), probabilistic=False)
    audio_sd, text_sd = audio.state_dict(), text.state_dict()
    assert _groups(audio_sd) == {"model.model.audio_model": 266, "model.model.audio_projection": 4,
                                 "mean_head": 4, "std_head": 4}
    assert _groups(text_sd) == {"model.model.text_model": 201, "model.model.text_projection": 4, "head": 4}
    # names and shapes the fused HTSAT / RoBERTa-base checkpoint has
    shapes = {k: tuple(v.shape) for k, v in {**audio_sd, **text_sd}.items()}
    prefix_a, prefix_t = "model.model.audio_model.audio_encoder.", "model.model.text_model."
    assert shapes[prefix_a + "patch_embed.proj.weight"] == (96, 1, 4, 4)
    assert shapes[prefix_a + "patch_embed.mel_conv2d.weight"] == (96, 1, 4, 12)
    assert shapes[prefix_a + "patch_embed.fusion_model.local_att.0.weight"] == (24, 96, 1, 1)
    assert shapes[prefix_a + "layers.3.blocks.1.attention.self.relative_position_index"] == (64, 64)
    assert shapes[prefix_a + "norm.weight"] == (768,)
    assert shapes["model.model.audio_projection.linear1.weight"] == (512, 768)
    assert shapes[prefix_t + "embeddings.word_embeddings.weight"] == (50265, 768)
    assert shapes[prefix_t + "embeddings.position_ids"] == (1, 514)
    assert shapes[prefix_t + "encoder.layer.11.output.dense.weight"] == (768, 3072)
    assert shapes[prefix_t + "pooler.dense.weight"] == (768, 768)
    assert shapes["model.model.text_projection.linear2.weight"] == (512, 512)


def test_unfused_audio_config_is_refused():
    config = tiny_audio_config() | {"enable_fusion": False}
    with pytest.raises(ValueError, match="enable_fusion"):
        ClapAudioBranch(config, probabilistic=True)
