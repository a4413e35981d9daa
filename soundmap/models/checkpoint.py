"""Import the authors' PyTorch-Lightning checkpoints (mvrl/PSM) into soundmap's model format.

A released ``.ckpt`` is a pickled dict with ``state_dict`` (the Lightning module's tensors under
``sat_encoder.encoder.…``, ``audio_encoder.…``, ``text_encoder.…``, ``criterion.…``) and
``hyper_parameters`` (the training argparse arguments). The importer

1. reads it with ``torch.load(weights_only=True)``: the restricted unpickler only rebuilds
   tensors and plain containers. The hyper-parameters are an ``argparse.Namespace``, which that
   unpickler refuses by default, so exactly that class is allow-listed with
   ``torch.serialization.safe_globals`` — it is a plain attribute bag and cannot run code on
   load. Anything else the file pickles is refused; ``unsafe_pickle=True`` (CLI
   ``--unsafe-pickle``) falls back to a full unpickle, which can run arbitrary code, and warns;
2. derives the variant from the hyper-parameters (``loss_type``, ``sat_encoder_type``,
   ``audio/text_encoder_type``, ``sat_type``, ``metadata_type``, ``fc_dim``) and the
   architecture sizes from the tensor shapes;
3. maps the authors' prefixes onto soundmap's and checks that every expected tensor is present
   with the right shape and nothing is left over — a one-line :class:`ModelError` otherwise
   (the authors load with ``strict=False``; soundmap never does);
4. writes ``config.json`` + ``model.safetensors`` atomically into ``<model_dir>/<name>``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import pickle
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from soundmap.errors import ModelError
from soundmap.families import get_family
from soundmap.models.config import (
    AUTHOR_COMPONENT_NAMES,
    FusionConfig,
    ModelConfig,
    ViTConfig,
)
from soundmap.models.soundscape import Criterion, SoundscapeModel, check_state_dict

#: (authors' prefix, soundmap prefix), most specific first.
PREFIX_MAP: tuple[tuple[str, str], ...] = (
    ("sat_encoder.encoder.backbone.", "image_encoder.backbone."),
    ("sat_encoder.encoder.projector.", "image_encoder.projector."),
    ("sat_encoder.encoder.meta_fuser.", "fuser."),
    ("sat_encoder.encoder.mean_head.", "image_heads.mean_head."),
    ("sat_encoder.encoder.std_head.", "image_heads.std_head."),
    ("audio_encoder.", "audio_encoder."),
    ("text_encoder.", "text_encoder."),
    ("criterion.", "criterion."),
)
#: Training-only tensors: imported when present, left at their initial values when absent.
OPTIONAL_PREFIXES: tuple[str, ...] = ("criterion.",)
_LOSS_TO_VARIANT = {"pcmepp": "psm", "infonce": "geoclap"}
_EXPECTED_ENCODERS = {
    "psm": {"sat_encoder_type": "probSatMAE", "audio_encoder_type": "probCLAP", "text_encoder_type": "probCLAP"},
    "geoclap": {"sat_encoder_type": "baselineSatMAE", "audio_encoder_type": "baselineCLAP",
                "text_encoder_type": "baselineCLAP"},
}
_AUTHOR_TO_COMPONENT = {v: k for k, v in AUTHOR_COMPONENT_NAMES.items()}


# --------------------------------------------------------------------------------------------
# Key mapping
# --------------------------------------------------------------------------------------------
def to_soundmap_key(author_key: str) -> str | None:
    """The soundmap name of an authors' state-dict key, or None if no prefix matches."""
    for theirs, ours in PREFIX_MAP:
        if author_key.startswith(theirs):
            return ours + author_key[len(theirs):]
    return None


def to_author_key(key: str) -> str:
    """The authors' name of a soundmap state-dict key (inverse of :func:`to_soundmap_key`)."""
    for theirs, ours in PREFIX_MAP:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    raise KeyError(key)


