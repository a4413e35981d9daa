"""The cross-modal study's encoders: AST segment cutting and pooling, the RemoteCLIP key mapping,
and the download of every auxiliary model from a loopback Hugging Face hub."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from soundmap.cli.main import run
from soundmap.errors import AudioError, ModelError
from soundmap.models.ast_audio import ASTEncoder, pool_segments, segment_waveform
from soundmap.models.clip_image import build_remoteclip, remoteclip_to_transformers
from tests.fixtures.hf_server import hf_server  # noqa: F401  (fixture)
from tests.fixtures.study_models import (AST_REPO, CLIP_REPO, CLIPSEG_REPO, REMOTECLIP_FILE, REMOTECLIP_REPO,
                                         open_clip_state_dict, save_open_clip_checkpoint, save_tiny_ast,
                                         save_tiny_clip, save_tiny_clipseg)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("study-models")
    return {"ast": save_tiny_ast(root / "ast"), "clip": save_tiny_clip(root / "clip"),
            "clipseg": save_tiny_clipseg(root / "clipseg"),
            "remoteclip": save_open_clip_checkpoint(root / "rc" / REMOTECLIP_FILE)}


# --------------------------------------------------------------------------- AST
def test_segments_are_consecutive_ten_second_windows_and_the_remainder_is_dropped() -> None:
    rate = 100                               # 10 s = 1000 samples: easy to check by hand
    wave = np.arange(2550, dtype=np.float32)  # 25.5 s
    segments = segment_waveform(wave, rate)
    assert segments.shape == (2, 1000)
    np.testing.assert_array_equal(segments[0], np.arange(0, 1000))
    np.testing.assert_array_equal(segments[1], np.arange(1000, 2000))
    assert segment_waveform(np.zeros(1000), rate).shape == (1, 1000)
    with pytest.raises(AudioError, match="shorter than one 10 s"):
        segment_waveform(np.zeros(999), rate)
    np.testing.assert_allclose(pool_segments(np.array([[1.0, 2.0], [3.0, 6.0]])), [2.0, 4.0])


def test_recording_embedding_is_the_mean_of_its_segments_pooled_outputs(saved) -> None:
    encoder = ASTEncoder(saved["ast"])
    rate = 16_000
    t = np.arange(int(21.5 * rate)) / rate
    first, second = np.sin(2 * np.pi * 500 * t[:10 * rate]), np.sign(np.sin(2 * np.pi * 3 * t[:10 * rate]))
    wave = np.concatenate([first, second, 0.3 * np.ones(int(1.5 * rate))]).astype(np.float32)
    by_hand = []
    for segment in (first, second):          # features and pooled output of each window, directly
        features = encoder.extractor([segment.astype(np.float32)], sampling_rate=rate, return_tensors="pt")
        with torch.no_grad():
            by_hand.append(encoder.model(input_values=features["input_values"]).pooler_output[0].numpy())
    got = encoder.embed_waveform(wave, rate)
    assert got.shape == (32,)
    np.testing.assert_allclose(got, np.mean(by_hand, axis=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(by_hand[0], by_hand[1])          # the two windows really differ
    # resampling happens first: the same clip at 32 kHz gives (nearly) the same embedding
    doubled = np.repeat(wave, 2)
    assert np.corrcoef(encoder.embed_waveform(doubled, 2 * rate), got)[0, 1] > 0.99


# --------------------------------------------------------------------------- RemoteCLIP mapping
def test_every_open_clip_tensor_is_mapped_with_equal_shapes_and_none_left_over() -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    state = open_clip_state_dict(width=64, layers=3, patch=8, grid=4, embed=16, mlp=128)
    mapping = remoteclip_to_transformers(state)
    assert mapping.config["num_hidden_layers"] == 3 and mapping.config["image_size"] == 32
    target = CLIPVisionModelWithProjection(CLIPVisionConfig(**mapping.config)).state_dict()
    wanted = {k for k in target if not k.endswith("position_ids")}
    assert set(mapping.tensors) == wanted                                   # nothing missing, nothing extra
    for key, tensor in mapping.tensors.items():
        assert tuple(tensor.shape) == tuple(target[key].shape), key
    visual = {k for k in state if k.startswith("visual.")}
    assert set(mapping.sources.values()) == visual                         # every vision tensor used
    assert sorted(mapping.ignored) == sorted(k for k in state if not k.startswith("visual."))
    in_proj = [t for t, s in mapping.sources.items() if s.endswith("resblocks.1.attn.in_proj_weight")]
    assert sorted(in_proj) == [f"vision_model.encoder.layers.1.self_attn.{p}_proj.weight" for p in "kqv"]
    torch.testing.assert_close(mapping.tensors["visual_projection.weight"], state["visual.proj"].t())
    torch.testing.assert_close(mapping.tensors["vision_model.encoder.layers.1.self_attn.v_proj.bias"],
                               state["visual.transformer.resblocks.1.attn.in_proj_bias"][128:])


def _open_clip_reference(state: dict, pixels: torch.Tensor, heads: int) -> torch.Tensor:
    """open_clip's ViT forward written from its layout with torch.nn.MultiheadAttention (which
    consumes ``in_proj_weight`` whole), independent of soundmap's mapping."""
    f = torch.nn.functional
    v = {k[len("visual."):]: t for k, t in state.items() if k.startswith("visual.")}
    width = v["class_embedding"].shape[0]
    x = f.conv2d(pixels, v["conv1.weight"], stride=v["conv1.weight"].shape[-1])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([v["class_embedding"].expand(x.shape[0], 1, width), x], dim=1) + v["positional_embedding"]
    x = f.layer_norm(x, (width,), v["ln_pre.weight"], v["ln_pre.bias"])
    layer = 0
    while f"transformer.resblocks.{layer}.ln_1.weight" in v:
        p = f"transformer.resblocks.{layer}."
        attn = torch.nn.MultiheadAttention(width, heads, batch_first=True)
        attn.load_state_dict({"in_proj_weight": v[p + "attn.in_proj_weight"], "in_proj_bias": v[p + "attn.in_proj_bias"],
                              "out_proj.weight": v[p + "attn.out_proj.weight"], "out_proj.bias": v[p + "attn.out_proj.bias"]})
        h = f.layer_norm(x, (width,), v[p + "ln_1.weight"], v[p + "ln_1.bias"])
        x = x + attn(h, h, h, need_weights=False)[0]
        h = f.layer_norm(x, (width,), v[p + "ln_2.weight"], v[p + "ln_2.bias"])
        x = x + f.linear(f.gelu(f.linear(h, v[p + "mlp.c_fc.weight"], v[p + "mlp.c_fc.bias"])),
                         v[p + "mlp.c_proj.weight"], v[p + "mlp.c_proj.bias"])
        layer += 1
    pooled = f.layer_norm(x[:, 0], (width,), v["ln_post.weight"], v["ln_post.bias"])
    return pooled @ v["proj"]


