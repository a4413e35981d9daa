"""``soundmap models``: import, pull, list, inspect and remove PSM / GeoCLAP / Sat2Sound models.

Thin: parse options, call :mod:`soundmap.models.registry` / :mod:`soundmap.models.checkpoint`, print.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Optional
from urllib.parse import urlparse

import typer

from ..errors import InputError
from ..models.config import METADATA_COMPONENTS
from ..progress import info
from .common import CacheDirOpt, QuietOpt, apply_quiet

models_app = typer.Typer(name="models", help="Install and inspect PSM / GeoCLAP / Sat2Sound models.",
                         no_args_is_help=True, add_completion=False)

UnsafePickleOpt = Annotated[bool, typer.Option(
    "--unsafe-pickle", help="Allow full unpickling of the checkpoint (runs code from the file: trusted files only).")]

#: What imagery each family's models suit, for `models info`.
FAMILY_SOURCES = {
    "sentinel": "Sentinel-2 10 m (e.g. EOX s2cloudless 2020) and similar ~10 m imagery",
    "bing": "Bing-like aerial imagery at ~0.6 m (web-mercator zoom ≈ 18)",
    "googleEarth": "Google-Earth-like aerial imagery at ~0.2 m",
}


def register(app: typer.Typer) -> None:
    """Add the ``models`` command group to the root app."""
    app.add_typer(models_app, name="models")


def _size(n_bytes: int | None) -> str:
    if n_bytes is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n_bytes < 1024 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    return "?"


def _metadata_label(components: tuple[str, ...]) -> str:
    if tuple(components) == METADATA_COMPONENTS:
        return "all"
    return ",".join(components) if components else "none"


@models_app.command("import")
def import_command(
    checkpoint: Annotated[Path, typer.Argument(help="The authors' PyTorch-Lightning .ckpt file.")],
    name: Annotated[str, typer.Option("--name", help="Name to install the model under.")],
    unsafe_pickle: UnsafePickleOpt = False, cache_dir: CacheDirOpt = None, quiet: QuietOpt = False,
) -> None:
    """Import an authors' .ckpt (PSM, GeoCLAP or Sat2Sound, recognised by itself) as an installed model."""
    from ..models.checkpoint import import_checkpoint

    apply_quiet(quiet)
    path = import_checkpoint(checkpoint, name, unsafe_pickle=unsafe_pickle, cache_dir=cache_dir)
    info(f"imported {checkpoint} as {name}")
    typer.echo(str(path))


@models_app.command("pull")
def pull_command(
    name: Annotated[Optional[str], typer.Argument(help="A released model name (see `models list --available`).")] = None,
    url: Annotated[Optional[str], typer.Option("--url", help="Download this checkpoint URL instead (http/https; Google Drive file links work).")] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Pull every released model not installed yet.")] = False,
    keep: Annotated[bool, typer.Option("--keep-checkpoint", "--keep", help="Keep the downloaded .ckpt (in <cache>/downloads) after importing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Install a file that is not the registry's checkpoint for a released name (marked UNVERIFIED in `models info`).")] = False,
    cookies: Annotated[Optional[Path], typer.Option("--cookies", help="A browser cookie export (Netscape cookies.txt) for drive.google.com, to get past Drive's download quota.", show_default=False)] = None,
    unsafe_pickle: UnsafePickleOpt = False, cache_dir: CacheDirOpt = None, quiet: QuietOpt = False,
) -> None:
    """Download a released checkpoint (Drive folder, HF or URL; resumable, verified) and import it.

    The first download of a model records its file id, size and sha256 in
    <cache>/models/registry.lock.json; later pulls must match (a registry sha256 always wins).
    """
    from ..models.registry import pull_all, pull_model

    apply_quiet(quiet)
    options = dict(cache_dir=cache_dir, unsafe_pickle=unsafe_pickle, keep_download=keep, cookies=cookies, force=force)
    if all_models:
        if name is not None or url is not None:
            raise InputError("--all pulls every released model: give no NAME and no --url with it")
        for path in pull_all(**options):
            typer.echo(str(path))
        return
    if name is None and url is None:
        raise InputError("give a model NAME, --url URL or --all")
    if name is None:
        from ..download import check_url

        stem = Path(urlparse(check_url(url)).path).stem or "model"
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "model"
    path = pull_model(name, url=url, **options)
    info(f"installed {name}")
    typer.echo(str(path))


@models_app.command("verify")
def verify_command(
    name: Annotated[str, typer.Argument(help="An installed model name.")],
    cache_dir: CacheDirOpt = None,
) -> None:
    """Check an installed model against the sha256 recorded at its first download or in the registry."""
    from ..models.registry import verify_model

    sha = verify_model(name, cache_dir)
    typer.echo(f"{name}: ok (checkpoint sha256 {sha})")