def export_author_state_dict(model: SoundscapeModel) -> dict[str, torch.Tensor]:
    """The model's tensors under the authors' Lightning names (for tests and round trips)."""
    return {to_author_key(k): v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------
# Reading the file
# --------------------------------------------------------------------------------------------
def read_lightning_checkpoint(path: str | os.PathLike, unsafe_pickle: bool = False) -> dict[str, Any]:
    """``torch.load`` a Lightning checkpoint safely (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist")
    if unsafe_pickle:
        warnings.warn(f"loading {path} with full unpickling (--unsafe-pickle): only do this for files you trust",
                      stacklevel=2)
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
            raise ModelError(f"cannot read checkpoint {path}: {_first_line(err)}") from None
    try:
        with _allow_namespace():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        blocked = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f" (it pickles {blocked.group(1)})" if blocked else ""
        raise ModelError(f"checkpoint {path} needs objects the safe loader refuses{what}; if you trust "
                         f"the file, re-run with --unsafe-pickle") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ModelError(f"cannot read checkpoint {path}: {_first_line(err)} (truncated download?)") from None


@contextlib.contextmanager
def _allow_namespace() -> Iterator[None]:
    """Allow-list ``argparse.Namespace`` for the safe unpickler (``safe_globals`` from torch 2.5;
    the process-wide ``add_safe_globals`` on 2.4)."""
    serialization = torch.serialization
    if hasattr(serialization, "safe_globals"):
        with serialization.safe_globals([argparse.Namespace]):
            yield
        return
    if hasattr(serialization, "add_safe_globals"):
        serialization.add_safe_globals([argparse.Namespace])
    yield


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _hparam(hparams: Any, key: str, default: Any = None) -> Any:
    if isinstance(hparams, dict):
        return hparams.get(key, default)
    return getattr(hparams, key, default)


# --------------------------------------------------------------------------------------------
# Deriving the configuration
# --------------------------------------------------------------------------------------------
def parse_metadata_type(metadata_type: str | None) -> tuple[str, ...]:
    """``latlong_month_time_asource_tsource`` → soundmap components; ``none`` → ()."""
    if not metadata_type or str(metadata_type).lower() == "none":
        return ()
    parts = str(metadata_type).split("_")
    unknown = [p for p in parts if p not in _AUTHOR_TO_COMPONENT]
    if unknown:
        raise ModelError(f"checkpoint metadata_type {metadata_type!r} has unknown parts {unknown}")
    return tuple(_AUTHOR_TO_COMPONENT[p] for p in parts)


def variant_from_hparams(hparams: Any) -> str:
    """``psm`` or ``geoclap`` from ``loss_type``, checked against the encoder types."""
    loss = str(_hparam(hparams, "loss_type", "")).lower()
    if loss not in _LOSS_TO_VARIANT:
        raise ModelError(f"checkpoint loss_type {loss or 'missing'!r} is not supported; expected pcmepp (PSM) "
                         "or infonce (GeoCLAP)")
    variant = _LOSS_TO_VARIANT[loss]
    for key, expected in _EXPECTED_ENCODERS[variant].items():
        value = _hparam(hparams, key)
        if value is not None and value != expected:
            raise ModelError(f"checkpoint has loss_type {loss} but {key}={value}; expected {expected}")
    probabilistic = _hparam(hparams, "probabilistic")
    if isinstance(probabilistic, bool) and probabilistic != (variant == "psm"):
        raise ModelError(f"checkpoint has loss_type {loss} but probabilistic={probabilistic}")
    return variant


def _count(state: dict[str, Any], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in state if (m := regex.match(k))})


def _shape(state: dict[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise ModelError(f"checkpoint is missing {to_author_key(key)}; it is not a complete PSM/GeoCLAP checkpoint")
    return tuple(state[key].shape)


def _heads_for(width: int) -> int:
    """Attention heads are not visible in tensor shapes: 64-d heads (ViT-B/RoBERTa-base: 768 → 12)
    for real sizes, 16-d heads for toy widths below 64 (the test configs)."""
    return width // 64 if width >= 64 else max(1, width // 16)


def infer_vit_config(state: dict[str, torch.Tensor]) -> ViTConfig:
    """ViT sizes from the backbone tensors (soundmap names)."""
    p = "image_encoder.backbone."
    embed, _, patch, _ = _shape(state, p + "patch_embed.proj.weight")
    hidden = _shape(state, p + "blocks.0.mlp.fc1.weight")[0]
    return ViTConfig(embed_dim=embed, depth=_count(state, re.escape(p) + r"blocks\.(\d+)\."),
                     num_heads=_heads_for(embed), mlp_ratio=hidden / embed, patch_size=patch)


def infer_fusion_config(state: dict[str, torch.Tensor], num_heads: int = 8) -> FusionConfig:
    """Fusion sizes from the ``fuser.`` tensors (heads: the reference's fixed 8)."""
    p = "fuser.transformer_encoder.layers."
    meta_hidden = next((tuple(v.shape)[0] for k, v in state.items()
                        if k.startswith("fuser.meta_embed.") and k.endswith("fc1.weight")), 64)
    return FusionConfig(num_layers=_count(state, re.escape(p) + r"(\d+)\."), num_heads=num_heads,
                        dim_feedforward=_shape(state, p + "0.linear1.weight")[0], meta_hidden=meta_hidden)


def infer_audio_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """HTSAT config kwargs from ``audio_encoder.model.model.…`` shapes (start: the full config)."""
    from soundmap.models.clap import full_audio_config

    p = "audio_encoder.model.model.audio_model.audio_encoder."
    config = full_audio_config()
    width, _, patch, _ = _shape(state, p + "patch_embed.proj.weight")
    stages = _count(state, re.escape(p) + r"layers\.(\d+)\.")
    depths = [_count(state, re.escape(p) + rf"layers\.{s}\.blocks\.(\d+)\.") for s in range(stages)]
    table = p + "layers.{}.blocks.0.attention.self.relative_position_bias_table"
    heads = [_shape(state, table.format(s))[1] for s in range(stages)]
    window = int(round((math.sqrt(_shape(state, table.format(0))[0]) + 1) / 2))
    last_width = _shape(state, p + f"layers.{stages - 1}.blocks.0.layernorm_before.weight")[0]
    mlp_hidden = _shape(state, p + "layers.0.blocks.0.intermediate.dense.weight")[0]
    config.update({
        "patch_embeds_hidden_size": width, "patch_size": patch, "patch_stride": [patch, patch],
        "depths": depths, "num_attention_heads": heads, "window_size": window, "hidden_size": last_width,
        "mlp_ratio": mlp_hidden / width,
        "projection_dim": _shape(state, "audio_encoder.model.model.audio_projection.linear2.weight")[0],
        "enable_fusion": any(".patch_embed.fusion_model." in k for k in state),
    })
    fusion_conv = p + "patch_embed.fusion_model.local_att.0.weight"
    if fusion_conv in state:
        config["aff_block_r"] = width // _shape(state, fusion_conv)[0]
    return config


def infer_text_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """RoBERTa config kwargs from ``text_encoder.model.model.…`` shapes (start: the full config)."""
    from soundmap.models.clap import full_text_config

    p = "text_encoder.model.model.text_model."
    config = full_text_config()
    vocab, hidden = _shape(state, p + "embeddings.word_embeddings.weight")
    config.update({
        "vocab_size": vocab, "hidden_size": hidden, "num_attention_heads": _heads_for(hidden),
        "num_hidden_layers": _count(state, re.escape(p) + r"encoder\.layer\.(\d+)\."),
        "intermediate_size": _shape(state, p + "encoder.layer.0.intermediate.dense.weight")[0],
        "max_position_embeddings": _shape(state, p + "embeddings.position_embeddings.weight")[0],
        "type_vocab_size": _shape(state, p + "embeddings.token_type_embeddings.weight")[0],
        "projection_dim": _shape(state, "text_encoder.model.model.text_projection.linear2.weight")[0],
    })
    return config


def map_state_dict(author_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the authors' keys; unknown prefixes are an error (listed, first 3 + count)."""
    mapped: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in author_state.items():
        ours = to_soundmap_key(key)
        if ours is None:
            unknown.append(key)
        else:
            mapped[ours] = tensor
    if unknown:
        shown = ", ".join(unknown[:3]) + (", …" if len(unknown) > 3 else "")
        raise ModelError(f"checkpoint has {len(unknown)} tensors outside the PSM/GeoCLAP modules ({shown})")
    return mapped


def config_from_checkpoint(checkpoint: dict[str, Any], name: str = "") -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Derive the :class:`ModelConfig` and the renamed state dict from a loaded checkpoint."""
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ModelError("file is not a PyTorch-Lightning checkpoint (no state_dict)")
    hparams = checkpoint.get("hyper_parameters")
    if hparams is None:
        raise ModelError("checkpoint has no hyper_parameters; cannot tell PSM from GeoCLAP")
    state = map_state_dict(dict(checkpoint["state_dict"]))
    variant = variant_from_hparams(hparams)
    family = _hparam(hparams, "sat_type")
    if family is None:
        raise ModelError("checkpoint hyper_parameters have no sat_type (imagery family)")
    fc_dim = int(_hparam(hparams, "fc_dim", 512))
    metadata = parse_metadata_type(_hparam(hparams, "metadata_type", "none"))
    config = ModelConfig(
        variant=variant, family=get_family(str(family)).name, metadata=metadata, fc_dim=fc_dim,
        vit=infer_vit_config(state),
        fusion=infer_fusion_config(state) if metadata else FusionConfig(),
        audio=infer_audio_config(state), text=infer_text_config(state), name=name,
        source={key: _plain(_hparam(hparams, key)) for key in
                ("dataset_type", "sat_type", "loss_type", "metadata_type", "sat_encoder_type",
                 "audio_encoder_type", "text_encoder_type", "fc_dim", "run_name")
                if _hparam(hparams, key) is not None},
    )
    return config, state


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) else str(value)


def convert_checkpoint(checkpoint: dict[str, Any], name: str = "") -> SoundscapeModel:
    """A :class:`SoundscapeModel` holding exactly the checkpoint's tensors (strict check)."""
    config, state = config_from_checkpoint(checkpoint, name)
    with torch.device("meta"):
        probe = SoundscapeModel(config, name=name)
    absent = check_state_dict(probe, state, what="checkpoint tensors", optional_prefixes=OPTIONAL_PREFIXES,
                              display=to_author_key)
    if absent:  # training-only tensors missing: start them at their initial values
        fresh = Criterion(config.variant).state_dict()
        state = {**state, **{key: fresh[key.removeprefix("criterion.")] for key in absent}}
        config = config.with_updates(source={**config.source, "criterion_imported": False})
    state = {key: (tensor.to(torch.float32) if tensor.is_floating_point() else tensor).contiguous()
             for key, tensor in state.items()}  # weights are kept in fp32 whatever the training precision
    model = SoundscapeModel.from_state_dict(config, state, name=name, what="checkpoint tensors",
                                            display=to_author_key)
    return model.eval()


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def save_model_atomically(model: SoundscapeModel, destination: Path) -> Path:
    """Save into a temporary sibling directory, then swap it into place (a reader never sees a
    half-written model; an old model of the same name is replaced only once the new one is complete)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        model.name = destination.name
        model.save(staging)
        if destination.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old.", dir=destination.parent))
            os.replace(destination, retired / "model")
            os.replace(staging, destination)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, destination)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return destination


def validate_model_name(name: str) -> str:
    """Model names become directory names: letters, digits, ``._-`` only."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name or ""):
        raise ModelError(f"invalid model name {name!r}; use letters, digits, '.', '_' or '-'")
    return name


def import_checkpoint(path: str | os.PathLike, name: str, *, unsafe_pickle: bool = False,
                      cache_dir: str | os.PathLike | None = None,
                      provenance: dict[str, Any] | None = None) -> Path:
    """Import an authors' ``.ckpt`` as ``<model_dir>/<name>`` and return that directory."""
    from soundmap.paths import model_dir

    validate_model_name(name)
    checkpoint = read_lightning_checkpoint(path, unsafe_pickle=unsafe_pickle)
    model = _convert_any(checkpoint, name)
    if provenance:
        model.config = model.config.with_updates(source={**model.config.source, **provenance})
    return save_model_atomically(model, model_dir(cache_dir) / name)


def _convert_any(checkpoint: dict[str, Any], name: str) -> Any:
    """PSM/GeoCLAP or Sat2Sound, recognised from the checkpoint itself."""
    from soundmap.models.sat2sound.checkpoint import convert_checkpoint as convert_sat2sound
    from soundmap.models.sat2sound.checkpoint import is_sat2sound_checkpoint

    if is_sat2sound_checkpoint(checkpoint):
        return convert_sat2sound(checkpoint, name=name)
    return convert_checkpoint(checkpoint, name=name)
