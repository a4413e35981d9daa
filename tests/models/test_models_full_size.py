"""The released architecture at full size (ViT-B/16 + 3-layer fusion + full CLAP), random weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from soundmap.models.checkpoint import infer_audio_config, infer_fusion_config, infer_text_config, infer_vit_config
from soundmap.models.clap import full_audio_config, full_text_config
from soundmap.models.config import FusionConfig, ModelConfig, ViTConfig
from soundmap.models.scoring import score
from soundmap.models.soundscape import SoundscapeModel
from soundmap.preprocess.metadata import Metadata


@pytest.mark.slow
def test_full_size_psm_encodes_a_cell_and_a_text_on_cpu(clap_files) -> None:
    torch.manual_seed(0)
    model = SoundscapeModel(ModelConfig.full("psm", "sentinel"))
    model.clap_files = clap_files
    state = model.state_dict()
    # the tensor layout the importer expects from a released PSM (pcmepp, all metadata) checkpoint
    assert len(state) == 704
    counts = {prefix: sum(k.startswith(prefix) for k in state) for prefix in
              ("image_encoder.backbone.", "fuser.", "audio_encoder.model.model.audio_model.",
               "text_encoder.model.model.text_model.")}
    assert counts == {"image_encoder.backbone.": 148, "fuser.": 51, "audio_encoder.model.model.audio_model.": 266,
                      "text_encoder.model.model.text_model.": 201}
    # and the importer recovers the full configuration from the shapes alone
    assert infer_vit_config(state) == ViTConfig()
    assert infer_fusion_config(state) == FusionConfig()
    assert infer_audio_config(state) == full_audio_config()
    assert infer_text_config(state) == full_text_config()

    cell = np.random.default_rng(0).integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
    features = model.encode_image(cell, zoom=1)
    assert features.shape == (1, 512) and features.dtype == torch.float32 and torch.isfinite(features).all()
    image = model.fuse(features, Metadata(lat=38.6, lon=-90.2, month=6, hour=8, audio_source="iNat"))
    text = model.encode_text("birds singing in the rain")
    assert image.mu.shape == text.mu.shape == (1, 512)
    torch.testing.assert_close(text.mu.norm(dim=1), torch.ones(1))
    value = score(text, image, "csd")
    assert value.shape == (1,) and torch.isfinite(value).all()
