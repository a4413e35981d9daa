"""Model and device resolution for the workflows: which device a run uses, which model a command
means (a loaded one, a name, a directory, or none: the installed default), and moving a model
to its device. One place, so that embed, query and map resolve ``--model``/``--device`` alike.

torch and the model classes are imported inside the functions: planning a run and printing
``--help`` must not pay for them.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ModelError
from ..models.devices import resolve_device

__all__ = ["default_model_name", "load_named_model", "load_query_model", "model_on_device", "resolve_device",
           "resolve_model"]


def load_named_model(name: str | os.PathLike, *, device: Any = "auto", cache_dir: str | os.PathLike | None = None,
                     parts: tuple[str, ...] | None = None) -> Any:
    """An installed model by name (looked up under ``--cache-dir`` when given) or a model
    directory; only ``parts`` of it (:data:`soundmap.models.partial.PARTS`) when given."""
    if parts is not None:
        from ..models.partial import load_model_parts

        return load_model_parts(name, parts, device=device, cache_dir=cache_dir)
    from ..models.soundscape import load_model

    return load_model(name, device=device, cache_dir=cache_dir)


def resolve_model(model: Any, *, family: str, device: Any, cache_dir: str | os.PathLike | None = None) -> Any:
    """The model to embed with: ``model`` itself when already loaded, else loaded by name/path
    (its image encoder only: embedding uses nothing else), else the installed PSM model of
    ``family`` (:func:`default_model_name`)."""
    if model is not None and hasattr(model, "encode_image"):
        return model
    name = str(model) if model is not None else default_model_name(family, cache_dir=cache_dir)
    return load_named_model(name, device=device, cache_dir=cache_dir, parts=("image",))


def load_query_model(model: Any, store: Any, *, device: Any = "auto", cache_dir: str | os.PathLike | None = None,
                     parts: tuple[str, ...] | None = None) -> Any:
    """The model to query with: ``model`` if loaded, else by name, else the one that made ``store``;
    only ``parts`` of it when given (a text query: fusion + text branch, see
    :func:`soundmap.models.partial.query_parts`)."""
    if model is not None and hasattr(model, "fuse"):
        return model
    name = str(model) if model is not None else str(store.identity.model_name)
    return load_named_model(name, device=device, cache_dir=cache_dir, parts=parts)


def default_model_name(family: str, *, cache_dir: str | os.PathLike | None = None) -> str:
    """The installed PSM model trained on ``family`` imagery (preferring one that takes metadata,
    the paper's headline models); ModelError naming the ``soundmap models pull`` to run if none."""
    from ..families import get_family
    from ..models.registry import installed_models, load_registry

    wanted = get_family(family).name
    candidates = [m for m in installed_models(cache_dir)
                  if m.config.variant == "psm" and get_family(m.config.family).name == wanted]
    if candidates:
        return sorted(candidates, key=lambda m: (not m.config.metadata, m.name))[0].name
    released = sorted((e for e in load_registry().entries.values() if e.variant == "psm" and e.family == wanted),
                      key=lambda e: (not e.metadata, e.name))
    suggestion = f"`soundmap models pull {released[0].name}`" if released else "`soundmap models pull NAME`"
    raise ModelError(f"no PSM model for {wanted} imagery is installed; run {suggestion} "
                     "(see `soundmap models list --available`) or pass --model NAME")


def model_on_device(model: Any, wanted: Any) -> Any:
    """The device the model's weights are on (moved there when the caller asked for another)."""
    import torch

    current = torch.device(getattr(model, "device", wanted))
    if current.type != wanted.type:
        model.to(wanted)
        return wanted
    return current
