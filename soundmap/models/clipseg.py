"""CLIPSeg (``CLIPSegForImageSegmentation``) as a closed-set segmenter over text prompts.

CLIPSeg predicts one logit map per (image, prompt) pair. For a fixed list of class prompts, each
pixel gets the class whose logit is highest there (the maps are upsampled bilinearly to the
image's size first), which turns the open-vocabulary model into a class map — as the study does to
obtain per-scene class proportions (§4.3).

torch/transformers are imported inside functions (heavy).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError


class CLIPSegSegmenter:
    """``segment(images, prompts)`` → per-pixel index of the best prompt (N × H × W int32)."""

    name = "clipseg"

    def __init__(self, directory: str | os.PathLike, device: str = "cpu") -> None:
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        self.directory = Path(directory)
        try:
            self.processor = CLIPSegProcessor.from_pretrained(str(self.directory), local_files_only=True)
            self.model = CLIPSegForImageSegmentation.from_pretrained(str(self.directory),
                                                                     local_files_only=True).eval().to(device)
        except (OSError, ValueError) as err:
            raise ModelError(f"CLIPSeg files in {self.directory} are unreadable ({str(err).splitlines()[0]})") from None
        self.device = device

    def logits(self, image: np.ndarray, prompts: Sequence[str]) -> Any:
        """K × H × W logits of one uint8 RGB image (H × W × 3) for K prompts, at the image's size."""
        import torch

        inputs = self.processor(text=list(prompts), images=[np.asarray(image, dtype=np.uint8)] * len(prompts),
                                padding=True, return_tensors="pt")
        with torch.no_grad():
            out = self.model(**{k: v.to(self.device) for k, v in inputs.items()}).logits
        out = out.reshape(len(prompts), *out.shape[-2:]).float().cpu()
        return torch.nn.functional.interpolate(out[None], size=tuple(image.shape[:2]), mode="bilinear",
                                               align_corners=False)[0]

    def segment(self, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        """Class index (0..K-1, the prompt order) of every pixel of every image."""
        images = np.asarray(images)
        out = np.zeros(images.shape[:3], dtype=np.int32)
        for i, image in enumerate(images):
            out[i] = self.logits(image, prompts).argmax(dim=0).numpy().astype(np.int32)
        return out


def load_clipseg(device: str = "cpu") -> CLIPSegSegmenter:
    """CLIPSeg rd64 refined (``aux_models.yaml`` entry ``clipseg``), downloaded on first use."""
    from .auxiliary import fetch_aux

    return CLIPSegSegmenter(fetch_aux("clipseg"), device=device)
