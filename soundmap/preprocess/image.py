"""Image transforms of the reference (psm-reference.md, "Image preprocessing").

Inference (the authors' eval transform, for every imagery source): uint8 cell renders →
float [0, 1] → resize the shorter side to 224 (bicubic, antialias) → center-crop 224 → ImageNet
mean/std. (The paper says "center crop"; the code resizes first — we follow the code.)

Training pieces for the train engineer: :func:`zoom_crop` (center-crop ``l × tile_px`` from the
large source image, resize back to ``tile_px``, bicubic + antialias) and :func:`normalize_imagenet`.
Resizes use ``torch.nn.functional.interpolate(antialias=True)`` (torchvision is not available).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from soundmap.errors import InputError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
MODEL_INPUT_PX = 224


def to_float_nchw(images: Any) -> torch.Tensor:
    """uint8 N × H × W × 3 (numpy or torch; a single H × W × 3 is promoted) → float32 N × 3 × H × W in [0, 1]."""
    # read-only arrays (memory maps, Zarr chunks) are copied: torch warns on non-writable buffers
    tensor = torch.from_numpy(np.require(images, requirements=["C", "W"])) if isinstance(images, np.ndarray) else images
    if not isinstance(tensor, torch.Tensor):
        raise InputError("images must be a uint8 array of shape N×H×W×3")
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise InputError(f"images must have shape N×H×W×3, got {tuple(tensor.shape)}")
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    else:
        tensor = tensor.float()
    return tensor.permute(0, 3, 1, 2).contiguous()


def resize_bicubic(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic antialiased resize of N × C × H × W (no clamping, like torchvision on float input)."""
    if x.shape[-2:] == (height, width):
        return x
    return F.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False)


def resize_shorter_side(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize so the shorter side is ``size`` keeping the aspect ratio (torchvision ``Resize(int)``:
    the longer side becomes ``int(size · long / short)``)."""
    h, w = x.shape[-2:]
    if h <= w:
        return resize_bicubic(x, size, int(size * w / h))
    return resize_bicubic(x, int(size * h / w), size)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Central ``size × size`` window (torchvision's rounding: top = round((H − size)/2))."""
    h, w = x.shape[-2:]
    if h < size or w < size:
        raise InputError(f"image of {h}×{w} px is smaller than the {size} px crop")
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return x[..., top:top + size, left:left + size]


def normalize_imagenet(x: torch.Tensor) -> torch.Tensor:
    """``(x − mean) / std`` per channel with the ImageNet statistics."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def eval_transform(images: Any, size: int = MODEL_INPUT_PX, device: torch.device | str | None = None) -> torch.Tensor:
    """The reference's eval transform: uint8 N×H×W×3 → normalised float32 N × 3 × size × size."""
    x = to_float_nchw(images)
    if device is not None:
        x = x.to(device)
    return normalize_imagenet(center_crop(resize_shorter_side(x, size), size))


def zoom_crop(x: torch.Tensor, zoom: int, tile_px: int) -> torch.Tensor:
    """Training zoom transform: center-crop ``zoom × tile_px`` px of the large source image
    (N × 3 × H × W float in [0, 1]) and resize it to ``tile_px`` (bicubic, antialias), so zoom
    ``l`` covers ``l × tile_px × gsd`` metres."""
    return resize_bicubic(center_crop(x, zoom * tile_px), tile_px, tile_px)
