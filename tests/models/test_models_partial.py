"""Loading only the parts a command uses: a text query holds the text branch, fusion and heads
(no image encoder, no audio tower), embedding the image encoder only; the parts compute exactly
what the whole model computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from soundmap.models.partial import NotLoaded, load_model_parts, query_parts
from soundmap.models.soundscape import load_model


@pytest.fixture
def saved(tiny_psm_model, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    tiny_psm_model.name = "tiny-psm"
    return tiny_psm_model.save(tmp_path / "tiny-psm")


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_a_text_query_model_holds_no_image_encoder_nor_audio_tower(saved: Path, clap_files: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOUNDMAP_CLAP_DIR", str(clap_files))
    whole = load_model(saved, device="cpu")
    part = load_model_parts(saved, query_parts(["birds"], []), device="cpu")
    assert isinstance(part.image_encoder, NotLoaded) and isinstance(part.audio_encoder, NotLoaded)
    assert _params(part) == _params(whole) - _params(whole.image_encoder) - _params(whole.audio_encoder) \
        - _params(whole.criterion)
    assert part.weights_sha256 == whole.weights_sha256 and part.name == whole.name
    a, b = whole.encode_text(["bird song", "rain"]), part.encode_text(["bird song", "rain"])
    assert torch.equal(a.mu, b.mu)
    features = torch.randn(5, whole.config.fc_dim)
    assert torch.equal(whole.fuse(features).mu, part.fuse(features).mu)
    with pytest.raises(Exception, match="without its image encoder"):
        part.encode_image(torch.zeros((1, 256, 256, 3), dtype=torch.uint8), 1)


def test_an_embed_model_holds_only_the_image_encoder(saved: Path) -> None:
    whole = load_model(saved, device="cpu")
    part = load_model_parts(saved, ["image"], device="cpu")
    assert _params(part) == _params(whole.image_encoder)
    images = torch.randint(0, 256, (2, 256, 256, 3), dtype=torch.uint8)
    assert torch.equal(whole.encode_image(images, 1), part.encode_image(images, 1))


def test_query_parts_follow_the_queries() -> None:
    assert query_parts(["birds"], []) == ("fusion", "text")
    assert query_parts([], ["a.wav"]) == ("fusion", "audio")
    assert query_parts(["x"], ["a.wav"]) == ("fusion", "text", "audio")
    with pytest.raises(ValueError):
        load_model_parts("unused", ["wings"])


def test_a_partial_load_checks_the_whole_file(saved: Path) -> None:
    """NaN in a part that is NOT loaded (the image encoder) is still refused by a text-query load, and
    a file changed behind its recorded SHA-256 too: the load-time checks look at the whole file."""
    from safetensors.torch import load_file, save_file

    from soundmap.errors import ModelError

    weights = saved / "model.safetensors"
    state = load_file(str(weights))
    key = next(k for k in state if k.startswith("image_encoder.") and state[k].is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, str(weights))
    with pytest.raises(ModelError):
        load_model_parts(saved, query_parts(["birds"], []), device="cpu")
