"""HTS-AT audio tower of Sat2Sound (MGA-CLAP's Swin-transformer audio encoder), written from the
architecture description alone (the upstream code carries no licence, so none of it is used).

Input: log-mel ``(B, 1, 1001, 64)`` (batch, channel, time, mel) at 32 kHz / hop 320.

1. ``bn0``: BatchNorm over the 64 mel bins (running statistics at inference).
2. The spectrogram becomes a 256 × 256 "image": time is interpolated bicubically 1001 → 1024
   (``align_corners=True``), cut into 4 chunks of 256 frames, and the chunks are stacked along
   the frequency axis (row = chunk·64 + mel, column = frame within the chunk).
3. ``patch_embed``: 4 × 4 convolution → 64 × 64 tokens of width 96, LayerNorm.
4. Four Swin stages (96/192/384/768 wide, depths 2/2/6/2, heads 4/8/16/32, window 8; odd blocks
   shift by 4 except where the stage is no larger than one window; PatchMerging between stages).
5. Output used by Sat2Sound: the **fine-grained** ("locality-aware") tokens. Every attention
   module also projects its *values* through the output projection without attention mixing
   (``v_out``); in the last block of the last stage the block forms ``v = x_in + v_out`` and then
   ``v = v + norm2(v)`` (no MLP). The final LayerNorm is applied to that ``v``; the 8 × 8 grid is
   regrouped into (2 mel bands × 32 time steps) and the bands are averaged → ``(B, 32, 768)``.

State-dict names follow the checkpoint (``bn0``, ``patch_embed.{proj,norm}``,
``layers.S.blocks.B.{norm1,attn.{qkv,proj,relative_position_bias_table,relative_position_index},
norm2,mlp.{fc1,fc2}}``, ``layers.S.blocks.B.attn_mask`` on shifted blocks,
``layers.S.downsample.{norm,reduction}``, ``norm``, ``tscam_conv``, ``head`` and the log-mel
front end ``audio_feats_extractor.{mel_trans.stft.conv_real,conv_imag, log_trans.melW}``).
``tscam_conv`` and ``head`` (the AudioSet classifier) are kept only so checkpoints load strictly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from soundmap.models.sat2sound.configuration import HTSATConfig, MelConfig
from soundmap.models.vit import Mlp

#: Additive attention bias between tokens of different regions in a shifted window.
SHIFT_MASK_VALUE = -100.0
#: Floor of the power spectrum before the log (torchlibrosa ``amin``).
LOG_AMIN = 1e-10


# --------------------------------------------------------------------------------------------
# Log-mel front end (kernels stored in the checkpoint)
# --------------------------------------------------------------------------------------------
def stft_kernels(n_fft: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary DFT rows × periodic Hann window, as 1-D convolution weights
    ((n_fft/2 + 1) × 1 × n_fft): ``cos(2πkn/N)·w[n]`` and ``−sin(2πkn/N)·w[n]``."""
    n = np.arange(n_fft)
    k = np.arange(n_fft // 2 + 1)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
    angle = 2 * np.pi * k * n / n_fft
    real = torch.from_numpy(np.cos(angle) * window).float()[:, None, :]
    imag = torch.from_numpy(-np.sin(angle) * window).float()[:, None, :]
    return real, imag


def mel_matrix(config: MelConfig) -> torch.Tensor:
    """Slaney-scale, Slaney-normalised mel filters ((n_fft/2 + 1) × n_mels), librosa's default,
    computed with transformers' maintained implementation."""
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(num_frequency_bins=config.n_fft // 2 + 1, num_mel_filters=config.n_mels,
                           min_frequency=config.fmin, max_frequency=config.fmax,
                           sampling_rate=config.sample_rate, norm="slaney", mel_scale="slaney")
    return torch.from_numpy(np.asarray(bank, dtype=np.float32))


class _STFT(nn.Module):
    def __init__(self, n_fft: int) -> None:
        super().__init__()
        self.conv_real = nn.Conv1d(1, n_fft // 2 + 1, n_fft, bias=False)
        self.conv_imag = nn.Conv1d(1, n_fft // 2 + 1, n_fft, bias=False)
        real, imag = stft_kernels(n_fft)
        with torch.no_grad():
            self.conv_real.weight.copy_(real)
            self.conv_imag.weight.copy_(imag)


class _Spectrogram(nn.Module):
    def __init__(self, n_fft: int) -> None:
        super().__init__()
        self.stft = _STFT(n_fft)


class _LogMel(nn.Module):
    def __init__(self, config: MelConfig) -> None:
        super().__init__()
        self.melW = nn.Parameter(mel_matrix(config))


class LogMelFrontEnd(nn.Module):
    """Waveform (B × samples at 32 kHz) → log-mel (B × 1 × frames × 64), torchlibrosa's
    ``Spectrogram(center=True, pad_mode='reflect', power=2)`` + ``LogmelFilterBank(ref=1,
    amin=1e-10, top_db=None)``: reflect-pad n_fft/2 on both sides, strided DFT convolution,
    power, mel projection, ``10·log10(max(x, 1e-10))``."""

    def __init__(self, config: MelConfig) -> None:
        super().__init__()
        self.config = config
        self.mel_trans = _Spectrogram(config.n_fft)
        self.log_trans = _LogMel(config)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        pad = self.config.n_fft // 2
        x = F.pad(waveform[:, None, :], (pad, pad), mode="reflect")
        stft = self.mel_trans.stft
        real = F.conv1d(x, stft.conv_real.weight, stride=self.config.hop_length)
        imag = F.conv1d(x, stft.conv_imag.weight, stride=self.config.hop_length)
        power = (real ** 2 + imag ** 2).transpose(1, 2)[:, None]  # B × 1 × frames × bins
        mel = power @ self.log_trans.melW
        return 10.0 * torch.log10(torch.clamp(mel, min=LOG_AMIN))


# --------------------------------------------------------------------------------------------
# Swin pieces
# --------------------------------------------------------------------------------------------
def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) → (B·nW, window², C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition` → (B, H, W, C)."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // window) * (w // window))
    x = windows.view(b, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def relative_position_index(window: int) -> torch.Tensor:
    """(window², window²) index into the (2w−1)² bias table: ``(Δrow + w−1)·(2w−1) + Δcol + w−1``."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    return (rel[..., 0] + window - 1) * (2 * window - 1) + rel[..., 1] + window - 1


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """(nW, window², window²) additive mask: −100 between tokens that came from different
    regions after the cyclic shift, 0 otherwise."""
    regions = torch.zeros(1, height, width, 1)
    label = 0
    for rows in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for cols in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            regions[:, rows, cols, :] = label
            label += 1
    windows = window_partition(regions, window).squeeze(-1)
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.where(diff != 0, torch.tensor(SHIFT_MASK_VALUE), torch.tensor(0.0))


class WindowAttention(nn.Module):
    """Window self-attention with a relative position bias; also returns ``proj(V)`` (the values
    projected without attention mixing), which the fine-grained output is built from."""

    def __init__(self, dim: int, window: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        attn = attn + bias.reshape(n, n, -1).permute(2, 0, 1)[None]
        if mask is not None:
            windows = mask.shape[0]
            attn = attn.view(b // windows, windows, self.num_heads, n, n) + mask[None, :, None]
            attn = attn.view(b, self.num_heads, n, n)
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out), self.proj(v.transpose(1, 2).reshape(b, n, c))


class SwinBlock(nn.Module):
    """Pre-norm Swin block on a (height × width) token grid; optionally also the ``v`` stream."""

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, shift: int,
                 mlp_ratio: float) -> None:
        super().__init__()
        if resolution <= window:  # one window covers the grid: no shift, window = grid
            window, shift = resolution, 0
        self.resolution, self.window, self.shift = resolution, window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))  # fc1 → exact GELU → fc2, as the ViT's
        mask = shifted_window_mask(resolution, resolution, window, shift) if shift else None
        self.register_buffer("attn_mask", mask)

    def _to_grid(self, windows: torch.Tensor, b: int) -> torch.Tensor:
        r = self.resolution
        grid = window_reverse(windows, self.window, r, r)
        if self.shift:
            grid = torch.roll(grid, shifts=(self.shift, self.shift), dims=(1, 2))
        return grid.reshape(b, r * r, -1)

    def forward(self, x: torch.Tensor, want_v: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, length, c = x.shape
        r = self.resolution
        grid = self.norm1(x).view(b, r, r, c)
        if self.shift:
            grid = torch.roll(grid, shifts=(-self.shift, -self.shift), dims=(1, 2))
        attended, values = self.attn(window_partition(grid, self.window), self.attn_mask)
        out = x + self._to_grid(attended, b)
        out = out + self.mlp(self.norm2(out))
        if not want_v:
            return out, None
        v = x + self._to_grid(values, b)
        return out, v + self.norm2(v)


class PatchMerging(nn.Module):
    """2 × 2 neighbourhood → one token: concat (top-left, bottom-left, top-right, bottom-right),
    LayerNorm(4C), Linear(4C→2C, no bias)."""

    def __init__(self, dim: int, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        r = self.resolution
        grid = x.view(b, r, r, c)
        merged = torch.cat([grid[:, 0::2, 0::2], grid[:, 1::2, 0::2], grid[:, 0::2, 1::2], grid[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(merged.reshape(b, -1, 4 * c)))


class SwinStage(nn.Module):
    def __init__(self, dim: int, resolution: int, depth: int, num_heads: int, window: int, mlp_ratio: float,
                 downsample: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, num_heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio)
            for i in range(depth))
        self.downsample = PatchMerging(dim, resolution) if downsample else None

    def forward(self, x: torch.Tensor, want_v: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        v = None
        for i, block in enumerate(self.blocks):
            x, v = block(x, want_v and i == len(self.blocks) - 1)
        if self.downsample is not None:
            x = self.downsample(x)
        return x, v


class AudioPatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class HTSAT(nn.Module):
    """The HTS-AT tower: log-mel (B × 1 × T × 64) → fine-grained tokens (B × 32 × 768)."""

    def __init__(self, config: HTSATConfig, mel: MelConfig) -> None:
        super().__init__()
        self.config = config
        self.audio_feats_extractor = LogMelFrontEnd(mel)
        self.bn0 = nn.BatchNorm2d(config.mel_bins)
        self.patch_embed = AudioPatchEmbed(config.patch_size, config.embed_dim)
        grid = config.spec_size // config.patch_size
        stages = len(config.depths)
        self.layers = nn.ModuleList(
            SwinStage(config.embed_dim * 2 ** i, grid // 2 ** i, config.depths[i], config.num_heads[i],
                      config.window_size, config.mlp_ratio, downsample=i < stages - 1)
            for i in range(stages))
        self.norm = nn.LayerNorm(config.out_dim)
        final = grid // 2 ** (stages - 1)
        self.tscam_conv = nn.Conv2d(config.out_dim, config.classes, kernel_size=(final // config.freq_ratio, 3),
                                    padding=(0, 1))
        self.head = nn.Linear(config.classes, config.classes)

    def to_image(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, F) → (B, 1, F·ratio, T'/ratio): time to ``spec_size·ratio`` frames (bicubic,
        corners aligned), then the ``ratio`` time chunks stacked along frequency."""
        cfg = self.config
        b, c, t, f = mel.shape
        target = cfg.time_frames
        if t < target:
            mel = F.interpolate(mel, (target, f), mode="bicubic", align_corners=True)
        elif t > target:
            mel = mel[:, :, :target]
        x = mel.permute(0, 1, 3, 2).reshape(b, c, f, cfg.freq_ratio, target // cfg.freq_ratio)
        return x.permute(0, 1, 3, 2, 4).reshape(b, c, cfg.freq_ratio * f, target // cfg.freq_ratio)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """log-mel (B × 1 × T × F, or B × T × F) → (B × tokens × width)."""
        if mel.ndim == 3:
            mel = mel[:, None]
        x = self.bn0(mel.transpose(1, 3)).transpose(1, 3)
        x = self.patch_embed(self.to_image(x))
        v = None
        for i, stage in enumerate(self.layers):
            x, v = stage(x, want_v=i == len(self.layers) - 1)
        return self.fine_grained(self.norm(v))

    def fine_grained(self, v: torch.Tensor) -> torch.Tensor:
        """Normed last-stage ``v`` (B × S² × C) → (B × ratio·S × C): rows of the S × S grid are
        (time chunk, mel band); regroup to (band, chunk·S + column) and average the bands."""
        b, n, c = v.shape
        side = int(math.isqrt(n))
        ratio = self.config.freq_ratio
        grid = v.transpose(1, 2).reshape(b, c, side, side)
        bands = side // ratio
        grid = grid.reshape(b, c, ratio, bands, side).permute(0, 1, 3, 2, 4).reshape(b, c, bands, ratio * side)
        return grid.mean(dim=2).transpose(1, 2)
