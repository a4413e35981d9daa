"""Auxiliary Hugging Face models (AST, CLIP, RemoteCLIP, CLIPSeg): where they live and fetching them.

These are the cross-modal urban sensing study's off-the-shelf encoders, not soundscape models, so
they are listed in their own small file (``soundmap/data/aux_models.yaml``) and never installed
into soundmap's model directory: ``huggingface_hub`` downloads them on first use into the Hugging
Face cache, with its progress bars (silenced by ``--quiet``).

The hub's settings are read from the environment *when a model is fetched*, not when
``huggingface_hub`` was imported, so that a process that changes them (a test pointing
``HF_ENDPOINT`` at a loopback server, a notebook going offline) is obeyed:

* ``HF_ENDPOINT``: the hub (or a mirror) to download from;
* ``HF_HUB_CACHE`` / ``HF_HOME``: the cache (``$HF_HOME/hub``);
* ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``): use the cache only.

``SOUNDMAP_<NAME>_MODEL`` (e.g. ``SOUNDMAP_AST_MODEL``) replaces an entry's repository: another
repo id, or a local directory / file holding the same files (no download then).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, ModelError
from ..progress import is_quiet

AUX_MODELS_RESOURCE = "aux_models.yaml"

#: Files fetched per model kind: (required, optional). A transformers snapshot needs its config,
#: weights and preprocessor; CLIPSeg's processor also needs CLIP's BPE tokenizer files.
SNAPSHOT_FILES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ast": (("config.json", "model.safetensors", "preprocessor_config.json"), ()),
    "clip": (("config.json", "model.safetensors"), ("preprocessor_config.json",)),
    "clipseg": (("config.json", "model.safetensors", "vocab.json", "merges.txt"),
                ("preprocessor_config.json", "tokenizer_config.json", "special_tokens_map.json")),
}


@dataclass(frozen=True)
class AuxModel:
    """One auxiliary model: its Hugging Face repository (and file), licence and use."""

    name: str
    repo: str
    path: str | None
    licence: str
    description: str
    used_by: str

    @property
    def location(self) -> str:
        """The repository, or its ``SOUNDMAP_<NAME>_MODEL`` replacement."""
        return os.environ.get(override_variable(self.name), "").strip() or self.repo


def override_variable(name: str) -> str:
    """``SOUNDMAP_AST_MODEL`` for ``ast``."""
    return f"SOUNDMAP_{name.upper().replace('-', '_')}_MODEL"


def load_aux_models() -> dict[str, AuxModel]:
    """The packaged list of auxiliary models, validated."""
    text = resources.files("soundmap.data").joinpath(AUX_MODELS_RESOURCE).read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    out: dict[str, AuxModel] = {}
    for name, raw in data.items():
        source = (raw or {}).get("source") or {}
        if source.get("kind") != "hf" or not source.get("repo") or not raw.get("licence"):
            raise ConfigError(f"{AUX_MODELS_RESOURCE}: {name} needs source: {{kind: hf, repo: ...}} and a licence")
        out[str(name)] = AuxModel(name=str(name), repo=str(source["repo"]), path=source.get("path"),
                                  licence=str(raw["licence"]), description=str(raw.get("description", "")),
                                  used_by=str(raw.get("used_by", "")))
    return out


def aux_model(name: str) -> AuxModel:
    models = load_aux_models()
    if name not in models:
        raise ModelError(f"{name!r} is not an auxiliary model; known: {', '.join(sorted(models))}")
    return models[name]


def hub_settings() -> dict[str, Any]:
    """``endpoint``, ``cache_dir`` and ``local_files_only`` from the environment, read now."""
    endpoint = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/") or None
    cache = os.environ.get("HF_HUB_CACHE", "").strip()
    if not cache and os.environ.get("HF_HOME", "").strip():
        cache = str(Path(os.environ["HF_HOME"].strip()).expanduser() / "hub")
    offline = any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
                  for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return {"endpoint": endpoint, "cache_dir": cache or None, "local_files_only": offline}


def fetch_aux(name: str) -> Path:
    """The local copy of auxiliary model ``name``: the snapshot directory of a transformers model,
    or the one file of an entry with ``path`` (RemoteCLIP). Downloads what is missing."""
    entry = aux_model(name)
    location = entry.location
    local = Path(location).expanduser()
    if local.exists():
        return local / entry.path if entry.path and local.is_dir() else local
    if entry.path:
        return hf_file(location, entry.path, entry.name)
    required, optional = SNAPSHOT_FILES[name]
    folder = None
    for filename in required:
        folder = hf_file(location, filename, entry.name).parent
    for filename in optional:
        hf_file(location, filename, entry.name, missing_ok=True)
    assert folder is not None
    return folder


def hf_file(repo: str, filename: str, what: str, *, missing_ok: bool = False) -> Path:
    """One file of a hub repository in the local cache (downloaded with a progress bar if absent)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    settings = hub_settings()
    (disable_progress_bars if is_quiet() else enable_progress_bars)()
    try:
        return Path(hf_hub_download(repo, filename, **settings))
    except EntryNotFoundError:
        if missing_ok:
            return Path()
        raise ModelError(f"{repo} on the Hugging Face hub has no file {filename}; check the repository "
                         f"or set {override_variable(what)} to a copy of the {what} model") from None
    except LocalEntryNotFoundError:
        if missing_ok and settings["local_files_only"]:
            return Path()
        hint = ("HF_HUB_OFFLINE is set and it is not in the Hugging Face cache; run once online"
                if settings["local_files_only"] else "check the network or HF_ENDPOINT")
        raise ModelError(f"could not get {filename} of {repo} ({what}): {hint}, or set "
                         f"{override_variable(what)} to a local copy") from None
    except Exception as err:  # hub/network errors of many kinds become one actionable line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"could not download {filename} of {repo} ({what}): {first}; check the network "
                         f"or HF_ENDPOINT, or set {override_variable(what)} to a local copy") from None


def aux_model_lines() -> list[str]:
    """``models list --available`` rows of the auxiliary models: name, repository, licence, use."""
    models = load_aux_models()
    rows = [("auxiliary", "hugging face repository", "licence", "used by")]
    rows += [(m.name, m.repo + (f"/{m.path}" if m.path else ""), m.licence, m.used_by) for m in models.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return [""] + ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
