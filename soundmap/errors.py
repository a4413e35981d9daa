"""One place for the errors that users cause.

Every error a user can fix (bad bbox, missing tiles, unknown model, undecodable audio, ...)
is a :class:`SoundmapError`. The CLI prints its message as one line and exits with code 2;
anything else is a bug and keeps its traceback. Messages say what to do, not only what broke.
"""

from __future__ import annotations


class SoundmapError(Exception):
    """Base class of user-facing errors: the message is shown as one line, exit code 2."""

    exit_code: int = 2


class InputError(SoundmapError):
    """A command-line value or file the user gave is malformed or out of range."""


class ConfigError(SoundmapError):
    """A configuration file (tiles.yaml, BGA table, model config) is invalid."""


class TileError(SoundmapError):
    """Imagery could not be fetched, decoded or found in the cache."""


class ModelError(SoundmapError):
    """A model is unknown, missing, incompatible or its checkpoint is inconsistent."""


class AudioError(SoundmapError):
    """An audio file could not be decoded."""


class CacheError(SoundmapError):
    """A cache or workspace is missing, stale or was made with different settings."""


class DownloadError(SoundmapError):
    """A file could not be downloaded, or what arrived does not match its expected size/SHA-256."""
