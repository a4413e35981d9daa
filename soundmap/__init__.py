"""soundmap: zero-shot soundscape maps from satellite imagery, audio and text (PSM / GeoCLAP).

The public API is imported lazily so that ``import soundmap`` (and the CLI's ``--help``) stay fast
and do not pull in torch until a model is used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    # name: "module:attribute"
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'soundmap' has no attribute {name!r}")
    import importlib

    module_name, attr = target.split(":")
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value
