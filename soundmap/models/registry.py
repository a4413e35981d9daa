"""Registry of released checkpoints (``soundmap/data/models.yaml``) and of installed models.

Like TorchGeo's weight registry, each entry carries where to get the file and what it is
(variant, imagery family, metadata it accepts, dataset, size, SHA-256, licence note). Installed
models live in ``<model_dir>/<name>/{config.json, model.safetensors}``; this module lists, pulls
and removes them.

Where a file comes from is the entry's ``source`` mapping, one of::

    {kind: drive, folder_id: ID, path: "run/epoch=….ckpt"}   # a file inside a public Drive folder
    {kind: hf, repo: owner/name, path: file.ckpt, revision: main}
    {kind: url, url: https://…}

An entry without ``source`` gets one from the older fields (``url``, else ``folder_path`` inside
the registry's ``folder_id``). :data:`FETCHERS` maps a kind to its fetch function
(:mod:`soundmap.models.sources`). ``SOUNDMAP_REGISTRY`` names another models.yaml to read (a
mirror, or a test).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from collections.abc import Callable
from typing import Any

import yaml

from soundmap.errors import ConfigError, ModelError, SoundmapError
from soundmap.models.config import (CONFIG_FILE, METADATA_COMPONENTS, WEIGHTS_FILE, ModelConfig, normalize_components,
                                    read_config)
from soundmap.progress import info


@dataclass(frozen=True)
class RegistryEntry:
    """One released checkpoint."""

    name: str
    variant: str
    family: str
    metadata: tuple[str, ...]
    dataset: str
    experiment: str
    folder_path: str
    url: str | None
    size: int | None
    sha256: str | None
    source: dict[str, Any] = field(default_factory=dict)
    licence: str = ""


@dataclass(frozen=True)
class Registry:
    folder_url: str
    readme: str
    entries: dict[str, RegistryEntry]
    folder_id: str = ""

    def get(self, name: str) -> RegistryEntry:
        if name not in self.entries:
            raise ModelError(f"{name!r} is not a released model; known: {', '.join(sorted(self.entries))}")
        return self.entries[name]


#: What each source kind needs besides ``kind``.
SOURCE_FIELDS = {"drive": ("folder_id", "path"), "hf": ("repo", "path"), "url": ("url",)}


def _source(name: str, raw: dict[str, Any], folder_id: str) -> dict[str, Any]:
    """The entry's ``source`` mapping, checked; derived from ``url`` / ``folder_path`` when absent."""
    source = raw.get("source")
    if source is None:
        if raw.get("url"):
            source = {"kind": "url", "url": raw["url"]}
        elif raw.get("folder_path") and folder_id:
            source = {"kind": "drive", "folder_id": folder_id, "path": raw["folder_path"]}
        else:
            return {}
    if not isinstance(source, dict) or source.get("kind") not in SOURCE_FIELDS:
        raise ConfigError(f"models.yaml entry {name}: source.kind must be one of {', '.join(SOURCE_FIELDS)}")
    missing = [key for key in SOURCE_FIELDS[source["kind"]] if not source.get(key)]
    if missing:
        raise ConfigError(f"models.yaml entry {name}: a {source['kind']} source needs {', '.join(missing)}")
    return dict(source)


def _entry(name: str, raw: dict[str, Any], folder_id: str = "", licence: str = "") -> RegistryEntry:
    try:
        metadata = METADATA_COMPONENTS if raw.get("metadata") == "all" else ()
        if isinstance(raw.get("metadata"), list):  # an explicit subset (Sat2Sound SoundingEarth)
            metadata = normalize_components(raw["metadata"])
        return RegistryEntry(name=name, variant=raw["variant"], family=raw["family"], metadata=metadata,
                             dataset=raw["dataset"], experiment=raw["experiment"],
                             folder_path=raw.get("folder_path", ""), url=raw.get("url"),
                             size=raw.get("size"), sha256=raw.get("sha256"),
                             source=_source(name, raw, folder_id), licence=str(raw.get("licence") or licence))
    except KeyError as err:
        raise ConfigError(f"models.yaml entry {name} lacks {err}") from None


