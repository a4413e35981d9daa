"""Sat2Sound building blocks checked against hand-computed values and against PyTorch itself:
GSD positional embedding, sparsemax, codebook pooling with padded text, the masked-metadata quirk,
HTS-AT shapes and layout, the log-mel front end and the /23 hour quirk."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from soundmap.models.sat2sound.codebook import Codebook, sparsemax
from soundmap.models.sat2sound.configuration import HTSATConfig, MelConfig, Sat2SoundConfig
from soundmap.models.sat2sound.htsat import HTSAT, LogMelFrontEnd
from soundmap.preprocess.metadata import Metadata
from tests.fixtures.sat2sound import build_tiny_sat2sound


@pytest.fixture(scope="module")
def meta_model():
    return build_tiny_sat2sound()


# ------------------------------------------------------------------------------ image branch
def test_gsd_positional_embedding_by_hand(meta_model):
    """Token r·14 + c: first half encodes column c × res, second half row r × res; res = zoom × 10 m."""
    vit = meta_model.satmae_backbone.backbone
    res = meta_model.resolutions(3, 1)
    assert res.tolist() == [30.0]
    pe = vit.positional_embedding(res, 14, torch.device("cpu"))[0]
    half, k = 16, 8  # tiny ViT: 32 channels
    for r, c in ((0, 0), (2, 5), (13, 1)):
        token = pe[r * 14 + c]
        for i in (0, 3, 7):
            omega = 1.0 / 10000 ** (i / k)
            assert token[i].item() == pytest.approx(math.sin(c * 30.0 * omega), abs=1e-5)
            assert token[k + i].item() == pytest.approx(math.cos(c * 30.0 * omega), abs=1e-5)
            assert token[half + i].item() == pytest.approx(math.sin(r * 30.0 * omega), abs=1e-5)
            assert token[half + k + i].item() == pytest.approx(math.cos(r * 30.0 * omega), abs=1e-5)
    assert build_tiny_sat2sound(family="bing").resolutions(5, 1).tolist() == [pytest.approx(3.0)]


def test_image_tokens_have_no_final_norm_no_pooling(meta_model):
    """196 tokens: patch embed + GSDPE + blocks, then the per-token projector; nothing else."""
    images = np.random.default_rng(0).integers(0, 255, (2, 256, 256, 3), dtype=np.uint8)
    tokens = meta_model.image_tokens(images, [1, 5])
    assert tokens.shape == (2, 196, 32)
    from soundmap.preprocess.image import eval_transform

    vit = meta_model.satmae_backbone.backbone
    with torch.no_grad():
        x = vit.patch_embed(eval_transform(images))
        x = x + vit.positional_embedding(torch.tensor([10.0, 50.0]), 14, x.device)
        for block in vit.blocks:
            x = block(x)
        expected = meta_model.satmae_backbone.projector(x)
    assert torch.allclose(tokens, expected, atol=1e-5)
    assert not hasattr(vit, "fc_norm")


# ------------------------------------------------------------------------------ sparsemax
@pytest.mark.parametrize(("logits", "expected"), [
    ([0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 1.0, 0.0]),          # a single clear winner
    ([1.0, 0.0, 0.0], [1.0, 0.0, 0.0]),                    # gap of exactly 1: τ = max
    ([0.5, 0.5, 0.0], [0.5, 0.5, 0.0]),                    # a tie shares the mass
    ([2.0, 2.0, 2.0, 2.0], [0.25, 0.25, 0.25, 0.25]),      # all tied: uniform
    ([0.3, 0.1, -0.2], [0.3 + 0.8 / 3, 0.1 + 0.8 / 3, -0.2 + 0.8 / 3]),  # τ = (0.2 − 1)/3
    ([-1.0, -1.5, -2.0], [0.75, 0.25, 0.0]),               # τ = (−1 − 1.5 − 1)/2 = −1.75
])
def test_sparsemax_hand_computed(logits, expected):
    out = sparsemax(torch.tensor([logits]))[0]
    assert out.tolist() == pytest.approx(expected, abs=1e-6)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_sparsemax_shift_invariant_batched_and_on_any_axis():
    z = torch.randn(3, 500) / 10
    out = sparsemax(z)
    assert torch.allclose(out, sparsemax(z + 7.0), atol=1e-6)
    assert torch.allclose(out.sum(-1), torch.ones(3), atol=1e-5)
    assert (out == 0).any() and (out >= 0).all()
    assert torch.allclose(sparsemax(z.T, dim=0), out.T)


# ------------------------------------------------------------------------------ codebook
def _codebook(k: int = 3, d: int = 4) -> Codebook:
    book = Codebook(k, d, d, d, d)
    with torch.no_grad():
        book.space_dict.copy_(torch.arange(k * d, dtype=torch.float32).reshape(k, d))
    return book


def test_padded_text_tokens_score_zero_and_join_the_max():
    """Valid scores (÷1000) −1, −1.5, −2 give weights 0.75/0.25/0; a pad token scores 0 for every
    code and wins the max, so the weights become uniform."""
    book = _codebook()
    valid_token = torch.tensor([[-1000.0, -1500.0, -2000.0]])
    scores = torch.stack([valid_token[0], torch.tensor([5.0, 5.0, 5.0])])[None]  # pad token with junk scores
    unpadded = book.pool_scores(valid_token[None])
    padded = book.pool_scores(scores, valid=torch.tensor([[True, False]]))
    c = book.space_dict.detach()
    assert torch.allclose(unpadded, 0.75 * c[0] + 0.25 * c[1])
    assert torch.allclose(padded, c.mean(dim=0))


def test_padding_changes_nothing_when_the_threshold_is_positive():
    book = _codebook()
    valid_token = torch.tensor([[-3000.0, 2000.0, -1000.0]])
    scores = torch.stack([valid_token[0], torch.zeros(3)])[None]
    assert torch.equal(book.pool_scores(valid_token[None]), book.pool_scores(scores, torch.tensor([[True, False]])))
    assert torch.equal(book.pool_scores(valid_token[None]), book.space_dict.detach()[1:2])


def test_codebook_embedding_is_max_pool_then_sparsemax_then_codebook(meta_model):
    book = meta_model.fdt
    tokens = torch.randn(2, 7, 32)
    with torch.no_grad():
        q = book.img_query_model(tokens)
        scores = q @ book.space_dict.T / math.sqrt(32) / 1000.0
        expected = sparsemax(scores.max(dim=1).values) @ book.space_dict
        assert torch.allclose(book.embed(book.img_query_model, tokens), expected, atol=1e-6)


# ------------------------------------------------------------------------------ metadata fusion
def _fuse_inputs(model, month, hour):
    torch.manual_seed(1)
    tokens = torch.randn(2, 196, 32)
    md = Metadata(lat=[10.0, -20.0], lon=[30.0, 40.0], audio_source="yfcc", caption_source="meta",
                  month=month, hour=hour)
    return tokens, md


def _torch_encoder(model) -> torch.nn.TransformerEncoder:
    """PyTorch's own TransformerEncoder with the fuser's weights (what the authors ran)."""
    fusion = model.config.fusion
    layer = torch.nn.TransformerEncoderLayer(32, fusion.num_heads, fusion.dim_feedforward, 0.1, "gelu",
                                             batch_first=True)
    encoder = torch.nn.TransformerEncoder(layer, fusion.num_layers)
    encoder.load_state_dict(model.sat_encoder.meta_fuser.transformer_encoder.state_dict())
    return encoder.eval()


@pytest.mark.parametrize(("month", "hour", "zeroed"), [
    (None, None, True),      # month + time masked: trailing → nested-tensor path, rows exactly 0
    (5, None, True),         # time masked: trailing
    (None, 13, False),       # month masked, time valid: not trailing → ordinary outputs
    (5, 13, False),          # nothing masked
])
def test_masked_metadata_rows_match_pytorch(meta_model, month, hour, zeroed):
    tokens, md = _fuse_inputs(meta_model, month, hour)
    fuser = meta_model.sat_encoder.meta_fuser
    encoded = md.encode(2, meta_model.config.metadata)
    with torch.no_grad():
        ours = fuser(tokens, encoded)
        meta, valid = fuser.meta_tokens(encoded, 2, tokens)
        x = torch.cat([tokens, meta], 1)
        keep = torch.cat([torch.ones(2, 196, dtype=torch.bool), valid], 1)
        theirs = _torch_encoder(meta_model)(x, src_key_padding_mask=None if keep.all() else ~keep)
    assert ours.shape == (2, 201, 32)
    assert torch.allclose(ours, theirs, atol=1e-4)
    masked_rows = ours[~keep]
    if zeroed:
        assert masked_rows.numel() and torch.count_nonzero(masked_rows) == 0
    elif masked_rows.numel():
        assert masked_rows.abs().sum() > 0


def test_hour_23_encodes_like_hour_0(meta_model):
    """The /23 quirk reaches the embedding: hour 23 and hour 0 fuse identically, hour 12 does not."""
    features = meta_model.encode_image(np.full((1, 256, 256, 3), 90, np.uint8), 1)
    at = {h: meta_model.fuse(features, Metadata(hour=h, month=6, lat=1.0, lon=2.0)).mu for h in (0, 12, 23)}
    assert torch.allclose(at[0], at[23], atol=1e-6)
    assert not torch.allclose(at[0], at[12], atol=1e-4)


# ------------------------------------------------------------------------------ audio
def test_htsat_full_size_shapes():
    torch.manual_seed(0)
    tower = HTSAT(HTSATConfig(), MelConfig()).eval()
    with torch.no_grad():
        out = tower(torch.randn(1, 1, 1001, 64))
    assert out.shape == (1, 32, 768)
    counts = {s: sum(1 for k in tower.state_dict() if k.startswith(f"layers.{s}.")) for s in range(4)}
    assert counts == {0: 32, 1: 32, 2: 90, 3: 28}
    assert len(tower.state_dict()) == 200


def test_htsat_image_layout_and_token_regrouping():
    tower = HTSAT(HTSATConfig(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)), MelConfig())
    mel = torch.arange(1024 * 64, dtype=torch.float32).reshape(1, 1, 1024, 64)
    image = tower.to_image(mel)
    assert image.shape == (1, 1, 256, 256)
    for chunk, m, j in ((0, 0, 0), (1, 5, 7), (3, 63, 255)):
        assert image[0, 0, chunk * 64 + m, j] == mel[0, 0, chunk * 256 + j, m]
    # final 8×8 grid, row = chunk·2 + band: token t = chunk·8 + column averages the two bands
    v = torch.zeros(1, 64, 1)
    for row in range(8):
        for col in range(8):
            v[0, row * 8 + col, 0] = 100 * row + col
    tokens = tower.fine_grained(v)[0, :, 0]
    for chunk in range(4):
        for col in range(8):
            assert tokens[chunk * 8 + col] == pytest.approx((100 * (2 * chunk) + col + 100 * (2 * chunk + 1) + col) / 2)


def test_log_mel_front_end_matches_an_independent_stft():
    from transformers.audio_utils import spectrogram, window_function

    config = MelConfig()
    front = LogMelFrontEnd(config)
    wave = np.random.default_rng(0).standard_normal(config.clip_samples).astype(np.float32) * 0.1
    with torch.no_grad():
        ours = front(torch.from_numpy(wave)[None])[0, 0].numpy()
    reference = spectrogram(wave.astype(np.float64), window_function(1024, "hann", periodic=True), 1024, 320,
                            power=2.0, center=True, pad_mode="reflect", onesided=True,
                            mel_filters=front.log_trans.melW.detach().numpy().astype(np.float64),
                            log_mel="dB", reference=1.0, min_value=1e-10, db_range=None)
    assert ours.shape == (1001, 64)
    assert np.allclose(ours, reference.T, atol=2e-3)


def test_sat2sound_config_json_round_trip():
    config = Sat2SoundConfig.tiny(family="bing", metadata=("latlon", "hour"))
    assert Sat2SoundConfig.from_dict(config.to_dict()) == config