@models_app.command("list")
def list_command(
    available: Annotated[bool, typer.Option("--available", help="Also list released models not installed yet, with where they come from and their licence.")] = False,
    cache_dir: CacheDirOpt = None,
) -> None:
    """List installed models (name, variant, family, metadata, size)."""
    from ..models.registry import installed_models, load_registry
    from ..models.sources import describe

    rows = [(m.name, m.config.variant, m.config.family, _metadata_label(m.config.metadata), _size(m.size_bytes))
            for m in installed_models(cache_dir)]
    if not rows and not available:
        typer.echo("no models installed; see `soundmap models list --available` and `soundmap models pull NAME`")
        return
    header = ("name", "variant", "family", "metadata", "size")
    if available:
        header += ("source", "licence")
        registry = load_registry()
        known = {r[0]: r for r in rows}
        rows = [r + ("", "") for r in rows if r[0] not in registry.entries]
        for entry in registry.entries.values():
            base = known.get(entry.name) or (entry.name, entry.variant, entry.family, _metadata_label(entry.metadata),
                                             "not installed")
            rows.append(base + (describe(entry.source), entry.licence or "?"))
    widths = [max(len(str(r[i])) for r in [*rows, header]) for i in range(len(header))]
    for row in [header, *rows]:
        typer.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
    if available:  # the study's auxiliary encoders (soundmap/data/aux_models.yaml), fetched on first use
        from ..models.auxiliary import aux_model_lines

        for line in aux_model_lines():
            typer.echo(line)


@models_app.command("info")
def info_command(
    name: Annotated[str, typer.Argument(help="An installed model name.")],
    cache_dir: CacheDirOpt = None,
) -> None:
    """Show a model's variant, accepted metadata, suitable imagery, weights hash and config."""
    from ..models.registry import installed_model

    model = installed_model(name, cache_dir)
    config = model.config
    typer.echo(f"name:        {model.name}")
    typer.echo(f"path:        {model.path}")
    typer.echo(f"variant:     {config.variant} ({'probabilistic, scored with CSD' if config.probabilistic else 'deterministic, scored with cosine'})")
    typer.echo(f"metadata:    {', '.join(config.metadata) or 'none (image only)'}")
    typer.echo(f"family:      {config.family} (gsd {config.gsd} m; fits {FAMILY_SOURCES.get(config.family, '?')})")
    typer.echo(f"weights:     {_size(model.size_bytes)}, sha256 {model.weights_sha256 or '?'}")
    typer.echo(f"provenance:  {_provenance(model.name, config.source, cache_dir)}")
    typer.echo("config:      " + json.dumps(config.to_dict(), sort_keys=True))


@models_app.command("remove")
def remove_command(
    name: Annotated[str, typer.Argument(help="An installed model name.")],
    cache_dir: CacheDirOpt = None, quiet: QuietOpt = False,
) -> None:
    """Delete an installed model."""
    from ..models.registry import remove_model

    apply_quiet(quiet)
    path = remove_model(name, cache_dir)
    info(f"removed {name} ({path})")


@models_app.command("clap-files")
def clap_files_command(
    dest: Annotated[Optional[Path], typer.Option("--dest", help="Also copy them into this directory (default: only the Hugging Face cache).")] = None,
) -> None:
    """Fetch CLAP's tokenizer and audio-feature settings (a few MB, no weights) into the HF cache."""
    from ..preprocess.text import download_clap_files

    typer.echo(str(download_clap_files(dest)))


def _provenance(name: str, source: dict, cache_dir: Optional[Path] = None) -> str:
    """Where an installed model came from, and whether the registry vouches for it: a released
    name installed from an arbitrary --url is said to be unverified, never passed off as official."""
    from ..models.registry import load_registry

    from ..models.lockfile import locked

    origin = source.get("url") or source.get("source_id")
    where = f"downloaded from {origin}" if origin else "imported from a local checkpoint"
    checksum = source.get("checkpoint_sha256")
    where += f" (checkpoint sha256 {checksum})" if checksum else ""
    entry = load_registry().entries.get(name)
    if entry is None:
        return where
    if source.get("forced"):
        return where + "; UNVERIFIED: installed with --force although it is not the registry's checkpoint"
    if entry.sha256 and checksum == entry.sha256:
        return where + "; verified: the registry's checkpoint for this name"
    record = locked(name, cache_dir)
    if not entry.sha256 and record and checksum == record.get("sha256") and not source.get("url"):
        return where + "; verified: the checkpoint recorded at the first download from the registry's source"
    return (where + "; UNVERIFIED: not the registry's checkpoint for this released name (the registry "
            + ("records another checksum)" if entry.sha256 else "records no checksum to compare)"))
