"""Query planning: which queries, which metadata settings, which outputs — validated before any work.

A call of ``soundmap query`` is planned as *Q queries × S metadata settings*. Fused image
embeddings depend only on (cells, metadata setting), never on the query, so the engine fuses once
per setting and scores all Q queries against each fused chunk; a plan therefore keeps the two
lists apart. Everything here is pure (no model, no I/O) so that bad input fails fast with a
one-line :class:`~soundmap.errors.InputError` before a model is loaded.

Query UX (documented in ``soundmap query --help``):

* every ``--text`` and every ``--audio`` is its own query, in the order text first, then audio;
* ``--combine`` turns text/audio pairs into single combined queries (psm-reference "Text added to
  the query"): the i-th text with the i-th audio, or — when one side is given once — that one with
  each of the other side.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..families import check_zoom

AUDIO_SOURCES: tuple[str, ...] = ("yfcc", "iNat", "aporee", "freesound")
"""Audio-source vocabulary of the reference, in its index order (psm-reference, Metadata)."""

CAPTION_SOURCES: tuple[str, ...] = ("meta", "qwen", "pengi")
"""Caption-source vocabulary of the reference, in its index order."""

COMPONENTS: tuple[str, ...] = ("audio_source", "caption_source", "latlon", "month", "hour")
"""Metadata components in the reference's token order."""

_COMPONENT_ALIASES = {
    "audio_source": "audio_source", "asource": "audio_source", "audiosource": "audio_source",
    "caption_source": "caption_source", "tsource": "caption_source", "text_source": "caption_source",
    "captionsource": "caption_source",
    "latlon": "latlon", "latlong": "latlon", "lat_lon": "latlon", "location": "latlon", "loc": "latlon",
    "month": "month", "hour": "hour", "time": "hour",
}

NORMALIZATIONS: tuple[str, ...] = ("minmax", "percentile")
SCORES: tuple[str, ...] = ("csd", "cosine")


# ----------------------------------------------------------------------------- metadata values
def parse_int_values(values: Iterable[str | int], *, option: str, low: int, high: int) -> list[int]:
    """Parse repeatable integer options with ranges: ``["20"]``, ``["0-23"]``, ``["6,12", "18"]``.

    Order is kept and duplicates dropped, so ``--hour 0-23`` gives the 24 steps of a time series.
    """
    out: list[int] = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            for number in _expand_range(part, option):
                if not low <= number <= high:
                    raise InputError(f"{option} {number} is out of range; use {low}..{high}")
                if number not in out:
                    out.append(number)
    return out


def _expand_range(part: str, option: str) -> list[int]:
    """``"5"`` → [5]; ``"3-6"`` → [3, 4, 5, 6]."""
    try:
        if "-" in part[1:]:
            first, last = part[0] + part[1:].split("-", 1)[0], part[1:].split("-", 1)[1]
            start, stop = int(first), int(last)
            if stop < start:
                raise InputError(f"{option} range {part!r} runs backwards; write it as {stop}-{start}")
            return list(range(start, stop + 1))
        return [int(part)]
    except ValueError:
        raise InputError(f"{option} expects integers or ranges like 0-23, got {part!r}") from None


def parse_hours(values: Iterable[str | int]) -> list[int]:
    """Hours of the day 0..23 (``--hour``)."""
    return parse_int_values(values, option="--hour", low=0, high=23)


def parse_months(values: Iterable[str | int]) -> list[int]:
    """Months 1..12 (``--month``)."""
    return parse_int_values(values, option="--month", low=1, high=12)


def _canonical(name: str | None, vocabulary: Sequence[str], option: str) -> str | None:
    if name is None:
        return None
    for known in vocabulary:
        if name.strip().lower() == known.lower():
            return known
    raise InputError(f"unknown {option} {name!r}; choose one of: {', '.join(vocabulary)}")


def canonical_audio_source(name: str | None) -> str | None:
    """The reference spelling of an audio source (case-insensitive), or None."""
    return _canonical(name, AUDIO_SOURCES, "--audio-source")


def canonical_caption_source(name: str | None) -> str | None:
    """The reference spelling of a caption source (case-insensitive), or None."""
    return _canonical(name, CAPTION_SOURCES, "--caption-source")


