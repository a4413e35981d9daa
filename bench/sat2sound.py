"""Sat2Sound storage and per-setting cost: what a cell costs to store and to re-fuse.

Sat2Sound fuses metadata per image *token* (196 tokens × 1024 through 3 encoder layers, then the
16,000-code codebook over 196 + M tokens), so the PSM trick — store one vector per cell, fuse a
new setting cheaply — does not carry over. soundmap's design (see bench/RESULTS.md §6):

* models without metadata store the final 1024-d embedding per cell (a query is one dot product);
* models with metadata store the 196 projected tokens per cell (float16 by default), and every
  metadata setting runs fuser + codebook over them (results cached per setting by the query's
  fused cache).

This script measures, on one full-size random-weight model: the embed cost per cell (ViT +
projector, what storing tokens saves on every later setting), the per-setting cost per cell
(fuser + codebook), the projector alone (the extra per-setting cost if backbone tokens were
stored instead), and prints per-cell bytes and totals for 10⁵ and 10⁶ cells.

Usage: ``python bench/sat2sound.py [--quick] [--device cuda]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import Figures, best_of, parser  # noqa: E402


def main() -> None:
    import numpy as np
    import torch

    from soundmap.models.sat2sound.configuration import Sat2SoundConfig
    from soundmap.models.sat2sound.modeling import Sat2SoundModel
    from soundmap.preprocess.metadata import Metadata

    args = parser(__doc__.splitlines()[0]).parse_args()
    n = 4 if args.quick else 16
    device = torch.device(args.device)
    torch.manual_seed(0)
    meta = Sat2SoundModel(Sat2SoundConfig.full(metadata=("audio_source", "caption_source", "latlon", "month",
                                                         "hour"))).to(device).set_precision("fp32")
    images = np.random.default_rng(0).integers(0, 255, (n, 256, 256, 3), dtype=np.uint8)
    setting = Metadata(lat=np.linspace(40, 50, n), lon=np.linspace(5, 15, n), month=5, hour=13,
                       audio_source="yfcc", caption_source="meta")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    features = meta.encode_image(images, 1)
    embed_s = best_of(lambda: (meta.encode_image(images, 1), sync())) / n
    fuse_s = best_of(lambda: (meta.fuse(features, setting), sync())) / n
    with torch.inference_mode():
        backbone = meta.satmae_backbone.backbone(torch.zeros(n, 3, 224, 224, device=device),
                                                 torch.full((n,), 10.0, device=device))
        proj_s = best_of(lambda: (meta.satmae_backbone.projector(backbone), sync())) / n
    tokens, width, backbone_width = meta.config.num_patches, meta.config.fc_dim, meta.config.vit.embed_dim
    bytes_tokens16 = tokens * width * 2
    bytes_backbone16 = tokens * backbone_width * 2
    bytes_embedding16 = meta.config.codebook_dim * 2

    figures = Figures(f"Sat2Sound storage and per-setting cost ({device.type}, {n} cells, fp32 compute)")
    figures.add("sat2sound_embed_s_per_cell", embed_s)
    figures.add("sat2sound_setting_s_per_cell", fuse_s)
    figures.add("sat2sound_projector_s_per_cell", proj_s)
    figures.add("sat2sound_setting_vs_reembed", fuse_s / (embed_s + fuse_s), "< 1: a stored-token setting beats "
                "re-running the ViT")
    figures.add("bytes_per_cell_meta_tokens_fp16", bytes_tokens16)
    figures.add("bytes_per_cell_meta_backbone_tokens_fp16", bytes_backbone16)
    figures.add("bytes_per_cell_nometa_embedding_fp16", bytes_embedding16)
    for cells, label in ((10 ** 5, "1e5"), (10 ** 6, "1e6")):
        figures.add(f"store_gb_meta_tokens_fp16_{label}", bytes_tokens16 * cells / 1e9)
        figures.add(f"store_gb_nometa_{label}", bytes_embedding16 * cells / 1e9)
        figures.add(f"setting_hours_{label}", fuse_s * cells / 3600)
        figures.add(f"embed_hours_{label}", embed_s * cells / 3600)
    figures.print()


if __name__ == "__main__":
    main()
