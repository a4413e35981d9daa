"""End-to-end entry points behind ``soundmap train`` / ``evaluate`` / ``data split`` (the CLI
only parses options and prints). Each opens the data, builds what it needs and calls the pure
pieces in this package."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..atomic import atomic_path
from ..errors import InputError
from ..progress import info
from .datasets import DataSource, ManifestSource, open_source
from .evaluate import EvalOptions, EvalReport, evaluate_model
from .loop import Trainer, TrainConfig, latest_checkpoint, load_checkpoint_file
from .setup import build_model, export_model, load_satmae
from .split import spatial_split


@dataclass
class TrainOutcome:
    """What a finished run produced."""

    model_dir: Path
    run_dir: Path
    steps: int
    final_loss: float | None


def _has_captions(source: DataSource) -> bool:
    if isinstance(source, ManifestSource):
        return bool("caption" in source.frame.columns and source.frame["caption"].notna().any())
    return True  # shards carry their captions (or token ids) per sample


def data_helpers(source: DataSource, *, use_text: bool, clap_files: str | os.PathLike | None,
                 tiles: str | None, family: str, cache_dir: str | os.PathLike | None) -> dict[str, Any]:
    """Featurizer, tokenizer and image provider for a source (each only when it is needed)."""
    from ..preprocess.audio import AudioFeaturizer

    helpers: dict[str, Any] = {"featurizer": AudioFeaturizer(clap_files), "tokenizer": None, "image_provider": None}
    if use_text and _has_captions(source):
        from ..preprocess.text import TextTokenizer

        helpers["tokenizer"] = TextTokenizer(clap_files)
    if tiles:
        from .imagery import TileImageProvider

        helpers["image_provider"] = TileImageProvider(tiles, family, None if cache_dir is None else str(cache_dir))
    elif isinstance(source, ManifestSource) and not any(
            c in source.frame.columns for c in ("image", "image_z1", "image_z3", "image_z5")):
        raise InputError("the manifest has no image columns; pass --tiles SOURCE to render imagery at each recording")
    return helpers


def _device(device: str) -> torch.device:
    from ..models.soundscape import resolve_device

    return resolve_device(device)


def train_model(data: Sequence[str], *, name: str, run_dir: str | os.PathLike | None = None,
                val: Sequence[str] | None = None, config: TrainConfig | None = None, init: str | None = None,
                variant: str = "psm", family: str = "sentinel", metadata: Any = None, size: str = "full",
                satmae: str | None = None, resume: str | None = None, tiles: str | None = None,
                clap_files: str | None = None, device: str = "auto",
                cache_dir: str | os.PathLike | None = None) -> TrainOutcome:
    """Train (or resume) a model and export it as installed model ``name``.

    Resuming restores the checkpoint's model, optimizer, schedule, RNG and data position and its
    training settings; only ``config.max_steps`` is taken from the call, to extend a finished run
    (which stretches a cosine schedule, so the continuation is no longer identical to a single
    longer run). The data must be the same for the continuation to be exact.
    """
    from ..models.config import ModelConfig
    from ..models.soundscape import SoundscapeModel

    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / name
    state = None
    if resume:
        path = latest_checkpoint(run_dir) if resume == "latest" else Path(resume)
        if path is None:
            raise InputError(f"no checkpoint in {run_dir / 'checkpoints'} to resume from")
        state = load_checkpoint_file(path)
        extend_to = config.max_steps if config is not None else None
        config = TrainConfig.from_dict(state["train_config"])
        if extend_to is not None:  # --max-steps on resume extends (or shortens) the run
            config.max_steps = extend_to
            state["total_steps"] = extend_to
        model = SoundscapeModel(ModelConfig.from_dict(state["model_config"]), name=name).train()
        info(f"resuming from {path} (step {state['position']['step']})")
    else:
        config = config or TrainConfig()
        model = build_model(init=init, variant=variant, family=family, metadata=metadata, size=size, name=name)
        if satmae:
            fresh = load_satmae(model, satmae)
            info(f"image backbone initialised from {satmae} ({len(fresh)} tensors left as initialised)")
    manifest_split = "train" if _is_split_manifest(data) else None
    source = open_source(list(data), split=manifest_split, shuffle_buffer=config.shuffle_buffer)
    val_source = None
    if val:
        val_source = open_source(list(val), split="val" if _is_split_manifest(val) else None)
    elif manifest_split is not None and _manifest_has(data[0], "val"):
        val_source = open_source(list(data), split="val")
    use_text = bool(config.use_text and _has_captions(source))
    config.use_text = use_text
    helpers = data_helpers(source, use_text=use_text, clap_files=clap_files, tiles=tiles,
                           family=model.config.family, cache_dir=cache_dir)
    trainer = Trainer(model, source, config, run_dir, val_source=val_source, device=_device(device), **helpers)
    if state is not None:
        trainer.load_checkpoint(path, state=state)  # type: ignore[arg-type]
    history = trainer.fit()
    if config.checkpoint_every:
        trainer.save_checkpoint()
    directory = export_model(trainer.model.to("cpu"), name, cache_dir)
    return TrainOutcome(directory, run_dir, trainer.step, history[-1].loss if history else None)


def _is_split_manifest(data: Sequence[str]) -> bool:
    return len(data) == 1 and str(data[0]).lower().endswith((".csv", ".parquet", ".pq")) and _manifest_has(data[0])


def _manifest_has(path: str, split: str | None = None) -> bool:
    from .manifest import read_table

    frame = read_table(path)
    if "split" not in frame.columns:
        return False
    return split is None or bool((frame["split"].astype(str) == split).any())


def evaluate_installed(model_name: str, data: Sequence[str], options: EvalOptions, *, split: str | None = "auto",
                       tiles: str | None = None, clap_files: str | None = None, device: str = "auto",
                       cache_dir: str | os.PathLike | None = None) -> EvalReport:
    """Evaluate an installed model on a manifest (its ``test`` rows by default) or shards."""
    from ..models.soundscape import load_model

    model = load_model(model_name, device=device)
    if split == "auto":
        split = "test" if _is_split_manifest(data) and _manifest_has(data[0], "test") else None
    source = open_source(list(data), split=split)
    helpers = data_helpers(source, use_text=options.add_text, clap_files=clap_files, tiles=tiles,
                           family=model.config.family, cache_dir=cache_dir)
    report = evaluate_model(model, source, options, device=model.device, **helpers)
    report.model = model.name
    return report


def split_manifest(path: str | os.PathLike, output: str | os.PathLike, **kwargs: Any) -> pd.DataFrame:
    """Read a manifest, add ``cell_id`` + ``split`` (the papers' spatial split), write it atomically."""
    from .manifest import normalize_columns, read_table

    frame = read_table(path)
    canonical = normalize_columns(frame.copy(), require_audio=False)
    result = spatial_split(canonical, **kwargs)
    out = frame.copy()
    out["cell_id"] = result["cell_id"].to_numpy()
    out["split"] = result["split"].to_numpy()
    output = Path(output)
    with atomic_path(output) as tmp:
        if output.suffix.lower() in (".parquet", ".pq"):
            out.to_parquet(tmp, index=False)
        else:
            out.to_csv(tmp, index=False)
    return out
