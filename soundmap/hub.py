"""Hugging Face Hub downloads, with the user's settings read at call time.

Every model soundmap fetches from the Hub (CLAP tokenizer files, Sat2Sound checkpoints, FlanT5,
AST, CLIP, CLIPSeg, RemoteCLIP) goes through this one module, so that all of them:

- land in the normal Hugging Face cache (``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
  ``$XDG_CACHE_HOME/huggingface/hub``), shared with every other HF tool of the user;
- honour ``HF_ENDPOINT`` (a mirror, or a loopback test server) and the offline switches
  ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` / ``SOUNDMAP_OFFLINE``, which then make no
  network call at all and name the missing file;
- report failures as one line (:class:`~soundmap.errors.DownloadError` /
  :class:`~soundmap.errors.ModelError`) instead of a library traceback;
- show progress bars unless ``--quiet``.

Why the settings are read here and passed explicitly: ``huggingface_hub`` reads ``HF_ENDPOINT``,
``HF_HOME`` and ``HF_HUB_OFFLINE`` once, when it is first imported. A long-lived process (a test
session, the explore server) that changes them later would otherwise still talk to the old host
or cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from soundmap.errors import DownloadError, ModelError
from soundmap.progress import is_quiet

DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class HubSettings:
    """Where Hub files come from and go to, as the environment says right now."""

    endpoint: str
    cache_dir: Path
    offline: bool


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def offline() -> bool:
    """True when any offline switch is set: soundmap's own or the Hugging Face ones."""
    return _flag("SOUNDMAP_OFFLINE") or _flag("HF_HUB_OFFLINE") or _flag("TRANSFORMERS_OFFLINE")


def hub_settings() -> HubSettings:
    """The endpoint, cache directory and offline switch from the environment, read now."""
    endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    if os.environ.get("HF_HUB_CACHE"):
        cache = Path(os.environ["HF_HUB_CACHE"])
    else:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "huggingface")
        cache = Path(home) / "hub"
    return HubSettings(endpoint=endpoint, cache_dir=cache.expanduser(), offline=offline())


def _quiet_bars() -> None:
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    (disable_progress_bars if is_quiet() else enable_progress_bars)()


def _missing_offline(repo_id: str, what: str, settings: HubSettings) -> ModelError:
    return ModelError(f"{what} of {repo_id} is not in the Hugging Face cache ({settings.cache_dir}) and "
                      "offline mode is on (SOUNDMAP_OFFLINE / HF_HUB_OFFLINE); run once with network access")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def hub_file(repo_id: str, filename: str, *, repo_type: str = "model", revision: str | None = None,
             prefer_cache: bool = True) -> Path:
    """Download (or find in the cache) one file of a Hub repository and return its local path.

    Offline, only the cache is looked at. With ``prefer_cache`` (the default) a file already in the
    cache for ``revision`` is returned with no request at all: soundmap pins what it downloaded
    (commit and SHA-256 in its lock file), so asking the Hub again whether ``main`` moved would only
    cost a round trip per file and fail on a plane. Pass ``prefer_cache=False`` to re-check.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    settings = hub_settings()
    if prefer_cache:
        cached = try_to_load_from_cache(repo_id, filename, cache_dir=settings.cache_dir,
                                        revision=revision, repo_type=repo_type)
        if isinstance(cached, str):
            return Path(cached)
    _quiet_bars()
    try:
        path = hf_hub_download(repo_id, filename, repo_type=repo_type, revision=revision,
                               cache_dir=settings.cache_dir, endpoint=settings.endpoint,
                               local_files_only=settings.offline)
    except LocalEntryNotFoundError:
        if settings.offline:
            raise _missing_offline(repo_id, filename, settings) from None
        raise DownloadError(f"could not reach {settings.endpoint} for {repo_id}/{filename} and it is not cached; "
                            "check the network (or HF_ENDPOINT) and try again") from None
    except EntryNotFoundError:
        raise ModelError(f"{filename} does not exist in {repo_id} on {settings.endpoint}") from None
    except RepositoryNotFoundError:
        raise ModelError(f"the repository {repo_id} does not exist on {settings.endpoint} (or is private)") from None
    except OSError as exc:
        raise DownloadError(f"download of {repo_id}/{filename} failed ({_one_line(exc)}); run again to resume") from exc
    except Exception as exc:  # httpx errors and hub HTTP errors become one actionable line
        raise DownloadError(f"download of {repo_id}/{filename} from {settings.endpoint} failed "
                            f"({type(exc).__name__}: {_one_line(exc)}); run again to resume") from exc
    return Path(path)


def hub_snapshot(repo_id: str, *, allow_patterns: list[str] | str | None = None, repo_type: str = "model",
                 revision: str | None = None, prefer_cache: bool = True) -> Path:
    """Download (or find in the cache) the files of a repository matching ``allow_patterns``.

    Returns the snapshot directory, which ``from_pretrained`` can load with no further request.
    With ``prefer_cache`` a snapshot already cached for ``revision`` is returned with no request
    (see :func:`hub_file`).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    settings = hub_settings()
    if prefer_cache and not settings.offline:
        try:
            return Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision,
                                          allow_patterns=allow_patterns, cache_dir=settings.cache_dir,
                                          endpoint=settings.endpoint, local_files_only=True))
        except LocalEntryNotFoundError:
            pass  # not cached yet: download below
    _quiet_bars()
    try:
        path = snapshot_download(repo_id, repo_type=repo_type, revision=revision, allow_patterns=allow_patterns,
                                 cache_dir=settings.cache_dir, endpoint=settings.endpoint,
                                 local_files_only=settings.offline)
    except LocalEntryNotFoundError:
        if settings.offline:
            raise _missing_offline(repo_id, "a snapshot", settings) from None
        raise DownloadError(f"could not reach {settings.endpoint} for {repo_id} and it is not cached; "
                            "check the network (or HF_ENDPOINT) and try again") from None
    except RepositoryNotFoundError:
        raise ModelError(f"the repository {repo_id} does not exist on {settings.endpoint} (or is private)") from None
    except Exception as exc:
        raise DownloadError(f"download of {repo_id} from {settings.endpoint} failed "
                            f"({type(exc).__name__}: {_one_line(exc)}); run again to resume") from exc
    return Path(path)