def load_registry(path: str | os.PathLike | None = None) -> Registry:
    """Read the packaged ``models.yaml`` (or ``path``, or ``$SOUNDMAP_REGISTRY``)."""
    path = path or os.environ.get("SOUNDMAP_REGISTRY") or None
    try:
        text = Path(path).read_text(encoding="utf-8") if path else \
            resources.files("soundmap").joinpath("data/models.yaml").read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read the model registry {path} ({type(err).__name__})") from None
    folder_url = data.get("folder_url", "")
    folder_id = data.get("folder_id") or (folder_url.rstrip("/").rsplit("/", 1)[-1] if folder_url else "")
    entries = {name: _entry(name, raw, folder_id, data.get("licence", ""))
               for name, raw in (data.get("models") or {}).items()}
    return Registry(folder_url=folder_url, readme=data.get("readme", ""), entries=entries, folder_id=folder_id)


# --------------------------------------------------------------------------------------------
# Installed models
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InstalledModel:
    name: str
    path: Path
    config: ModelConfig
    weights_sha256: str
    size_bytes: int


def installed_models(cache_dir: str | os.PathLike | None = None) -> list[InstalledModel]:
    """Every complete model directory under ``<model_dir>`` (hidden staging dirs skipped)."""
    from soundmap.paths import model_dir

    found = []
    for directory in sorted(model_dir(cache_dir).iterdir()):
        if directory.name.startswith(".") or not (directory / CONFIG_FILE).is_file():
            continue
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            continue
        try:
            config, sha = read_config(directory)
        except SoundmapError as err:
            info(f"skipping {directory}: {err}")
            continue
        found.append(InstalledModel(directory.name, directory, config, sha, weights.stat().st_size))
    return found


def installed_model(name: str, cache_dir: str | os.PathLike | None = None) -> InstalledModel:
    for model in installed_models(cache_dir):
        if model.name == name:
            return model
    raise ModelError(f"model {name!r} is not installed; see `soundmap models list`")


