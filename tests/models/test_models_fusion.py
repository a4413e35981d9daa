"""Metadata fusion: equal to torch's nn.TransformerEncoder with key padding, and the exact
speed-ups (all-dropped tokens removed, CLS-only last layer) change nothing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from soundmap.models.config import FusionConfig
from soundmap.models.fusion import MetadataFuser
from soundmap.preprocess.metadata import Metadata, MetaToken

ALL = ("audio_source", "caption_source", "latlon", "month", "hour")
DIM = 512


@pytest.fixture(scope="module")
def fuser() -> MetadataFuser:
    torch.manual_seed(0)
    return MetadataFuser(ALL, DIM, FusionConfig(num_layers=3, num_heads=8, dim_feedforward=256)).eval()


def reference_encoder(fuser: MetadataFuser) -> nn.TransformerEncoder:
    """torch's own encoder (post-norm, gelu, batch_first) loaded with the fuser's layer weights."""
    layers = fuser.transformer_encoder.layers
    layer = nn.TransformerEncoderLayer(DIM, 8, dim_feedforward=layers[0].linear1.out_features,
                                       batch_first=True, activation="gelu")
    encoder = nn.TransformerEncoder(layer, num_layers=len(layers), enable_nested_tensor=False).eval()
    encoder.load_state_dict(fuser.transformer_encoder.state_dict(), strict=True)
    return encoder


def _mixed_metadata(n: int) -> Metadata:
    return Metadata(lat=[10.0, float("nan"), -30.0, 50.0, 0.0, 80.0][:n], lon=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0][:n],
                    month=[1, 2, None, 4, 5, 6][:n], hour=[None, None, 5, None, 23, 0][:n],
                    audio_source=["yfcc", "iNat", None, "freesound", "aporee", "yfcc"][:n], caption_source=None)


def test_state_dict_names_match_torch_and_the_authors(fuser: MetadataFuser) -> None:
    keys = set(fuser.state_dict())
    assert "cls_token" in keys
    assert "transformer_encoder.layers.2.self_attn.in_proj_weight" in keys
    assert "meta_embed.audio_source_fc.source_embed.weight" in keys
    assert fuser.state_dict()["meta_embed.caption_source_fc.source_embed.weight"].shape == (3, 512)
    assert fuser.state_dict()["meta_embed.location_fc.fc1.weight"].shape == (64, 4)
    assert fuser.state_dict()["meta_embed.time_fc.fc1.weight"].shape == (64, 2)
    assert len([k for k in keys if k.startswith("transformer_encoder.")]) == 3 * 12
    assert len([k for k in keys if k.startswith("meta_embed.")]) == 14


def test_per_row_masks_equal_torch_encoder_with_key_padding(fuser: MetadataFuser) -> None:
    torch.manual_seed(2)
    features = torch.randn(6, DIM)
    tokens = _mixed_metadata(6).encode(6, ALL)
    seq, padding = fuser.build_sequence(features, tokens, drop_absent=False)
    assert seq.shape == (6, 7, DIM)
    # CLS and image never masked; caption source (None) masked on every row; per-row drops
    assert not padding[:, :2].any() and padding[:, 3].all()
    assert padding[1, 4] and padding[0, 6] and not padding[4, 6]
    # a dropped token is also zeroed
    assert torch.count_nonzero(seq[1, 4]) == 0 and torch.count_nonzero(seq[:, 3]) == 0
    with torch.no_grad():
        want = reference_encoder(fuser)(seq, src_key_padding_mask=padding)[:, 0]
        slow = fuser(features, tokens, fast=False)
        fast = fuser(features, tokens, fast=True)
    torch.testing.assert_close(slow, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast, want, atol=1e-5, rtol=0)


def test_no_mask_at_all_equals_torch_encoder(fuser: MetadataFuser) -> None:
    torch.manual_seed(3)
    features = torch.randn(3, DIM)
    tokens = Metadata(lat=1.0, lon=2.0, month=7, hour=12, audio_source="aporee", caption_source="qwen").encode(3, ALL)
    seq, padding = fuser.build_sequence(features, tokens, drop_absent=True)
    assert padding is None and seq.shape[1] == 7
    with torch.no_grad():
        torch.testing.assert_close(fuser(features, tokens), reference_encoder(fuser)(seq)[:, 0], atol=1e-5, rtol=0)


def test_component_dropped_for_all_rows_equals_model_without_that_token(fuser: MetadataFuser) -> None:
    """Dropping hour for every row (masked) == removing it (fast path) == a model that never had it."""
    torch.manual_seed(4)
    without_hour = MetadataFuser(ALL[:-1], DIM, FusionConfig(num_layers=3, num_heads=8, dim_feedforward=256)).eval()
    state = {k: v for k, v in fuser.state_dict().items() if not k.startswith("meta_embed.time_fc.")}
    without_hour.load_state_dict(state, strict=True)
    features = torch.randn(4, DIM)
    meta = Metadata(lat=[1.0, 2.0, 3.0, 4.0], lon=0.0, month=5, audio_source="yfcc", caption_source="meta")
    tokens = meta.encode(4, ALL)
    assert "hour" not in tokens
    with torch.no_grad():
        masked = fuser(features, tokens, fast=False)
        removed = fuser(features, tokens, fast=True)
        never = without_hour(features, meta.encode(4, ALL[:-1]), fast=False)
    torch.testing.assert_close(removed, masked, atol=1e-5, rtol=0)
    torch.testing.assert_close(never, masked, atol=1e-5, rtol=0)
    # and the hour token does matter when given
    with_hour = fuser(features, Metadata(lat=[1.0, 2.0, 3.0, 4.0], lon=0.0, month=5, hour=6, audio_source="yfcc",
                                         caption_source="meta").encode(4, ALL))
    assert not torch.allclose(with_hour, masked, atol=1e-4)


def test_fused_output_depends_on_metadata_but_not_on_batch_neighbours(fuser: MetadataFuser) -> None:
    torch.manual_seed(5)
    features = torch.randn(6, DIM)
    tokens = _mixed_metadata(6).encode(6, ALL)
    with torch.no_grad():
        batch = fuser(features, tokens)
        row = {k: MetaToken(t.values[2:3], t.valid[2:3]) for k, t in tokens.items() if bool(t.valid[2])}
        one = fuser(features[2:3], row)
    torch.testing.assert_close(batch[2:3], one, atol=1e-5, rtol=0)