def canonical_component(name: str) -> str:
    """Map a model config's component name (``latlong``, ``time``, ``asource``, ...) to ours."""
    key = _COMPONENT_ALIASES.get(str(name).strip().lower())
    if key is None:
        raise InputError(f"model metadata component {name!r} is not one soundmap knows ({', '.join(COMPONENTS)})")
    return key


def model_components(model: Any) -> frozenset[str]:
    """The metadata components a model accepts (empty for metadata-free models)."""
    config = getattr(model, "config", None)
    raw = getattr(config, "metadata", None) or ()
    if isinstance(raw, str):
        raw = () if raw in ("", "none") else raw.split("_")
    return frozenset(canonical_component(item) for item in raw)


@dataclass(frozen=True)
class MetadataSetting:
    """One metadata setting of a query: the same for every cell, except lat/lon (the cell centre).

    ``None`` (or ``latlon=False``) means the component is dropped, exactly as the reference does
    for a missing value (masked out of the fusion transformer).
    """

    month: int | None = None
    hour: int | None = None
    audio_source: str | None = None
    caption_source: str | None = None
    latlon: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe description; dropped components are omitted."""
        out: dict[str, Any] = {}
        if self.audio_source is not None:
            out["audio_source"] = self.audio_source
        if self.caption_source is not None:
            out["caption_source"] = self.caption_source
        if self.latlon:
            out["latlon"] = "cell centre"
        if self.month is not None:
            out["month"] = self.month
        if self.hour is not None:
            out["hour"] = self.hour
        return out

    def label(self) -> str:
        """Short human label, e.g. ``hour=20 month=6 latlon``; ``no metadata`` when all are dropped."""
        parts = [f"{key}={value}" if key != "latlon" else "latlon" for key, value in self.as_dict().items()]
        return " ".join(parts) or "no metadata"

    def key(self) -> str:
        """Canonical string identifying the setting (part of the fused-embedding cache key)."""
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))


def build_settings(*, months: Sequence[int], hours: Sequence[int], audio_source: str | None,
                   caption_source: str | None, latlon: bool | None,
                   components: frozenset[str]) -> list[MetadataSetting]:
    """The metadata settings of a call: one per (month, hour) pair of the series.

    Giving a component the model does not take is an error (silently ignoring ``--hour 20`` would
    misrepresent the map). ``latlon=None`` means "use it if the model takes it" (the default).
    """
    given = {"month": bool(months), "hour": bool(hours), "audio_source": audio_source is not None,
             "caption_source": caption_source is not None, "latlon": bool(latlon)}
    for component, is_given in given.items():
        if is_given and component not in components:
            takes = ", ".join(c for c in COMPONENTS if c in components) or "no metadata"
            raise InputError(f"this model does not take {component.replace('_', ' ')} (it takes {takes}); drop that option")
    use_latlon = ("latlon" in components) if latlon is None else latlon
    month_steps: list[int | None] = list(months) or [None]
    hour_steps: list[int | None] = list(hours) or [None]
    return [MetadataSetting(month=month, hour=hour, audio_source=canonical_audio_source(audio_source),
                            caption_source=canonical_caption_source(caption_source), latlon=use_latlon)
            for month, hour in itertools.product(month_steps, hour_steps)]


# ----------------------------------------------------------------------------- queries
@dataclass(frozen=True)
class QuerySpec:
    """One query: a text, an audio file, or both combined (audio + text, per the papers)."""

    text: str | None = None
    audio: Path | None = None

    @property
    def label(self) -> str:
        """Human label used in band descriptions, tags and titles."""
        return self.describe()

    def describe(self, audio: str = "audio: {}", text: str = "text: {}") -> str:
        """The query in words: the audio file's name and the text, each in its template."""
        parts = []
        if self.audio is not None:
            parts.append(audio.format(Path(self.audio).name))
        if self.text is not None:
            parts.append(text.format(self.text))
        return " + ".join(parts)

    def as_dict(self) -> dict[str, str]:
        """JSON-safe description."""
        out = {}
        if self.text is not None:
            out["text"] = self.text
        if self.audio is not None:
            out["audio"] = str(self.audio)
        return out


