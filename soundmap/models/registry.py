"""Registry of released checkpoints (``soundmap/data/models.yaml``) and of installed models.

Like TorchGeo's weight registry, each entry carries where to get the file and what it is
(variant, imagery family, metadata it accepts, dataset, size, SHA-256). Installed models live in
``<model_dir>/<name>/{config.json, model.safetensors}``; this module lists, pulls and removes them.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from soundmap.errors import ConfigError, ModelError, SoundmapError
from soundmap.models.config import CONFIG_FILE, METADATA_COMPONENTS, WEIGHTS_FILE, ModelConfig, read_config
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


@dataclass(frozen=True)
class Registry:
    folder_url: str
    readme: str
    entries: dict[str, RegistryEntry]

    def get(self, name: str) -> RegistryEntry:
        if name not in self.entries:
            raise ModelError(f"{name!r} is not a released model; known: {', '.join(sorted(self.entries))}")
        return self.entries[name]


def _entry(name: str, raw: dict[str, Any]) -> RegistryEntry:
    try:
        metadata = METADATA_COMPONENTS if raw.get("metadata") == "all" else ()
        return RegistryEntry(name=name, variant=raw["variant"], family=raw["family"], metadata=metadata,
                             dataset=raw["dataset"], experiment=raw["experiment"],
                             folder_path=raw.get("folder_path", ""), url=raw.get("url"),
                             size=raw.get("size"), sha256=raw.get("sha256"))
    except KeyError as err:
        raise ConfigError(f"models.yaml entry {name} lacks {err}") from None


def load_registry(path: str | os.PathLike | None = None) -> Registry:
    """Read the packaged ``models.yaml`` (or ``path``)."""
    text = Path(path).read_text(encoding="utf-8") if path else \
        resources.files("soundmap").joinpath("data/models.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    entries = {name: _entry(name, raw) for name, raw in (data.get("models") or {}).items()}
    return Registry(folder_url=data.get("folder_url", ""), readme=data.get("readme", ""), entries=entries)


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


def pull_model(name: str | None = None, *, url: str | None = None, cache_dir: str | os.PathLike | None = None,
               unsafe_pickle: bool = False, keep_download: bool = False) -> Path:
    """Download a checkpoint (registry ``name`` and/or explicit ``url``) and import it as ``name``.

    With a registry name the entry's URL, size and SHA-256 are used (``url`` overrides the URL).
    A URL alone needs ``name`` for the installed model. The downloaded ``.ckpt`` is removed after
    a successful import unless ``keep_download``.
    """
    from soundmap.download import download, sha256_of
    from soundmap.models.checkpoint import import_checkpoint, validate_model_name
    from soundmap.paths import cache_dir as cache_root

    registry = load_registry()
    entry = registry.entries.get(name) if name else None
    if name is None:
        raise ModelError("give a model name (see `soundmap models list --available`), and --url for other checkpoints")
    validate_model_name(name)
    source_url = url or (entry.url if entry else None)
    if source_url is None:
        if entry is None:
            raise ModelError(f"{name!r} is not a released model; pass --url URL to pull any checkpoint under that name")
        raise ModelError(
            f"no direct download link is recorded for {name}; download {entry.folder_path} from {registry.folder_url} "
            f"in a browser and run `soundmap models import FILE --name {name}`, or pass --url FILE_LINK")
    downloads = cache_root(cache_dir) / "downloads"
    target = downloads / f"{name}.ckpt"
    sha256 = entry.sha256 if entry else None
    if target.exists() and not sha256:
        target.unlink()  # a kept download of unknown content must not be reused for another pull
    checkpoint = download(source_url, target, sha256=sha256,
                          size=entry.size if entry and not url else None, desc=name)
    provenance = {"url": source_url, "checkpoint_sha256": sha256_of(checkpoint)}
    if entry is not None:
        provenance.update({"registry_name": entry.name, "dataset": entry.dataset, "experiment": entry.experiment})
    path = import_checkpoint(checkpoint, name, unsafe_pickle=unsafe_pickle, cache_dir=cache_dir, provenance=provenance)
    if entry is not None:
        _check_against_entry(path, entry)
    if not keep_download:
        checkpoint.unlink(missing_ok=True)
    return path


def _check_against_entry(path: Path, entry: RegistryEntry) -> None:
    """A pulled registry model must be what the registry says (variant, family, metadata)."""
    config, _ = read_config(path)
    found = (config.variant, config.family, config.metadata)
    wanted = (entry.variant, entry.family, tuple(entry.metadata))
    if found != wanted:
        shutil.rmtree(path, ignore_errors=True)
        raise ModelError(f"the checkpoint pulled for {entry.name} is {found}, the registry says {wanted}; removed it")
