"""``soundmap align`` with the cross-modal urban sensing study's encoders (AST, CLIP, RemoteCLIP).

The study (London, New York, Tokyo) correlates the pairwise cosine similarities of AST audio
embeddings with those of image embeddings: OpenAI CLIP ViT-L/14 on street-level images, RemoteCLIP
ViT-L/14 on aerial images, and the two views combined. Here:

* ``--audio-encoder ast`` — :mod:`soundmap.models.ast_audio` (10 s segments, mean of the pooled
  outputs); ``model`` — the PSM/GeoCLAP model's CLAP audio branch.
* ``--image-encoder clip`` — CLIP on the manifest's street-image column (``street``);
  ``remoteclip`` — RemoteCLIP on the manifest's ``image`` column, else on the imagery soundmap
  renders at each recording from ``--source`` (``aerial``); ``model`` — the PSM image encoder.
* ``--combine-views`` — both, and the **combined view**. The study says only that the street and
  aerial embeddings "were combined"; soundmap concatenates the two L2-normalised embeddings,
  ``z = [z_street/‖z_street‖, z_aerial/‖z_aerial‖]``, so that
  ``cos(z_i, z_j) = (cos_street(i, j) + cos_aerial(i, j)) / 2``: each view weighs the same whatever
  its norm or dimension. ``street_vs_aerial`` correlates the two views with each other (the study:
  r = 0.27).

Every correlation is reported with the Mantel permutation p (the honest test for pairwise
matrices) and the study's plain p (pairs as independent samples), overall and per group.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path, write_text_atomic
from ..errors import AudioError, InputError
from ..progress import info, progress
from .align import (ENCODE_CHUNK, AlignOptions, AlignResult, Analysis, PlaceRenderer, _fmt, align_statistics,
                    correlate_similarities, read_manifest, read_rgb)
from .stats import cosine_similarity_matrix

AUDIO_ENCODERS = ("ast", "model")
IMAGE_ENCODERS = ("remoteclip", "clip", "model")
VIEW_ORDER = ("street", "aerial", "combined", "image")
SEGMENTATION_ORDER = ("aerial_segmentation", "street_segmentation")
BGA_ORDER = ("bga_anthrophony", "bga_biophony", "bga_geophony", "bga", "street_bga_anthrophony",
             "street_bga_biophony", "street_bga_geophony", "street_bga")

#: The study's reported Pearson r (all p < 0.001 as they computed them), for comparison in reports.
STUDY_REFERENCE: dict[str, Any] = {
    "overall": {"street": 0.19, "aerial": 0.14, "combined": 0.21, "street_vs_aerial": 0.27,
                "aerial_segmentation": 0.14, "street_segmentation": 0.05,
                "aerial_bga_anthrophony": 0.145, "aerial_bga_biophony": 0.130, "aerial_bga_geophony": 0.070,
                "street_bga_anthrophony": -0.005, "street_bga_biophony": -0.023, "street_bga_geophony": 0.024},
    "London": {"street": 0.20, "aerial": 0.14, "combined": 0.22},
    "New York": {"street": 0.14, "aerial": 0.04, "combined": 0.12},
    "Tokyo": {"street": 0.26, "aerial": 0.23, "combined": 0.29},
}

#: Bar labels of the figure (the JSON keeps the full names).
SHORT_LABELS = {"street_vs_aerial": "street vs\naerial", "aerial_segmentation": "aerial\nseg.",
                "street_segmentation": "street\nseg.", "bga_anthrophony": "anthro", "bga_biophony": "bio",
                "bga_geophony": "geo", "bga": "A/B/G", "street_bga_anthrophony": "street\nanthro",
                "street_bga_biophony": "street\nbio", "street_bga_geophony": "street\ngeo",
                "street_bga": "street\nA/B/G"}

COMBINED_FORMULA = ("z = [z_street/|z_street|, z_aerial/|z_aerial|] (concatenated unit vectors), so "
                    "cos(z_i, z_j) = (cos_street(i,j) + cos_aerial(i,j)) / 2")


def check_study_options(options: AlignOptions) -> None:
    """Encoder choices that cannot work, before anything is read or loaded."""
    if options.audio_encoder not in AUDIO_ENCODERS:
        raise InputError(f"--audio-encoder {options.audio_encoder!r} is not one of {', '.join(AUDIO_ENCODERS)}")
    if options.image_encoder not in IMAGE_ENCODERS:
        raise InputError(f"--image-encoder {options.image_encoder!r} is not one of {', '.join(IMAGE_ENCODERS)}")
    from .segmentation import check_segmenter

    check_segmenter(options.segmenter)
    if options.combine_views and options.image_encoder == "model":
        raise InputError("--combine-views combines CLIP street and RemoteCLIP aerial embeddings; "
                         "use it with --image-encoder clip or remoteclip")


def combined_embeddings(street: np.ndarray, aerial: np.ndarray) -> np.ndarray:
    """The combined view: concatenated L2-normalised street and aerial embeddings (see module doc)."""
    def unit(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)

    return np.concatenate([unit(street), unit(aerial)], axis=1)


def study_statistics(audio: np.ndarray, views: dict[str, tuple[np.ndarray, np.ndarray]], *,
                     bga: np.ndarray | None = None, groups: np.ndarray | None = None,
                     segmentations: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                     street_bga: np.ndarray | None = None, **kwargs: Any) -> dict[str, Analysis]:
    """Every analysis from embeddings: each view (``name -> (N × D, valid N)``), the combined view
    when both ``street`` and ``aerial`` are there, ``street_vs_aerial``, the segmentation views
    (cosine of class-proportion vectors, the study's Fig. 9/10) and the BGA analyses of the aerial
    (``bga``: land cover or aerial segmentation) and street (``street_bga``) BGA vectors."""
    views = dict(views)
    if "street" in views and "aerial" in views:
        (street, ok_s), (aerial, ok_a) = views["street"], views["aerial"]
        views["combined"] = (combined_embeddings(street, aerial), np.asarray(ok_s) & np.asarray(ok_a))
    audio_sim = cosine_similarity_matrix(audio)
    out: dict[str, Analysis] = {}
    views.update(segmentations or {})
    for name in [v for v in (*VIEW_ORDER, *SEGMENTATION_ORDER) if v in views]:
        vectors, valid = views[name]
        valid = np.asarray(valid, dtype=bool)
        other = cosine_similarity_matrix(np.where(valid[:, None], vectors, 0.0))
        analysis = correlate_similarities(name, audio_sim, other, valid, groups, **kwargs)
        if analysis is not None:
            out[name] = analysis
    if "street" in views and "aerial" in views:
        (street, ok_s), (aerial, ok_a) = views["street"], views["aerial"]
        both = np.asarray(ok_s) & np.asarray(ok_a)
        analysis = correlate_similarities("street_vs_aerial", cosine_similarity_matrix(street),
                                          cosine_similarity_matrix(aerial), both, groups, **kwargs)
        if analysis is not None:
            out["street_vs_aerial"] = analysis
    if bga is not None:
        out.update(align_statistics(audio, bga=bga, groups=groups, **kwargs))
    if street_bga is not None:
        out.update({f"street_{name}": a for name, a in
                    align_statistics(audio, bga=street_bga, groups=groups, **kwargs).items()})
    return out


# --------------------------------------------------------------------------- inputs
def check_inputs(manifest: Any, options: AlignOptions, wants_street: bool, wants_aerial: bool) -> None:
    """Fail on undecodable images and too-short audio before any model is loaded."""
    if wants_street:
        for path in manifest.street_images:
            read_rgb(path)
    if wants_aerial:
        if manifest.images is None and options.source is None:
            raise InputError("--image-encoder remoteclip embeds aerial images: give an image column in the "
                             "manifest or --source to render imagery at each recording")
        for path in manifest.images or []:
            read_rgb(path)
    if options.audio_encoder == "ast":
        from ..models.ast_audio import SEGMENT_SECONDS

        for path in manifest.audio:
            seconds = audio_seconds(path)
            if seconds < SEGMENT_SECONDS:
                raise AudioError(f"audio {path} is {seconds:.2f} s long, shorter than one {SEGMENT_SECONDS:g} s "
                                 f"AST segment; give recordings of at least {SEGMENT_SECONDS:g} s")


def audio_seconds(path: Path) -> float:
    """Duration of an audio file from its header (libsndfile), or a one-line AudioError."""
    import soundfile

    try:
        meta = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError) as err:
        raise AudioError(f"cannot decode audio file {path}: {str(err).strip().splitlines()[0]}") from None
    return float(meta.frames) / float(meta.samplerate)


@dataclass
class ImageResults:
    """What the images gave: embedding views, segmentation views and BGA vectors."""

    views: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    segmentations: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    bga: np.ndarray | None = None
    street_bga: np.ndarray | None = None


def image_results(manifest: Any, options: AlignOptions, device: Any, psm: Any, wants_street: bool,
                  wants_aerial: bool) -> ImageResults:
    """Embed (and with ``--segmenter clipseg`` segment) the street and aerial images."""
    from ..models.clip_image import load_clip, load_remoteclip
    from .segmentation import STREET_TABLE_RESOURCE, load_prompt_table, load_segmenter

    n = len(manifest)
    results = ImageResults()
    segmenter = load_segmenter(options.segmenter, device=device) if options.segmenter != "worldcover" else None
    if wants_street:
        encoder = load_clip(device=device)
        prompts = load_prompt_table(resource=STREET_TABLE_RESOURCE) if segmenter is not None else None
        features, _, seg = _image_pass(_file_chunks(manifest.street_images), n, encoder, segmenter, prompts,
                                       "CLIP street embeddings")
        results.views["street"] = (features, np.ones(n, dtype=bool))
        if seg is not None:
            results.segmentations["street_segmentation"] = (seg[0], np.ones(n, dtype=bool))
            results.street_bga = seg[1]
    has_aerial = manifest.images is not None or options.source is not None
    if wants_aerial or (segmenter is not None and has_aerial):
        encoder = load_remoteclip(device=device) if wants_aerial else None
        prompts = load_prompt_table(options.weights) if segmenter is not None else None
        chunks = (_file_chunks(manifest.images) if manifest.images is not None
                  else _rendered_chunks(PlaceRenderer(manifest, options.family, options), n))
        features, valid, seg = _image_pass(chunks, n, encoder, segmenter, prompts, "aerial images")
        if not valid.any():
            raise InputError(f"no recording has imagery from --source {options.source}; check it covers them")
        if not valid.all():
            info(f"{int((~valid).sum())} recording(s) have no imagery at their location; left out of the aerial views")
        if features is not None:
            results.views["aerial"] = (features, valid)
        if seg is not None:
            results.segmentations["aerial_segmentation"] = (seg[0], valid)
            results.bga = seg[1]
    if options.image_encoder == "model":
        from .align import image_embeddings

        features, valid = image_embeddings(manifest, psm, options)
        if features is not None:
            results.views["image"] = (features, valid)
    return results


def _file_chunks(paths: list[Path]) -> Any:
    """(indices, images) of image files, :data:`ENCODE_CHUNK` at a time."""
    for start in range(0, len(paths), ENCODE_CHUNK):
        chunk = paths[start:start + ENCODE_CHUNK]
        yield np.arange(start, start + len(chunk)), [read_rgb(p) for p in chunk]


def _rendered_chunks(renderer: PlaceRenderer, n: int) -> Any:
    """(indices, images) of the recordings with full imagery rendered over their footprints."""
    for start in range(0, n, ENCODE_CHUNK):
        pixels, ok = renderer.render(range(start, min(n, start + ENCODE_CHUNK)))
        yield np.arange(start, start + ok.size)[ok], list(pixels[ok])


def _image_pass(chunks: Any, n: int, encoder: Any, segmenter: Any, prompts: Any,
                desc: str) -> tuple[np.ndarray | None, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """One pass over images: embeddings (N × D), which were seen, and (proportions N × K, BGA 3 × N)."""
    from .segmentation import images_bga

    valid = np.zeros(n, dtype=bool)
    features: np.ndarray | None = None
    proportions: np.ndarray | None = None
    bga = np.full((3, n), np.nan)
    for index, images in progress(chunks, desc=desc, unit="chunk"):
        if not len(index):
            continue
        valid[index] = True
        if encoder is not None:
            encoded = encoder.embed(images)
            features = np.zeros((n, encoded.shape[1])) if features is None else features
            features[index] = encoded
        if segmenter is not None:
            result = images_bga(segmenter, images, prompts)
            proportions = np.zeros((n, result.proportions.shape[1])) if proportions is None else proportions
            proportions[index] = np.nan_to_num(result.proportions)
            bga[:, index] = result.values
    return features, valid, (None if proportions is None else (proportions, bga))


# --------------------------------------------------------------------------- the workflow
def run_study_align(options: AlignOptions, *, model: Any = None) -> AlignResult:
    """``soundmap align`` with the study's encoders: embed, correlate, write JSON + bar-chart PNG."""
    from ..models.soundscape import resolve_device

    check_study_options(options)
    wants_street = options.image_encoder == "clip" or options.combine_views
    wants_aerial = options.image_encoder == "remoteclip" or options.combine_views
    manifest = read_manifest(options.manifest, options.group_column,
                             street_column=options.street_image_column if wants_street else None)
    check_inputs(manifest, options, wants_street, wants_aerial)
    if options.segmenter != "worldcover" and not wants_street and manifest.images is None and options.source is None:
        raise InputError(f"--segmenter {options.segmenter} segments images: give an image column, --source or "
                         "street images (--image-encoder clip)")
    bga = _bga_vectors(manifest, options) if options.segmenter == "worldcover" else None
    needs_psm = options.audio_encoder == "model" or options.image_encoder == "model"
    psm = (model if model is not None else _load_psm(options)) if needs_psm else None
    device = resolve_device(options.device)
    if options.audio_encoder == "ast":
        from ..models.ast_audio import load_ast

        audio = load_ast(device=device).embed_files(manifest.audio)
    else:
        from .align import audio_embeddings

        audio = audio_embeddings(psm, manifest.audio)
    images = image_results(manifest, options, device, psm, wants_street, wants_aerial)
    analyses = study_statistics(audio, images.views, bga=bga if images.bga is None else images.bga,
                                groups=manifest.groups, segmentations=images.segmentations,
                                street_bga=images.street_bga, permutations=options.permutations,
                                seed=options.seed, alternative=options.alternative)
    if not analyses:
        raise InputError("nothing to correlate: no imagery or land cover for at least 4 recordings")
    report = study_report(options, manifest, analyses, psm)
    write_text_atomic(options.out, json.dumps(report, indent=2) + "\n")
    png = options.out.with_suffix(".png")
    render_study_png(analyses, png, title=f"{options.audio_encoder.upper()} audio vs imagery, {len(manifest)} recordings")
    return AlignResult(analyses=analyses, paths=[options.out, png], n=len(manifest))


def _load_psm(options: AlignOptions) -> Any:
    from .align import _load_model

    return _load_model(options)


def _bga_vectors(manifest: Any, options: AlignOptions) -> np.ndarray | None:
    """BGA vectors of the land cover at each recording, as in the PSM path (``--no-bga`` skips)."""
    if not options.bga:
        return None
    if options.bga_raster is not None:
        from .align import sample_bga_raster

        return sample_bga_raster(options.bga_raster, manifest.lon, manifest.lat)
    from ..families import get_family
    from .composite import class_table, landcover_source
    from .landcover import points_bga

    table = class_table(options.weights, options.class_map, options.landcover)
    source = landcover_source(options.landcover, year=options.worldcover_year, base_url=options.worldcover_url,
                              cache_dir=options.cache_dir)
    return points_bga(manifest.lon, manifest.lat, get_family(options.family).footprint_m(options.zoom),
                      source, table).values


def study_report(options: AlignOptions, manifest: Any, analyses: dict[str, Analysis], psm: Any) -> dict[str, Any]:
    from ..models.ast_audio import describe as describe_ast

    encoders: dict[str, Any] = {
        "audio": describe_ast() if options.audio_encoder == "ast" else {"encoder": getattr(psm, "name", "model")},
        "street": "openai/clip-vit-large-patch14 image_embeds" if "street" in analyses else None,
        "aerial": ("RemoteCLIP ViT-L/14 image_embeds (open_clip weights mapped onto transformers' CLIP vision "
                   "model), on " + ("the manifest's image column" if manifest.images is not None
                                    else f"imagery rendered from {options.source}")) if "aerial" in analyses else None,
    }
    return {
        "manifest": str(options.manifest), "n_recordings": len(manifest), "group_column": manifest.group_column,
        "audio_encoder": options.audio_encoder, "image_encoder": options.image_encoder,
        "combine_views": options.combine_views, "encoders": encoders, "segmenter": options.segmenter,
        "segmentation": ("CLIPSeg class maps (argmax over one prompt per class; tables bga_aerial.yaml and "
                         "bga_street.yaml = the study's Table 1); *_segmentation: cosine of class-proportion "
                         "vectors; bga / street_bga: area-weighted class weights") if options.segmenter != "worldcover"
                        else "bga: ESA WorldCover / --landcover around each recording",
        "combined_view": COMBINED_FORMULA if "combined" in analyses else None,
        "permutations": options.permutations, "seed": options.seed, "alternative": options.alternative,
        "analyses": {name: a.to_dict() for name, a in analyses.items()},
        "method": ("Pearson r of the upper triangles (no diagonal) of the audio-embedding cosine similarity matrix "
                   "and each other similarity matrix. p: Mantel permutation p = (1 + #extreme) / (1 + permutations), "
                   "rows and columns permuted jointly. p_pairs: the study's plain Pearson p over the pairs "
                   "(t-test with pairs - 2 degrees of freedom), which treats pairs as independent."),
        "study_reference_r": STUDY_REFERENCE,
    }


def render_study_png(analyses: dict[str, Analysis], dest: Path, title: str = "") -> Path:
    """Bar charts like the study's figures: r per view (Fig. 5), r per view and group (Fig. 6), r per
    BGA category (Fig. 11); bars are annotated with the Mantel p (matplotlib Agg)."""
    from matplotlib.figure import Figure

    views = [v for v in (*VIEW_ORDER, "street_vs_aerial", *SEGMENTATION_ORDER) if v in analyses]
    bgas = [b for b in BGA_ORDER if b in analyses]
    groups = sorted({g for name in views for g in analyses[name].groups})
    panels = [p for p, on in (("views", bool(views)), ("groups", bool(views and groups)), ("bga", bool(bgas))) if on]
    fig = Figure(figsize=(4.6 * max(1, len(panels)), 4.0), dpi=100)
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    colours = {"street": "tab:orange", "aerial": "tab:blue", "combined": "tab:green", "image": "tab:purple",
               "street_vs_aerial": "tab:gray", "bga_anthrophony": "tab:red", "bga_biophony": "tab:green",
               "bga_geophony": "tab:blue", "bga": "tab:brown", "aerial_segmentation": "tab:cyan",
               "street_segmentation": "tab:olive", "street_bga_anthrophony": "salmon",
               "street_bga_biophony": "lightgreen", "street_bga_geophony": "lightblue", "street_bga": "tan"}
    for ax, panel in zip(axes, panels):
        if panel == "views":
            _bars(ax, [SHORT_LABELS.get(v, v) for v in views], [analyses[v].overall for v in views], [colours[v] for v in views],
                  [STUDY_REFERENCE["overall"].get(v) for v in views])
            ax.set_title("audio vs image similarity (overall)", fontsize=9)
        elif panel == "groups":
            width = 0.8 / len(views)
            for k, view in enumerate(views):
                xs = np.arange(len(groups)) + (k - (len(views) - 1) / 2) * width
                rs = [analyses[view].groups[g].r if g in analyses[view].groups else np.nan for g in groups]
                ax.bar(xs, np.nan_to_num(rs), width, color=colours[view], label=view)
            ax.set_xticks(np.arange(len(groups)), groups, fontsize=7)
            tops = [analyses[v].groups[g].r for v in views for g in analyses[v].groups]
            finite = [r for r in tops if not math.isnan(r)]
            if finite:
                ax.set_ylim(min(0.0, min(finite)) - 0.05, max(0.0, max(finite)) + 0.25)
            ax.legend(fontsize=6, loc="upper center", ncol=min(4, len(views)))
            ax.set_title("per group", fontsize=9)
        else:
            _bars(ax, [SHORT_LABELS.get(b, b) for b in bgas],
                  [analyses[b].overall for b in bgas], [colours[b] for b in bgas],
                  [STUDY_REFERENCE["overall"].get(b if b.startswith("street") else f"aerial_{b}") for b in bgas])
            ax.set_title("audio vs BGA similarity (per category)", fontsize=9)
        ax.axhline(0.0, color="0.3", linewidth=0.6)
        ax.set_ylabel("Pearson r", fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.14, top=0.84, wspace=0.35)
    with atomic_path(dest, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, format="png")
    return dest


def _bars(ax: Any, labels: list[str], results: list[Any], colours: list[str],
          study: list[float | None] | None = None) -> None:
    """One bar per analysis (annotated r and Mantel p); the study's reported r as black ticks."""
    rs = [r.r for r in results]
    ax.bar(range(len(labels)), np.nan_to_num(rs), color=colours)
    ax.set_xticks(range(len(labels)), labels, fontsize=6)
    marks = [(x, v) for x, v in enumerate(study or []) if v is not None]
    if marks:
        ax.scatter([x for x, _ in marks], [v for _, v in marks], marker="_", s=400, color="black", zorder=3,
                   label="study's r (London, NY, Tokyo)")
        ax.legend(fontsize=6, loc="upper left")
    finite = [v for v in rs + [v for _, v in marks] if not math.isnan(v)]
    if finite:
        ax.set_ylim(min(0.0, min(finite)) - 0.05, max(0.0, max(finite)) + 0.2)
    for x, result in enumerate(results):
        if not math.isnan(result.r):
            ax.annotate(f"{result.r:.2f}\np={_fmt(result.p)}", (x, result.r), ha="center",
                        va="bottom" if result.r >= 0 else "top", fontsize=6)