def build_queries(texts: Sequence[str], audios: Sequence[str | Path], *, combine: bool = False) -> list[QuerySpec]:
    """The queries of a call (see the module docstring for the UX)."""
    texts = [text for text in texts]
    for text in texts:
        if not text.strip():
            raise InputError("--text must not be empty; describe a sound, e.g. --text 'birds singing'")
    audio_paths = [Path(audio) for audio in audios]
    for path in audio_paths:
        if not path.is_file():
            raise InputError(f"audio file {str(path)!r} does not exist")
    if not texts and not audio_paths:
        raise InputError("a query needs at least one --text or --audio")
    if not combine:
        return [QuerySpec(text=text) for text in texts] + [QuerySpec(audio=path) for path in audio_paths]
    if not texts or not audio_paths:
        raise InputError("--combine needs both --text and --audio")
    if len(texts) == len(audio_paths):
        pairs = list(zip(texts, audio_paths))
    elif len(texts) == 1:
        pairs = [(texts[0], path) for path in audio_paths]
    elif len(audio_paths) == 1:
        pairs = [(text, audio_paths[0]) for text in texts]
    else:
        raise InputError(f"--combine pairs the i-th --text with the i-th --audio: got {len(texts)} texts and "
                         f"{len(audio_paths)} audio files; give equal numbers or one of either")
    return [QuerySpec(text=text, audio=path) for text, path in pairs]


# ----------------------------------------------------------------------------- outputs
@dataclass(frozen=True)
class OutputPlan:
    """Which files a call writes, all derived from ``--out`` (``map.tif``):

    * ``map.tif`` — float32 raw scores, one band per (query, setting), query-major;
    * ``map_norm.tif`` — the same, normalised to 0–1 (``--normalize``);
    * ``map_rgb.tif`` — uint8 RGB composite of three queries (``--rgb``; one file per setting,
      ``map_rgb_t01.tif`` ..., for a series);
    * ``map_uncertainty.tif`` — ‖σ‖₁ of the fused image embedding, one band per setting;
    * ``map.png`` — quick-look; ``map.gif`` — animated series (``map_q1.gif`` ... per query).
    """

    out: Path
    normalize: str | None = None
    rgb: bool = False
    uncertainty: bool = False
    png: bool = False
    gif: bool = False

    def sibling(self, suffix: str, ext: str = ".tif") -> Path:
        """``map.tif`` → ``map<suffix><ext>``."""
        return self.out.with_name(f"{self.out.stem}{suffix}{ext}")

    @property
    def norm_path(self) -> Path:
        return self.sibling("_norm")

    @property
    def uncertainty_path(self) -> Path:
        return self.sibling("_uncertainty")

    @property
    def png_path(self) -> Path:
        return self.sibling("", ".png")

    def rgb_path(self, step: int, steps: int) -> Path:
        """The RGB composite of series step ``step`` (0-based)."""
        return self.sibling("_rgb" if steps == 1 else f"_rgb_t{step + 1:02d}")

    def gif_path(self, query: int, queries: int) -> Path:
        """The animated series of query ``query`` (0-based)."""
        return self.sibling("" if queries == 1 else f"_q{query + 1}", ".gif")


@dataclass(frozen=True)
class QueryPlan:
    """Everything a query call will do, validated."""

    queries: tuple[QuerySpec, ...]
    settings: tuple[MetadataSetting, ...]
    score: str
    outputs: OutputPlan
    zoom: int | None = None
    bbox: Any = None  # soundmap.geo.bbox.BBox restricting the output, or None for the whole region
    extra_tags: dict[str, str] = field(default_factory=dict)

    @property
    def band_count(self) -> int:
        return len(self.queries) * len(self.settings)

    def band_index(self, query: int, setting: int) -> int:
        """1-based band of (query, setting): query-major, so each query's series is contiguous."""
        return query * len(self.settings) + setting + 1


