"""Lazy public names for packages (PEP 562 module ``__getattr__``).

``import soundmap`` and the CLI's ``--help`` must not pull in torch, rasterio or requests; so
packages list their public names as ``"module:attribute"`` strings and import one on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, table: Mapping[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``table[name]`` on first access and
    stores it in ``namespace`` (the package's ``globals()``) so later lookups skip this hook."""

    def __getattr__(name: str) -> Any:
        target = table.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module_name, attr = target.split(":")
        value = getattr(importlib.import_module(module_name), attr)
        namespace[name] = value
        return value

    return __getattr__
