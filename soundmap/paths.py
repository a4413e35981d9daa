"""Where soundmap keeps things on disk.

Caches follow the XDG convention so that they are shared by all workspaces of a user and can be
wiped safely: ``--cache-dir`` beats ``SOUNDMAP_CACHE`` beats ``$XDG_CACHE_HOME/soundmap`` beats
``~/.cache/soundmap``. A workspace (one region being mapped) defaults to ``./.soundmap``.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The root of soundmap's caches (tiles, models, downloads), created on first use."""
    if explicit:
        root = Path(explicit)
    elif os.environ.get("SOUNDMAP_CACHE"):
        root = Path(os.environ["SOUNDMAP_CACHE"])
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = Path(xdg) / "soundmap"
    root = root.expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def tile_cache_path(explicit: str | os.PathLike | None = None) -> Path:
    """The SQLite tile store shared by every workspace."""
    return cache_dir(explicit) / "tiles.sqlite"


def model_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Directory holding imported models (one sub-directory per model name)."""
    path = cache_dir(explicit) / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def workspace_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The workspace of the region being mapped (``--workspace`` > ``SOUNDMAP_WORKSPACE`` > ``./.soundmap``)."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("SOUNDMAP_WORKSPACE"):
        return Path(os.environ["SOUNDMAP_WORKSPACE"]).expanduser()
    return Path(".soundmap")