def check_outputs(outputs: OutputPlan, *, queries: int, settings: int, probabilistic: bool) -> None:
    """Reject output combinations that cannot be made, with one line saying why."""
    if outputs.normalize is not None and outputs.normalize not in NORMALIZATIONS:
        raise InputError(f"--normalize must be one of {', '.join(NORMALIZATIONS)}, got {outputs.normalize!r}")
    if outputs.rgb and queries != 3:
        raise InputError(f"--rgb needs exactly three queries (red, green, blue); got {queries}")
    if outputs.gif and settings < 2:
        raise InputError("--gif animates a series: give several hours or months, e.g. --hour 0-23")
    if outputs.uncertainty and not probabilistic:
        raise InputError("--uncertainty needs a probabilistic (PSM) model; this model is deterministic "
                         "(GeoCLAP or Sat2Sound): drop --uncertainty or use a psm-* model")
    if outputs.out.suffix.lower() not in (".tif", ".tiff"):
        raise InputError(f"--out must be a GeoTIFF path ending in .tif, got {str(outputs.out)!r}")
    if outputs.out.is_dir():
        raise InputError(f"--out {outputs.out} is a directory; give a file path such as {outputs.out / 'map.tif'}")
    parent = next((p for p in outputs.out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise InputError(f"--out {outputs.out}: {parent} is a file, not a directory; choose another --out")


def check_score(score: str | None, *, probabilistic: bool, default: str) -> str:
    """The score method: the model's default unless given; CSD needs a probabilistic model."""
    method = (score or default).lower()
    if method not in SCORES:
        raise InputError(f"--score must be csd or cosine, got {score!r}")
    if method == "csd" and not probabilistic:
        raise InputError("--score csd needs a probabilistic (PSM) model; use --score cosine with GeoCLAP")
    return method


@dataclass(frozen=True)
class QueryOptions:
    """The query options as the user gave them (CLI or library), before validation."""

    out: str | Path
    texts: tuple[str, ...] = ()
    audios: tuple[str | Path, ...] = ()
    combine: bool = False
    months: tuple[str | int, ...] = ()
    hours: tuple[str | int, ...] = ()
    audio_source: str | None = None
    caption_source: str | None = None
    latlon: bool | None = None
    score: str | None = None
    normalize: str | None = None
    rgb: bool = False
    uncertainty: bool = False
    png: bool = False
    gif: bool = False
    zoom: int | None = None
    bbox: Any = None  # BBox or "W,S,E,N" restricting the output


def make_plan(options: QueryOptions, model: Any = None) -> QueryPlan:
    """Validate every query option against ``model`` and return the plan.

    ``model`` supplies the metadata components, whether it is probabilistic and its default score;
    without one (early validation before a model is loaded) only model-independent checks run.
    """
    parsed_months, parsed_hours = parse_months(options.months), parse_hours(options.hours)
    canonical_audio_source(options.audio_source)
    canonical_caption_source(options.caption_source)
    queries = build_queries(list(options.texts), list(options.audios), combine=options.combine)
    components = model_components(model) if model is not None else frozenset(COMPONENTS)
    settings = build_settings(months=parsed_months, hours=parsed_hours, audio_source=options.audio_source,
                              caption_source=options.caption_source, latlon=options.latlon, components=components)
    probabilistic = bool(getattr(model, "probabilistic", True))
    outputs = OutputPlan(out=Path(options.out), normalize=options.normalize, rgb=options.rgb,
                         uncertainty=options.uncertainty, png=options.png, gif=options.gif)
    check_outputs(outputs, queries=len(queries), settings=len(settings), probabilistic=probabilistic)
    method = check_score(options.score, probabilistic=probabilistic,
                         default=getattr(model, "default_score", "csd" if probabilistic else "cosine"))
    return QueryPlan(queries=tuple(queries), settings=tuple(settings), score=method, outputs=outputs,
                     zoom=check_zoom(int(options.zoom)) if options.zoom is not None else None,
                     bbox=parse_region_bbox(options.bbox))


def parse_region_bbox(bbox: Any) -> Any:
    """``"W,S,E,N"`` → BBox (validated); a BBox or None passes through."""
    if bbox is None or not isinstance(bbox, str):
        return bbox
    from ..geo.bbox import parse_bbox

    return parse_bbox(bbox)