def test_mapped_model_computes_what_open_clip_computes() -> None:
    state = open_clip_state_dict(width=128, layers=2, patch=8, grid=4, embed=24, mlp=256, seed=3)
    model = build_remoteclip(state)
    assert model.config.num_attention_heads == 2                   # width / open_clip's head width 64
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(pixel_values=pixels).image_embeds
        reference = _open_clip_reference(state, pixels, heads=2)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)


def test_an_unknown_vision_tensor_is_refused() -> None:
    state = open_clip_state_dict(text=False)
    state["visual.attn_pool.query"] = torch.zeros(4, 64)
    with pytest.raises(ModelError, match="attn_pool.query has no counterpart"):
        remoteclip_to_transformers(state)


# --------------------------------------------------------------------------- downloads
def test_every_auxiliary_model_downloads_from_the_hub_once_and_loads(hf_server, saved, monkeypatch) -> None:
    from soundmap.hub import hub_settings
    from soundmap.models.ast_audio import load_ast
    from soundmap.models.clip_image import load_clip, load_remoteclip
    from soundmap.models.clipseg import load_clipseg

    hf_server.add_dir(AST_REPO, saved["ast"])
    hf_server.add_dir(CLIP_REPO, saved["clip"])
    hf_server.add_dir(CLIPSEG_REPO, saved["clipseg"])
    hf_server.add_file(REMOTECLIP_REPO, REMOTECLIP_FILE, saved["remoteclip"].read_bytes())
    ast, clip, remote, seg = load_ast(), load_clip(), load_remoteclip(), load_clipseg()
    cache = hub_settings().cache_dir
    for model in (ast, clip, seg):
        folder = getattr(model, "directory", None)
        assert folder is None or cache in Path(folder).parents
    assert hf_server.downloads(REMOTECLIP_FILE) and hf_server.downloads("model.safetensors")
    image = np.full((40, 50, 3), 90, dtype=np.uint8)
    assert clip.embed([image]).shape == (1, 16) and remote.embed([image]).shape == (1, 16)
    assert seg.segment(image[None], ["road", "water", "trees"]).shape == (1, 40, 50)
    made = len(hf_server.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")           # cached: works offline, with no request
    load_ast(), load_remoteclip(), load_clipseg(), load_clip()
    assert len(hf_server.requests) == made


def test_an_uncached_model_offline_is_one_line(hf_server, monkeypatch, capsys) -> None:
    from soundmap.models.clip_image import load_remoteclip

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="not in the Hugging Face cache"):
        load_remoteclip()
    assert hf_server.requests == []


def test_models_list_available_names_the_auxiliary_models_and_their_licences(capsys) -> None:
    assert run(["models", "list", "--available"]) == 0
    out = capsys.readouterr().out
    for repo, licence in ((AST_REPO, "BSD-3-Clause"), (CLIP_REPO, "MIT"), (CLIPSEG_REPO, "Apache-2.0"),
                          (f"{REMOTECLIP_REPO}/{REMOTECLIP_FILE}", "Apache-2.0")):
        line = next(line for line in out.splitlines() if repo in line)
        assert licence in line
