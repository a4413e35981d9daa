"""Load only the parts of a model a command uses.

A text query needs the text branch, the metadata fusion and the image heads — not ViT-B/16 nor the
audio tower; an audio query the audio branch instead of the text one; embedding only the image
encoder. Loading the whole released model for a text query peaks at ~2.3 GiB RSS; loading the
parts reads only their tensors from ``model.safetensors`` (``safe_open`` by key prefix, see the
key layout in :mod:`soundmap.models.soundscape`) and never builds the others' weights: the
modules not loaded are replaced by :class:`NotLoaded`, which names the part and the fix when used.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from soundmap.errors import ModelError
from soundmap.models.soundscape import (SoundscapeModel, _clap_files_under, check_state_dict, model_files,
                                        resolve_device)

#: The model's parts: the submodules (attribute names) each one is made of.
PARTS: dict[str, tuple[str, ...]] = {
    "image": ("image_encoder",),
    "fusion": ("fuser", "image_heads"),
    "text": ("text_encoder",),
    "audio": ("audio_encoder",),
}
#: Submodules no inference command uses (the training loss's parameters).
TRAINING_ONLY = ("criterion",)


class NotLoaded(nn.Module):
    """Stands in for a submodule left out by :func:`load_model_parts`: no weights; using it is a
    one-line error naming the part (a bug in the caller, who chose the parts)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.part_name = name

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise ModelError(f"the model was loaded without its {self.part_name}; load it with that part")

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            raise AttributeError(f"the model was loaded without its {self.__dict__.get('part_name', 'part')} "
                                 f"(no attribute {name!r})") from None


def _check_parts(parts: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(parts))
    unknown = [p for p in chosen if p not in PARTS]
    if unknown or not chosen:
        raise ValueError(f"model parts must be among {', '.join(PARTS)}, got {list(chosen)}")
    return chosen


def load_model_parts(name_or_path: str | os.PathLike, parts: Iterable[str], device: Any = "auto", *,
                     clap_files: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                     verify_hash: bool = False) -> SoundscapeModel:
    """:func:`~soundmap.models.soundscape.load_model` holding only ``parts`` (of :data:`PARTS`).

    The model keeps the whole file's identity (name, weights SHA-256, config), so stores and
    checks treat it as the same model.
    """
    from safetensors import SafetensorError, safe_open

    chosen = _check_parts(parts)
    keep = tuple(module for part in chosen for module in PARTS[part])
    directory, config, sha, weights = model_files(name_or_path, cache_dir, verify_hash=verify_hash)
    if config.variant == "sat2sound":  # its own module tree: loaded whole (no part table for it yet)
        from soundmap.models.soundscape import load_model

        return load_model(directory, device, clap_files=clap_files, cache_dir=cache_dir)
    target = resolve_device(device)
    prefixes = tuple(f"{module}." for module in keep)
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as handle:
            _check_whole_file(handle, weights, sha)
            state = {key: handle.get_tensor(key) for key in handle.keys() if key.startswith(prefixes)}
    except (SafetensorError, OSError) as err:
        raise ModelError(f"cannot read {weights} ({err}); re-import the model") from None
    model = _assemble(config, state, keep, name=config.name or directory.name, weights_sha256=sha)
    model.clap_files = Path(clap_files) if clap_files else _clap_files_under(cache_dir)
    model.loaded_parts = chosen
    return model.to(target).eval()


def _check_whole_file(handle: Any, weights: Path, sha256: str) -> None:
    """The load-time integrity checks of :func:`~soundmap.models.integrity.check_weights` (recorded
    SHA-256, finite tensors) over the WHOLE file, one tensor at a time, so that a partial load
    never stamps a file as verified after looking at only part of it."""
    from soundmap.models.integrity import check_finite, record_verified, verify_weights_file, weights_verified

    if weights_verified(weights, sha256):
        return
    verify_weights_file(weights, sha256)
    for key in handle.keys():
        check_finite({key: handle.get_tensor(key)}, weights)
    record_verified(weights, sha256)


def _assemble(config: Any, state: dict[str, torch.Tensor], keep: tuple[str, ...], *, name: str,
              weights_sha256: str) -> SoundscapeModel:
    """The model on ``meta``, the modules not kept swapped for :class:`NotLoaded`, the kept ones
    given the loaded tensors (rebuilt for real, one by one, when one holds buffers the file lacks)."""
    with torch.device("meta"):
        model = SoundscapeModel(config, name=name, weights_sha256=weights_sha256)
    for module in (*(m for modules in PARTS.values() for m in modules), *TRAINING_ONLY):
        if module not in keep and getattr(model, module, None) is not None:
            setattr(model, module, NotLoaded(module.replace("_", " ")))
    check_state_dict(model, state, what="model weights")
    owned = {key: tensor.clone(memory_format=torch.contiguous_format) for key, tensor in state.items()}
    model.load_state_dict(owned, strict=True, assign=True)
    for module in keep:
        sub = getattr(model, module, None)
        if sub is not None and any(t.is_meta for t in [*sub.parameters(), *sub.buffers()]):
            fresh = getattr(SoundscapeModel(config, name=name, weights_sha256=weights_sha256), module)
            prefix = f"{module}."
            fresh.load_state_dict({k[len(prefix):]: v for k, v in owned.items() if k.startswith(prefix)}, strict=True)
            setattr(model, module, fresh)
    return model.eval()


def query_parts(texts: Iterable[Any], audios: Iterable[Any]) -> tuple[str, ...]:
    """The parts a query needs: fusion and heads, plus the text and/or audio branch it uses."""
    parts = ["fusion"]
    if tuple(texts):
        parts.append("text")
    if tuple(audios):
        parts.append("audio")
    return tuple(parts)
