"""``soundmap train``, ``soundmap evaluate`` and ``soundmap data split``: thin Typer wrappers
around :mod:`soundmap.train.run`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from .common import CacheDirOpt, DeviceOpt, QuietOpt, apply_quiet

data_app = typer.Typer(name="data", help="Prepare training data (spatial train/val/test split).",
                       no_args_is_help=True)

TilesOpt = Annotated[Optional[str], typer.Option("--tiles", help="Tile source (tiles.yaml name, XYZ template or raster) to render imagery for manifests without image columns.", show_default=False)]
ClapOpt = Annotated[Optional[Path], typer.Option("--clap-files", help="Directory with the CLAP tokenizer/feature-extractor files (default: the model cache / HF cache).", show_default=False)]


def register(app: typer.Typer) -> None:
    """Add ``train``, ``evaluate`` and the ``data`` group."""
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
    app.add_typer(data_app, name="data")


def _components(text: Optional[str]) -> Optional[tuple[str, ...]]:
    """``all``/None → None (every component), ``none`` → (), else a comma list."""
    if text is None or text.strip().lower() == "all":
        return None
    if text.strip().lower() == "none":
        return ()
    return tuple(part.strip() for part in text.split(",") if part.strip())


def train_command(
    data: Annotated[list[str], typer.Argument(help="Manifest (.csv/.parquet) or WebDataset shards (.tar files, a directory, or train_{0..9}.tar).")],
    name: Annotated[str, typer.Option("--name", help="Name of the trained model in the model cache (used by embed/query/evaluate).")],
    output: Annotated[Optional[Path], typer.Option("--output", help="Run directory for checkpoints and metrics.csv (default ./runs/NAME).", show_default=False)] = None,
    val: Annotated[Optional[list[str]], typer.Option("--val", help="Validation data (default: the manifest's val rows).", show_default=False)] = None,
    init: Annotated[Optional[str], typer.Option("--init", help="Start from this installed model (fine-tuning) instead of a fresh one.", show_default=False)] = None,
    variant: Annotated[str, typer.Option("--variant", help="psm (PCME++, probabilistic) or geoclap (InfoNCE).")] = "psm",
    family: Annotated[str, typer.Option("--family", help="Imagery family: sentinel, bing or googleEarth.")] = "sentinel",
    metadata: Annotated[str, typer.Option("--metadata", help="Metadata components fused with the image: all, none or a comma list of audio_source,caption_source,latlon,month,hour.")] = "all",
    size: Annotated[str, typer.Option("--size", help="Architecture size of a fresh model: full (ViT-B/16 + CLAP) or tiny (tests).")] = "full",
    satmae: Annotated[Optional[Path], typer.Option("--satmae", help="Initialise the image backbone from a SatMAE checkpoint (.pth/.safetensors).", show_default=False)] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", help="Resume from a checkpoint file, or 'latest' in the run directory.", show_default=False)] = None,
    epochs: Annotated[int, typer.Option("--epochs")] = 30,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Stop after this many optimizer steps.", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 128,
    grad_accum: Annotated[int, typer.Option("--grad-accum", help="Micro-batches per optimizer step.")] = 1,
    lr: Annotated[float, typer.Option("--lr")] = 5e-5,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 0.2,
    warmup: Annotated[int, typer.Option("--warmup", help="Warm-up iterations (GeoSound 5000, SoundingEarth 2000).")] = 5000,
    schedule: Annotated[str, typer.Option("--schedule", help="cosine (warm-up + cosine), restarts (the authors' code: cosine restarting every --warmup steps) or constant.")] = "cosine",
    loss: Annotated[str, typer.Option("--loss", help="auto (from the variant), pcmepp or infonce.")] = "auto",
    vib_beta: Annotated[float, typer.Option("--vib-beta")] = 1e-4,
    pseudo_alpha: Annotated[float, typer.Option("--pseudo-alpha")] = 0.1,
    text_weight: Annotated[float, typer.Option("--text-weight", help="Weight of the text pairs: (1-w)·L_ia + w·(L_it + L_at).")] = 0.5,
    pair_weighting: Annotated[str, typer.Option("--pair-weighting", help="How the pair losses combine: geosound ((1-w)·L_ia + w·(L_it + L_at)), mean ((L_ia + L_it + L_at)/3, SoundingEarth) or auto (geosound: what the released checkpoints were trained with).")] = "auto",
    meta_droprate: Annotated[float, typer.Option("--meta-droprate")] = 0.5,
    zooms: Annotated[str, typer.Option("--zooms", help="Zoom levels sampled during training.")] = "1,3,5",
    freeze_clap: Annotated[bool, typer.Option("--freeze-clap/--finetune-clap", help="Freeze the CLAP audio/text towers (heads still train).")] = False,
    no_text: Annotated[bool, typer.Option("--no-text", help="Train image-audio only.")] = False,
    amp: Annotated[str, typer.Option("--amp", help="Mixed precision on GPU: auto, bf16, fp16 or off.")] = "auto",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Save a resumable checkpoint every N steps (0 = only at the end).")] = 1000,
    val_every: Annotated[int, typer.Option("--val-every", help="Validate every N steps (0 = at each epoch end).")] = 0,
    log_every: Annotated[int, typer.Option("--log-every")] = 10,
    tiles: TilesOpt = None, clap_files: ClapOpt = None, device: DeviceOpt = "auto",
    cache_dir: CacheDirOpt = None, quiet: QuietOpt = False,
) -> None:
    """Train a PSM / GeoCLAP model and install it in the model cache under --name."""
    from ..families import parse_zooms
    from ..progress import info
    from ..train.loop import TrainConfig
    from ..train.run import train_model

    apply_quiet(quiet)
    config = TrainConfig(
        epochs=epochs, max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
        weight_decay=weight_decay, warmup_steps=warmup, schedule=schedule, loss=loss, vib_beta=vib_beta,
        pseudo_alpha=pseudo_alpha, text_weight=text_weight, pair_weighting=pair_weighting, meta_droprate=meta_droprate,
        zooms=tuple(parse_zooms(zooms)), freeze_clap=freeze_clap, use_text=not no_text, amp=amp, seed=seed,
        checkpoint_every=checkpoint_every, val_every=val_every, log_every=log_every)
    comps = _components(metadata)
    outcome = train_model(data, name=name, run_dir=output, val=val, config=config, init=init, variant=variant,
                          family=family, metadata=comps, size=size, satmae=str(satmae) if satmae else None,
                          resume=resume, tiles=tiles, clap_files=str(clap_files) if clap_files else None,
                          device=device, cache_dir=cache_dir)
    loss_text = "n/a" if outcome.final_loss is None else f"{outcome.final_loss:.4f}"
    info(f"trained {outcome.steps} steps (last loss {loss_text}); metrics in {outcome.run_dir / 'metrics.csv'}")
    typer.echo(str(outcome.model_dir))


def evaluate_command(
    model: Annotated[str, typer.Option("--model", help="Installed model name or model directory.")],
    data: Annotated[Optional[list[str]], typer.Option("--data", help="Manifest or WebDataset shards to evaluate on.", show_default=False)] = None,
    hf_dataset: Annotated[Optional[str], typer.Option("--hf-dataset", help="Sat2Sound models: evaluate on the test split of this Hugging Face dataset (MVRL/GeoSound or MVRL/SoundingEarth), the authors' protocol.", show_default=False)] = None,
    split: Annotated[str, typer.Option("--split", help="Manifest rows to use: auto (test rows if there is a split column), all, train, val or test.")] = "auto",
    zoom: Annotated[int, typer.Option("--zoom", help="Zoom level of the images (1, 3 or 5).")] = 1,
    metadata: Annotated[str, typer.Option("--metadata", help="Metadata given to the model: all, none or a comma list of components.")] = "all",
    add_text: Annotated[bool, typer.Option("--add-text", help="Add each sample's text to the image and audio queries (the papers' 'text' columns).")] = False,
    k: Annotated[float, typer.Option("--k", help="K of Recall@K (counts rank < K, as the papers).")] = 100,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 64,
    mel_index: Annotated[int, typer.Option("--mel-index", help="Which stored mel draw of the authors' shards to use (0-4).")] = 0,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Evaluate only the first N samples.", show_default=False)] = None,
    json_out: Annotated[Optional[str], typer.Option("--json", help="Also write the results as JSON to this file ('-' = stdout instead of the table).", show_default=False)] = None,
    tiles: TilesOpt = None, clap_files: ClapOpt = None, device: DeviceOpt = "auto",
    cache_dir: CacheDirOpt = None, quiet: QuietOpt = False,
) -> None:
    """Image↔audio retrieval: Recall@10 %, median rank and Recall@K, as the papers report them."""
    from ..atomic import write_text_atomic
    from ..families import check_zoom
    from ..train.evaluate import EvalOptions
    from ..train.run import evaluate_installed

    apply_quiet(quiet)
    if hf_dataset is not None:
        report = _evaluate_hf(model, hf_dataset, zoom=check_zoom(zoom), mel_index=mel_index, limit=limit,
                              add_text=add_text, device=device, cache_dir=cache_dir)
        from ..train.sat2sound_eval import psm_line

        typer.echo(report.to_json() if json_out == "-" else report.table() + "\n" + psm_line(report))
        if json_out and json_out != "-":
            write_text_atomic(json_out, report.to_json() + "\n")
        return
    if not data:
        raise InputError("give --data MANIFEST (or, for a Sat2Sound model, --hf-dataset MVRL/GeoSound)")
    options = EvalOptions(zoom=check_zoom(zoom), metadata=_components(metadata), add_text=add_text, k=k,
                          batch_size=batch_size, mel_index=mel_index, limit=limit)
    report = evaluate_installed(model, data, options, split=None if split == "all" else split, tiles=tiles,
                                clap_files=str(clap_files) if clap_files else None, device=device,
                                cache_dir=cache_dir)
    if json_out == "-":
        typer.echo(report.to_json())
        return
    typer.echo(report.table())
    if json_out:
        write_text_atomic(json_out, report.to_json() + "\n")


def _evaluate_hf(model: str, repo_id: str, *, zoom: int, mel_index: int, limit: Optional[int], add_text: bool,
                 device: str, cache_dir: Optional[str]):
    """The Sat2Sound protocol on a Hugging Face dataset; the report's table gets PSM's figures."""
    from ..models.soundscape import load_model
    from ..paths import model_dir
    from ..train.sat2sound_eval import evaluate_sat2sound

    installed = model_dir(cache_dir) / model
    loaded = load_model(installed if (installed / "config.json").is_file() else model, device=device,
                        cache_dir=cache_dir)
    if getattr(loaded, "variant", None) != "sat2sound":
        raise InputError("--hf-dataset evaluates Sat2Sound models; give PSM/GeoCLAP models --data")
    return evaluate_sat2sound(loaded, repo_id, zoom=zoom, mel_index=mel_index, limit=limit, add_text=add_text)


@data_app.command("split")
def split_command(
    manifest: Annotated[Path, typer.Argument(help="Manifest with lat/lon columns (.csv or .parquet).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output manifest (default: INPUT with .split before the suffix).", show_default=False)] = None,
    cell: Annotated[str, typer.Option("--cell", help="Cell size: 1deg (GeoSound) or 10km (SoundingEarth, small datasets).")] = "1deg",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    min_count: Annotated[int, typer.Option("--min-count", help="Cells with fewer samples always go to train.")] = 25,
    holdout_frac: Annotated[Optional[float], typer.Option("--holdout-frac", help="Fraction of cells per density tercile held out (default 0.10 for degree cells, 0.35 for km cells).", show_default=False)] = None,
    val_frac: Annotated[float, typer.Option("--val-frac", help="Fraction of held-out cells that become val (the rest test).")] = 0.40,
    val_size: Annotated[Optional[int], typer.Option("--val-size", help="Subsample val to this many rows, matching train's audio-source mix.", show_default=False)] = None,
    test_size: Annotated[Optional[int], typer.Option("--test-size", help="Subsample test likewise.", show_default=False)] = None,
    quiet: QuietOpt = False,
) -> None:
    """Split a manifest into train/val/test by whole spatial cells.

    Every cell goes to one split, so no test location shares a cell with training.
    """
    from ..train.run import split_manifest

    apply_quiet(quiet)
    output = output or manifest.with_name(f"{manifest.stem}.split{manifest.suffix}")
    out = split_manifest(manifest, output, cell=cell, seed=seed, min_count=min_count, holdout_frac=holdout_frac,
                         val_frac=val_frac, val_size=val_size, test_size=test_size)
    counts = out["split"].value_counts()
    cells = out.groupby("split")["cell_id"].nunique()
    summary = ", ".join(f"{s} {int(counts.get(s, 0))} rows / {int(cells.get(s, 0))} cells"
                        for s in ("train", "val", "test", "unused") if s in counts)
    typer.echo(f"{output}: {summary}")
