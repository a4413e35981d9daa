"""Auxiliary Hugging Face models (AST, CLIP, RemoteCLIP, CLIPSeg): which ones, and fetching them.

These are the cross-modal urban sensing study's off-the-shelf encoders, not soundscape models, so
they are listed in their own small file (``soundmap/data/aux_models.yaml``, with their licences)
and never installed into soundmap's model directory: :mod:`soundmap.hub` downloads them on first
use into the Hugging Face cache with progress bars, honouring ``HF_ENDPOINT``, ``HF_HOME`` /
``HF_HUB_CACHE`` and the offline switches read at call time.

``SOUNDMAP_<NAME>_MODEL`` (e.g. ``SOUNDMAP_AST_MODEL``) replaces an entry's repository: another
repo id, or a local directory / file holding the same files (no download then).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from ..errors import ConfigError, ModelError

AUX_MODELS_RESOURCE = "aux_models.yaml"

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


#: Files of a transformers snapshot: configs, tokenizer/preprocessor files, safetensors weights.
SNAPSHOT_PATTERNS = ["*.json", "*.txt", "*.safetensors"]


def fetch_aux(name: str) -> Path:
    """The local copy of auxiliary model ``name``: the snapshot directory of a transformers model,
    or the one file of an entry with ``path`` (RemoteCLIP). Downloads what is missing."""
    from ..hub import hub_file, hub_snapshot

    entry = aux_model(name)
    location = entry.location
    local = Path(location).expanduser()
    if local.exists():
        return local / entry.path if entry.path and local.is_dir() else local
    if entry.path:
        return hub_file(location, entry.path)
    folder = hub_snapshot(location, allow_patterns=SNAPSHOT_PATTERNS)
    if not any(folder.glob("*.safetensors")):  # an older repository with PyTorch pickles only
        folder = hub_snapshot(location, allow_patterns=[*SNAPSHOT_PATTERNS, "pytorch_model.bin"])
    return folder


def aux_model_lines() -> list[str]:
    """``models list --available`` rows of the auxiliary models: name, repository, licence, use."""
    models = load_aux_models()
    rows = [("auxiliary", "hugging face repository", "licence", "used by")]
    rows += [(m.name, m.repo + (f"/{m.path}" if m.path else ""), m.licence, m.used_by) for m in models.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return [""] + ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
