"""Cross-modal retrieval evaluation as the papers report it (psm-reference "Scores and metrics").

Every sample of the evaluation set is embedded once: its satellite image (at one zoom level,
with the chosen metadata fused), its audio and, if asked, its caption. Then

* image → audio (I2A): each image (optionally + its text) queries the gallery of all audios;
* audio → image (A2I): each audio (optionally + its text) queries the gallery of all images;

and the true match is the sample's own partner. Reported: Recall@10 % (K = 0.10 × gallery, a
float), median rank and Recall@K (default 100). Recall counts ``rank < K`` strictly — the
reference's definition, effectively top K − 1 — kept so numbers compare with the papers.
"Text added to the query" combines embeddings as the reference: normalise(raw μ_query +
raw μ_text), log σ² summed (:meth:`Embedding.combine`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..models.embedding import Embedding
from ..models.scoring import score
from ..progress import progress
from .batch import BatchBuilder, sample_rng
from .datasets import DataSource
from .forward import embed_batch
from .metrics import RetrievalMetrics, retrieval_metrics


@dataclass(frozen=True)
class EvalOptions:
    """How to evaluate. ``metadata`` None = all the model's components, ``()`` = none."""

    zoom: int = 1
    metadata: tuple[str, ...] | None = None
    add_text: bool = False
    k: float = 100
    percent: float = 10.0
    batch_size: int = 64
    mel_index: int = 0
    score: str | None = None
    limit: int | None = None


@dataclass
class EvalReport:
    """Both directions' metrics plus what was evaluated."""

    i2a: RetrievalMetrics
    a2i: RetrievalMetrics
    options: EvalOptions
    model: str = ""
    metadata_used: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "zoom": self.options.zoom,
            "metadata": list(self.metadata_used),
            "add_text": self.options.add_text,
            "score": self.extra.get("score"),
            "gallery_size": self.i2a.gallery_size,
            "recall_definition": "rank < K (strict; effectively top K-1), ranks 1-based with average ties",
            "image_to_audio": self.i2a.to_dict(),
            "audio_to_image": self.a2i.to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """A small fixed-width table for the terminal."""
        k = f"R@{self.i2a.k:g}"
        head = f"{'direction':<16}{'R@10%':>9}{'MdR':>10}{k:>9}"
        lines = [head, "-" * len(head)]
        for name, m in (("image->audio", self.i2a), ("audio->image", self.a2i)):
            lines.append(f"{name:<16}{m.recall_at_10pct:>9.3f}{m.median_rank:>10.1f}{m.recall_at_k:>9.3f}")
        meta = ",".join(self.metadata_used) or "none"
        lines.append(f"gallery {self.i2a.gallery_size} (R@10% uses K={self.i2a.k_percent:g}; recall counts "
                     f"rank < K) | zoom {self.options.zoom} | metadata {meta} | text "
                     f"{'added' if self.options.add_text else 'no'}")
        return "\n".join(lines)


def resolve_metadata(model_components: Sequence[str], requested: Sequence[str] | None) -> tuple[str, ...]:
    """The components to fuse: all of the model's (None) or a subset; unknown names are an error."""
    if requested is None:
        return tuple(model_components)
    unknown = [c for c in requested if c not in model_components]
    if unknown:
        have = ", ".join(model_components) or "none"
        raise InputError(f"metadata component(s) {', '.join(unknown)} not in this model (it has: {have})")
    return tuple(c for c in model_components if c in requested)


@torch.no_grad()
def embed_source(model: nn.Module, source: DataSource, options: EvalOptions, *, device: torch.device | str = "cpu",
                 featurizer: Any = None, tokenizer: Any = None,
                 image_provider: Any = None) -> tuple[Embedding, Embedding, Embedding | None, list[str]]:
    """Embed every sample: (image, audio, text or None, keys), rows aligned."""
    keep = resolve_metadata(model.config.metadata, options.metadata)
    builder = BatchBuilder(family=model.config.family, train=False, eval_zoom=options.zoom,
                           metadata_components=model.config.metadata, keep_components=keep,
                           mel_index=options.mel_index, use_text=options.add_text, featurizer=featurizer,
                           tokenizer=tokenizer, image_provider=image_provider)
    was_training = model.training
    model.eval()
    images, audios, texts, keys = [], [], [], []
    chunk: list = []

    def flush() -> None:
        if options.add_text and not all(s.has_text() for s in chunk):
            missing = next(s.key for s in chunk if not s.has_text())
            raise InputError(f"--add-text needs a caption for every sample; {missing!r} has none")
        rngs = [sample_rng(0, 0, len(keys) + i) for i in range(len(chunk))]
        batch = builder.build(chunk, rngs).to(device)
        emb = embed_batch(model, batch)
        images.append(emb.image.detach().cpu())
        audios.append(emb.audio.detach().cpu())
        if emb.text is not None:
            texts.append(emb.text.detach().cpu())
        keys.extend(batch.keys)
        chunk.clear()

    try:
        bar = progress(desc="evaluate", unit="sample")
        for i, (_, sample) in enumerate(source.iter_epoch(seed=0, epoch=0, shuffle=False)):
            if options.limit is not None and i >= options.limit:
                break
            chunk.append(sample)
            if len(chunk) == options.batch_size:
                flush()
                bar.update(options.batch_size)
        if chunk:
            n = len(chunk)
            flush()
            bar.update(n)
        bar.close()
    finally:
        model.train(was_training)
    if len(keys) < 2:
        raise InputError("evaluation needs at least 2 samples")
    text = Embedding.cat(texts) if options.add_text else None
    return Embedding.cat(images), Embedding.cat(audios), text, keys


def evaluate_embeddings(image: Embedding, audio: Embedding, text: Embedding | None, options: EvalOptions,
                        method: str) -> tuple[RetrievalMetrics, RetrievalMetrics]:
    """I2A and A2I metrics from aligned embeddings (text, if given, is added to both queries)."""
    image_query = Embedding.combine(image, text) if text is not None else image
    audio_query = Embedding.combine(audio, text) if text is not None else audio
    # CSD in float64 as the reference's compute_csd_sims (to_double); cosine stays float32 as theirs
    i2a = retrieval_metrics(score(image_query, audio, method, precision=torch.float64), k=options.k,
                            percent=options.percent)
    a2i = retrieval_metrics(score(audio_query, image, method, precision=torch.float64), k=options.k,
                            percent=options.percent)
    return i2a, a2i


def evaluate_model(model: nn.Module, source: DataSource, options: EvalOptions | None = None, *,
                   device: torch.device | str = "cpu", featurizer: Any = None, tokenizer: Any = None,
                   image_provider: Any = None) -> EvalReport:
    """Embed ``source`` with ``model`` and compute both directions' retrieval metrics."""
    options = options or EvalOptions()
    image, audio, text, _ = embed_source(model, source, options, device=device, featurizer=featurizer,
                                         tokenizer=tokenizer, image_provider=image_provider)
    method = options.score or model.config.default_score
    i2a, a2i = evaluate_embeddings(image, audio, text, options, method)
    return EvalReport(i2a, a2i, options, model=getattr(model.config, "name", "") or "",
                      metadata_used=resolve_metadata(model.config.metadata, options.metadata),
                      extra={"score": method})
