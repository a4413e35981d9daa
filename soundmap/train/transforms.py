"""Training-time image augmentation, written with torch ops (no torchvision in this stack).

PSM/SatMAE training transform (psm-reference "Image preprocessing"): after the zoom crop,
``RandomResizedCrop(224, scale=(0.2, 1.0), ratio=(3/4, 4/3), bicubic)`` → random horizontal flip
→ ImageNet normalisation. The crop box is drawn exactly as torchvision draws it (10 tries of a
random area fraction and log-uniform aspect ratio, then a centre-crop fallback), from an explicit
``numpy.random.Generator`` so that every draw is reproducible and resumable.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRAIN_SCALE = (0.2, 1.0)
TRAIN_RATIO = (3.0 / 4.0, 4.0 / 3.0)
INPUT_SIZE = 224


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale: tuple[float, float] = TRAIN_SCALE,
                            ratio: tuple[float, float] = TRAIN_RATIO) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width) drawn like torchvision's ``RandomResizedCrop``."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def to_float_chw(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """H × W × 3 uint8 (or an already float C × H × W tensor in [0, 1]) → 3 × H × W float32 in [0, 1]."""
    t = torch.from_numpy(np.array(image, copy=True)) if isinstance(image, np.ndarray) else image
    if t.dtype == torch.uint8:
        return t.permute(2, 0, 1).to(torch.float32).div_(255.0)
    return t.to(torch.float32)


def normalize_imagenet(chw: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std normalisation of a 3 × H × W (or N × 3 × H × W) tensor in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=chw.dtype, device=chw.device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=chw.dtype, device=chw.device).view(-1, 1, 1)
    return (chw - mean) / std


def train_augment(image: np.ndarray | torch.Tensor, rng: np.random.Generator, size: int = INPUT_SIZE,
                  scale: tuple[float, float] = TRAIN_SCALE) -> torch.Tensor:
    """RandomResizedCrop(size, bicubic, antialias) + horizontal flip (p = 0.5) + normalisation.

    ``image`` is the zoom-level image (H × W × 3 uint8 or 3 × H × W float in [0, 1]); returns a
    normalised 3 × size × size float32 tensor.
    """
    chw = to_float_chw(image)
    _, height, width = chw.shape
    top, left, h, w = random_resized_crop_box(height, width, rng, scale=scale)
    crop = chw[:, top:top + h, left:left + w].unsqueeze(0)
    out = F.interpolate(crop, size=(size, size), mode="bicubic", align_corners=False, antialias=True)[0]
    if rng.random() < 0.5:
        out = out.flip(-1)
    return normalize_imagenet(out)
