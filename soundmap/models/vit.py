"""SatMAE image encoder: a timm-style ViT with a GSD positional embedding, then the projector
(psm-reference.md, "Image encoder").

State-dict names are timm's ``VisionTransformer`` ones (``patch_embed.proj``,
``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``fc_norm``) so the authors'
``sat_encoder.encoder.backbone.…`` tensors load by name. As in the released models (built with
``global_pool=True``) there is no class token, no learned ``pos_embed``, no final ``norm`` and no
``head``: the patch tokens are averaged and passed through ``fc_norm``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from soundmap.models.config import ViTConfig
from soundmap.models.heads import MLPHead

#: LayerNorm epsilon of the SatMAE ViT (timm's ``partial(nn.LayerNorm, eps=1e-6)``).
VIT_LN_EPS = 1e-6


# --------------------------------------------------------------------------------------------
# GSD positional embedding (pure math)
# --------------------------------------------------------------------------------------------
def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """MAE 1-D sin-cos embedding: ``[sin(p·ω_0..ω_{k-1}), cos(p·ω_0..ω_{k-1})]`` with
    ``k = dim/2`` and ``ω_i = 1 / 10000^(i/k)`` → (M, dim), float32."""
    if dim % 2:
        raise ValueError("sin-cos embedding needs an even dimension")
    k = dim // 2
    omega = 1.0 / 10000 ** (torch.arange(k, dtype=torch.float32) / k)
    angles = positions.reshape(-1, 1).float() * omega.to(positions.device)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def gsd_positional_embedding(dim: int, grid_size: int, res: torch.Tensor) -> torch.Tensor:
    """2-D sin-cos embedding of the patch grid scaled by the input resolution → (n, g², dim).

    For every sample ``res = zoom × gsd`` (metres per pixel) multiplies the patch coordinates.
    The grid is ``meshgrid(w, h, indexing="xy")`` like the reference, so the *first* half of the
    channels encodes the column index × res and the second half the row index × res; token
    ``r·g + c`` is patch (row r, column c). (The paper's reference-GSD ratio is not what the code
    does; the released models were trained with the plain multiplication.)
    """
    coords = torch.arange(grid_size, dtype=torch.float32, device=res.device)
    cols, rows = torch.meshgrid(coords, coords, indexing="xy")  # cols[r, c] = c, rows[r, c] = r
    res = res.to(torch.float32).reshape(-1, 1, 1)
    half = dim // 2
    emb_cols = sincos_1d((cols * res).reshape(-1), half)
    emb_rows = sincos_1d((rows * res).reshape(-1), half)
    return torch.cat([emb_cols, emb_rows], dim=1).reshape(res.shape[0], grid_size * grid_size, dim)


# --------------------------------------------------------------------------------------------
# ViT blocks (timm names)
# --------------------------------------------------------------------------------------------
class PatchEmbed(nn.Module):
    """Non-overlapping patches → tokens (``proj`` is a stride-p convolution)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # N × (H/p · W/p) × D, row-major patches


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (qkv bias on)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, s, d = x.shape
        qkv = self.qkv(x).reshape(n, s, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(n, s, d))


class Mlp(nn.Module):
    """``fc1`` → GELU (exact) → ``fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=VIT_LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=VIT_LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTBackbone(nn.Module):
    """SatMAE ViT with GSD positional embedding and global average pooling → (N, embed_dim)."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config.patch_size, config.embed_dim)
        self.blocks = nn.ModuleList(Block(config.embed_dim, config.num_heads, config.mlp_ratio)
                                    for _ in range(config.depth))
        self.fc_norm = nn.LayerNorm(config.embed_dim, eps=VIT_LN_EPS)
        self._pos_cache: dict[tuple[float, int, str], torch.Tensor] = {}

    def positional_embedding(self, res: torch.Tensor, grid_size: int, device: torch.device) -> torch.Tensor:
        """(N, g², D) embedding for per-sample resolutions, computed once per distinct
        (res, grid) and cached: it depends on nothing else (performance.md)."""
        distinct, inverse = torch.unique(res.detach().to("cpu", torch.float32).reshape(-1), return_inverse=True)
        table = []
        for value in distinct.tolist():
            key = (value, grid_size, str(device))
            if key not in self._pos_cache:
                single = torch.tensor([value], dtype=torch.float32)
                self._pos_cache[key] = gsd_positional_embedding(self.config.embed_dim, grid_size, single)[0].to(device)
            table.append(self._pos_cache[key])
        return torch.stack(table)[inverse.to(device)]

    def tokens(self, pixels: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
        """Patch tokens after the blocks (N × g² × D), before any pooling or norm (Sat2Sound
        uses them as they are)."""
        x = self.patch_embed(pixels)
        grid = pixels.shape[-1] // self.config.patch_size
        x = x + self.positional_embedding(res, grid, x.device).to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, pixels: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
        """``pixels`` N × 3 × H × W (normalised), ``res`` N metres/pixel (= zoom × gsd)."""
        return self.fc_norm(self.tokens(pixels, res).mean(dim=1))


class ImageEncoder(nn.Module):
    """Backbone + ``projector`` (Linear 768→512, GELU, Linear 512→512): the pre-fusion image
    feature that soundmap caches per cell. Takes normalised pixels and the per-sample ``res``."""

    def __init__(self, config: ViTConfig, fc_dim: int) -> None:
        super().__init__()
        self.backbone = ViTBackbone(config)
        self.projector = MLPHead(config.embed_dim, fc_dim)

    def forward(self, pixels: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(pixels, res))
