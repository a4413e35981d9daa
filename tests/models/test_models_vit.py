"""SatMAE image encoder: GSD positional embedding (hand values), timm layout, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from soundmap.models.config import ViTConfig
from soundmap.models.vit import Block, ViTBackbone, gsd_positional_embedding
from soundmap.preprocess.image import eval_transform, zoom_crop

S10, C10, S01, C01 = -0.5440211108893698, -0.8390715290764524, 0.09983341664682815, 0.9950041652780258
S18, C18, S018, C018 = 0.9738476308781951, -0.2272020946930871, 0.017999028015746276, 0.9998380043739528


def _expected_grid2_dim8(s: float, c: float, s_slow: float, c_slow: float) -> torch.Tensor:
    """dim 8, grid 2×2: half the channels per axis, frequencies ω = (1, 1/100); first half =
    column × res, second half = row × res; token = row·2 + col. For pos p: (sin p, sin p/100, cos p, cos p/100)."""
    zero = [0.0, 0.0, 1.0, 1.0]
    one = [s, s_slow, c, c_slow]
    return torch.tensor([zero + zero, one + zero, zero + one, one + one])


def test_gsdpe_hand_values_two_zooms() -> None:
    # sentinel zoom 1: res = 1 × 10 = 10 ; bing zoom 3: res = 3 × 0.6 = 1.8
    got = gsd_positional_embedding(8, 2, torch.tensor([10.0, 1.8]))
    assert got.shape == (2, 4, 8)
    torch.testing.assert_close(got[0], _expected_grid2_dim8(S10, C10, S01, C01), atol=1e-6, rtol=0)
    torch.testing.assert_close(got[1], _expected_grid2_dim8(S18, C18, S018, C018), atol=1e-6, rtol=0)


def test_backbone_mixes_zooms_in_a_batch_and_caches_per_resolution() -> None:
    backbone = ViTBackbone(ViTConfig(embed_dim=8, depth=1, num_heads=2, img_size=32))
    pe = backbone.positional_embedding(torch.tensor([10.0, 1.8, 10.0]), 2, torch.device("cpu"))
    torch.testing.assert_close(pe[0], _expected_grid2_dim8(S10, C10, S01, C01), atol=1e-6, rtol=0)
    torch.testing.assert_close(pe[1], _expected_grid2_dim8(S18, C18, S018, C018), atol=1e-6, rtol=0)
    torch.testing.assert_close(pe[2], pe[0])
    assert len(backbone._pos_cache) == 2  # one entry per distinct resolution, not per image
    torch.manual_seed(0)
    pixels = torch.randn(3, 3, 32, 32)
    res = torch.tensor([10.0, 30.0, 50.0])
    batch = backbone(pixels, res)
    singles = torch.cat([backbone(pixels[i:i + 1], res[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batch, singles, atol=1e-5, rtol=0)
    assert not torch.allclose(backbone(pixels[:1], torch.tensor([10.0])), backbone(pixels[:1], torch.tensor([30.0])))


def test_state_dict_names_are_timms() -> None:
    backbone = ViTBackbone(ViTConfig(embed_dim=8, depth=2, num_heads=2))
    keys = set(backbone.state_dict())
    for name in ("patch_embed.proj.weight", "blocks.1.norm1.weight", "blocks.1.attn.qkv.weight", "blocks.1.attn.qkv.bias",
                 "blocks.1.attn.proj.weight", "blocks.1.norm2.bias", "blocks.1.mlp.fc1.weight", "blocks.1.mlp.fc2.bias",
                 "fc_norm.weight"):
        assert name in keys
    assert not any(k.startswith(("cls_token", "pos_embed", "norm.", "head")) for k in keys)
    assert len(keys) == 2 + 2 * 12 + 2
    assert backbone.fc_norm.eps == 1e-6


def test_block_equals_torch_multihead_attention() -> None:
    """timm's fused qkv = nn.MultiheadAttention's in_proj ([q; k; v], contiguous heads)."""
    torch.manual_seed(1)
    block = Block(16, 4, 4.0).eval()
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    mha.in_proj_weight.data.copy_(block.attn.qkv.weight)
    mha.in_proj_bias.data.copy_(block.attn.qkv.bias)
    mha.out_proj.weight.data.copy_(block.attn.proj.weight)
    mha.out_proj.bias.data.copy_(block.attn.proj.bias)
    x = torch.randn(2, 5, 16)
    h = block.norm1(x)
    y = x + mha(h, h, h, need_weights=False)[0]
    y = y + block.mlp.fc2(nn.functional.gelu(block.mlp.fc1(block.norm2(y))))
    torch.testing.assert_close(block(x), y, atol=1e-5, rtol=0)


def test_eval_transform_constant_image_hand_values() -> None:
    image = np.zeros((1, 300, 300, 3), dtype=np.uint8)
    image[..., 0] = 255  # red 1.0 → (1 − 0.485)/0.229 = 2.248908; green/blue 0 → −0.485/0.229, −0.406/0.225
    out = eval_transform(image)
    assert out.shape == (1, 3, 224, 224) and out.dtype == torch.float32
    torch.testing.assert_close(out[0, :, 100, 100], torch.tensor([2.2489083, -2.0357143, -1.8044444]), atol=1e-4, rtol=0)


def test_eval_transform_resizes_shorter_side_then_center_crops() -> None:
    # 256 × 512 (H × W), left half black, right half white → 224 × 448 → crop columns 112…335,
    # so the output's left half (cols < 112) is black and its right half white.
    image = np.zeros((256, 512, 3), dtype=np.uint8)
    image[:, 256:] = 255
    out = eval_transform(image)
    assert out.shape == (1, 3, 224, 224)
    black, white = -0.485 / 0.229, (1 - 0.485) / 0.229
    assert abs(float(out[0, 0, 100, 20]) - black) < 1e-3
    assert abs(float(out[0, 0, 100, 200]) - white) < 1e-3


def test_zoom_crop_covers_zoom_times_tile() -> None:
    # a 1500 px bing source image: zoom 3 crops the central 900 px and resizes to 300 px
    big = torch.zeros(1, 3, 1500, 1500)
    big[..., 300:1200, 300:1200] = 1.0  # exactly the zoom-3 window is white
    out = zoom_crop(big, 3, 300)
    assert out.shape == (1, 3, 300, 300)
    torch.testing.assert_close(out, torch.ones_like(out), atol=1e-5, rtol=0)
    assert float(zoom_crop(big, 5, 300)[0, 0, 0, 0]) == pytest.approx(0.0, abs=1e-5)