def remove_model(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Delete an installed model's directory."""
    model = installed_model(name, cache_dir)
    shutil.rmtree(model.path)
    return model.path


def _fetch_drive(entry: RegistryEntry, dest_dir: Path, **options: Any):
    from soundmap.models.drive import fetch_checkpoint

    return fetch_checkpoint(entry, dest_dir, **options)


def _fetch_hf(entry: RegistryEntry, dest_dir: Path, **options: Any):
    from soundmap.models.sources import fetch_hf

    return fetch_hf(entry, dest_dir, **options)


def _fetch_url(entry: RegistryEntry, dest_dir: Path, **options: Any):
    from soundmap.models.sources import fetch_url

    return fetch_url(entry, dest_dir, **options)


#: ``source.kind`` → ``fetch(entry, dest_dir, **options) -> Fetched(path, source_id, size)``
#: (see :mod:`soundmap.models.sources`). Imports stay inside the functions: listing models needs
#: neither requests nor huggingface_hub.
FETCHERS: dict[str, Callable[..., Any]] = {"drive": _fetch_drive, "hf": _fetch_hf, "url": _fetch_url}


def manual_route(entry: RegistryEntry, registry: Registry) -> str:
    """How to get ``entry`` by hand, for error messages."""
    source = entry.source
    if source.get("kind") == "drive":
        where = f"{source['path']} from the folder {source['folder_id']} ({registry.folder_url or 'Google Drive'})"
    elif source.get("kind") == "hf":
        where = f"{source['path']} from the Hugging Face repository {source['repo']}"
    elif source.get("kind") == "url":
        where = source["url"]
    else:
        where = f"{entry.folder_path or 'the checkpoint'} from {registry.folder_url or registry.readme}"
    return f"download {where} in a browser and run `soundmap models import FILE --name {entry.name}`"


def hf_alternatives(registry: Registry, entry: RegistryEntry | None = None) -> list[str]:
    """Registry models hosted on Hugging Face (offered when Drive refuses), same imagery family first."""
    hosted = [e for e in registry.entries.values() if e.source.get("kind") == "hf" and e is not entry]
    family = entry.family if entry is not None else None
    metadata = bool(entry.metadata) if entry is not None else None
    return [e.name for e in sorted(hosted, key=lambda e: (e.family != family, bool(e.metadata) != metadata, e.name))]


def _offer_alternative(registry: Registry, entry: RegistryEntry) -> str:
    names = hf_alternatives(registry, entry)
    if not names:
        return ""
    return f"; or use a model hosted on Hugging Face instead: --model {names[0]} (soundmap models pull {names[0]})"


def _url_entry(name: str, url: str, entry: RegistryEntry | None) -> RegistryEntry:
    """``--url``: the registry entry (if any) with its source replaced, or a bare one for ``name``."""
    from dataclasses import replace

    from soundmap.download import check_url

    check_url(url)  # file://, ftp://… refused in one line before anything else
    source = {"kind": "url", "url": url}
    if entry is not None:
        return replace(entry, source=source, size=None, sha256=None)
    return RegistryEntry(name=name, variant="", family="", metadata=(), dataset="", experiment="",
                         folder_path="", url=url, size=None, sha256=None, source=source)


def pull_model(name: str | None = None, *, url: str | None = None, cache_dir: str | os.PathLike | None = None,
               unsafe_pickle: bool = False, keep_download: bool = False, cookies: str | os.PathLike | None = None,
               fetch_clap: bool = True, force: bool = False) -> Path:
    """Download a checkpoint (registry ``name`` and/or explicit ``url``) and import it as ``name``.

    The registry entry's ``source`` says where (:data:`FETCHERS`). Trust on first use: the first
    pull of a registry model records its resolved id, size and SHA-256 in the lock file
    (:mod:`soundmap.models.lockfile`); later pulls must match it, and a registry sha256 always wins.
    A failed pull leaves no model behind (a dropped download keeps its ``.part`` to resume). The
    downloaded ``.ckpt`` is removed after import unless ``keep_download``. Then the small CLAP
    tokenizer files are fetched into the Hugging Face cache if missing (``fetch_clap``).

    A released name pulled from another ``url`` must be the checkpoint the registry or the lock
    file records for that name, and any pull must have the entry's variant, imagery family and
    metadata; ``force`` installs it anyway, marked as forced (``models info`` says UNVERIFIED).
    """
    from soundmap.models.checkpoint import validate_model_name
    from soundmap.paths import cache_dir as cache_root

    if name is None:
        raise ModelError("give a model name (see `soundmap models list --available`), and --url for other checkpoints")
    validate_model_name(name)
    registry = load_registry()
    entry = registry.entries.get(name)
    expected = _expected_sha256(entry, cache_dir) if entry is not None and url is not None else None
    if url is not None:
        entry = _url_entry(name, url, entry)
    elif entry is None:
        raise ModelError(f"{name!r} is not a released model; pass --url URL to pull any checkpoint under that name")
    fetch = FETCHERS.get(entry.source.get("kind", ""))
    if fetch is None:
        raise ModelError(f"no download source is recorded for {name}; {manual_route(entry, registry)}")
    path = _fetch_and_import(entry, registry, fetch, cache_root(cache_dir) / "downloads", cache_dir=cache_dir,
                             trusted=url is None, unsafe_pickle=unsafe_pickle, keep=keep_download, cookies=cookies,
                             expected_sha256=expected, force=force)
    if fetch_clap and entry.variant in CLAP_VARIANTS:
        _ensure_clap_files(name)
    return path


def _fetch_and_import(entry: RegistryEntry, registry: Registry, fetch: Callable[..., Any], downloads: Path, *,
                      cache_dir: str | os.PathLike | None, trusted: bool, unsafe_pickle: bool, keep: bool,
                      cookies: str | os.PathLike | None, expected_sha256: str | None = None,
                      force: bool = False) -> Path:
    """Fetch, check against the registry / lock, import; on any failure remove what was fetched.

    ``expected_sha256``: what an official name pulled from another URL must be (None: nothing
    recorded to compare with). ``force`` turns both that check and the variant/family/metadata
    check into a recorded mark instead of a refusal."""
    from soundmap.download import sha256_of
    from soundmap.models import lockfile
    from soundmap.models.checkpoint import import_checkpoint
    from soundmap.models.drive import DriveError
    from soundmap.models.sources import owned

    lock = lockfile.locked(entry.name, cache_dir) if trusted and not entry.sha256 else None  # registry wins
    stale = downloads / f"{entry.name}.ckpt"
    if stale.exists():
        stale.unlink()  # a kept download is never trusted blindly: fetch again (a .part resumes)
    try:
        fetched = fetch(entry, downloads, cookies=cookies, size=entry.size,
                        max_bytes=lock.get("size") if lock else None, url=entry.source.get("url"))
    except DriveError as err:
        raise type(err)(f"{err}{_offer_alternative(registry, entry)}") from None
    mine = owned(fetched, downloads)
    try:
        sha256 = sha256_of(fetched.path)
        _check_trust(entry, lock, fetched, sha256, cache_dir)
        if expected_sha256 and expected_sha256.lower() != sha256 and not force:
            raise ModelError(f"{fetched.source_id} is not the checkpoint recorded for the released name {entry.name} "
                             f"(sha256 {sha256[:12]}…, recorded {expected_sha256[:12]}…); install it under another "
                             "--name, or pass --force to keep it under this one marked UNVERIFIED")
        provenance = {"source_id": fetched.source_id, "checkpoint_sha256": sha256}
        if force:
            provenance["forced"] = True
        if entry.url or entry.source.get("kind") == "url":
            provenance["url"] = entry.source.get("url") or entry.url
        if entry.variant:
            provenance.update({"registry_name": entry.name, "dataset": entry.dataset, "experiment": entry.experiment,
                               "licence": entry.licence})
        path = import_checkpoint(fetched.path, entry.name, unsafe_pickle=unsafe_pickle, cache_dir=cache_dir,
                                 provenance=provenance)
        if entry.variant and not force:
            _check_against_entry(path, entry)
    except SoundmapError:
        if mine:
            Path(fetched.path).unlink(missing_ok=True)  # a refused file is never kept or resumed
        raise
    if trusted:
        _, weights_sha = read_config(path)
        record = lockfile.record if entry.sha256 else lockfile.record_or_verify
        record(entry.name, source_id=fetched.source_id, size=fetched.size, sha256=sha256, cache_dir=cache_dir,
               extra={"weights_sha256": weights_sha})
    if mine and not keep:
        Path(fetched.path).unlink(missing_ok=True)
    return path


def _expected_sha256(entry: RegistryEntry, cache_dir: str | os.PathLike | None) -> str | None:
    """The checkpoint SHA-256 a released name stands for: the registry's, else the lock file's."""
    from soundmap.models import lockfile

    if entry.sha256:
        return entry.sha256
    record = lockfile.locked(entry.name, cache_dir)
    return record.get("sha256") if record else None


def _check_trust(entry: RegistryEntry, lock: dict[str, Any] | None, fetched: Any, sha256: str,
                 cache_dir: str | os.PathLike | None) -> None:
    """A registry sha256 wins; otherwise the lock file's record (trust on first use)."""
    from soundmap.errors import DownloadError
    from soundmap.models import lockfile

    if entry.sha256:
        if entry.sha256.lower() != sha256:
            raise DownloadError(f"SHA-256 mismatch for {entry.name} (got {sha256[:12]}…, the registry says "
                                f"{entry.sha256[:12]}…); the file was deleted — the source changed")
        return
    if lock is not None:
        problem = lockfile.mismatch(entry.name, lock, size=fetched.size, sha256=sha256, cache_dir=cache_dir)
        if problem:
            raise ModelError(problem)


#: The families whose text and audio branches are CLAP's (Sat2Sound brings FlanT5 and HTS-AT instead,
#: and a bare ``--url`` pull of unknown variant gets them too, since it is most likely PSM/GeoCLAP).
CLAP_VARIANTS = ("psm", "geoclap", "")


def _ensure_clap_files(name: str) -> None:
    """The CLAP tokenizer / feature-extractor files every model's text branch needs, fetched into
    the Hugging Face cache when missing. Offline (HF_HUB_OFFLINE / SOUNDMAP_OFFLINE) nothing is
    requested: a line names the missing files and the model stays installed."""
    from soundmap.hub import offline
    from soundmap.preprocess.text import CLAP_FILES, CLAP_REPO_ID, clap_file_candidates, ensure_clap_files, find_clap_files

    if offline() and find_clap_files(required=CLAP_FILES) is None:
        missing = [f for f in CLAP_FILES if not any((d / f).is_file() for d in clap_file_candidates())]
        info(f"offline: not fetching the CLAP files {', '.join(missing)} of {CLAP_REPO_ID}; run "
             "`soundmap models clap-files` once online")
        return
    try:
        ensure_clap_files()
    except SoundmapError as err:
        raise type(err)(f"installed {name}, but the CLAP tokenizer files are missing: {err}") from None


def pull_all(*, cache_dir: str | os.PathLike | None = None, **options: Any) -> list[Path]:
    """``models pull --all``: every registry model not installed yet. Each failure is reported
    (one line each) and the others continue; the summary error names the failed ones."""
    from soundmap.download import offline

    done = {m.name for m in installed_models(cache_dir)}
    paths, failed = [], []
    for name in load_registry().entries:
        if name in done:
            continue
        try:
            paths.append(pull_model(name, cache_dir=cache_dir, **options))
            info(f"installed {name}")
        except SoundmapError as err:
            info(f"{name}: {str(err).splitlines()[0]}")
            failed.append(name)
            if offline():
                break
    if failed:
        raise ModelError(f"{len(failed)} model(s) could not be pulled: {', '.join(failed)}; "
                         "run `soundmap models pull NAME` for each to see why (downloads resume)")
    return paths


def verify_model(name: str, cache_dir: str | os.PathLike | None = None) -> str:
    """``models verify NAME``: the installed model against the lock file (and the registry sha256):
    the checkpoint it was imported from, and its weights file. A one-line ModelError otherwise."""
    from soundmap.models import lockfile

    model = installed_model(name, cache_dir)
    record = lockfile.locked(name, cache_dir)
    entry = load_registry().entries.get(name)
    expected = (entry.sha256 if entry and entry.sha256 else None) or (record or {}).get("sha256")
    if expected is None:
        raise ModelError(f"nothing recorded to verify {name} against (no registry sha256, no entry in "
                         f"{lockfile.lock_path(cache_dir)}); pull it with `soundmap models pull {name}`")
    imported_from = str(model.config.source.get("checkpoint_sha256", ""))
    if imported_from.lower() != expected.lower():
        raise ModelError(f"{name} was imported from a checkpoint with sha256 {imported_from[:12] or '?'}…, not "
                         f"{expected[:12]}… as recorded; pull it again with `soundmap models pull {name}`")
    from soundmap.download import sha256_of
    from soundmap.models.soundscape import WEIGHTS_FILE

    actual = sha256_of(model.path / WEIGHTS_FILE)
    recorded = (record or {}).get("weights_sha256") or model.weights_sha256
    if recorded and actual != recorded:
        raise ModelError(f"the weights of {name} changed on disk (sha256 {actual[:12]}…, recorded {recorded[:12]}…); "
                         f"pull it again with `soundmap models pull {name}`")
    return expected


def _check_against_entry(path: Path, entry: RegistryEntry) -> None:
    """A pulled registry model must be what the registry says (variant, family, metadata)."""
    config, _ = read_config(path)
    found = (config.variant, config.family, config.metadata)
    wanted = (entry.variant, entry.family, tuple(entry.metadata))
    if found != wanted:
        shutil.rmtree(path, ignore_errors=True)
        raise ModelError(f"the checkpoint pulled for {entry.name} is {found}, the registry says {wanted}; removed it")
