"""Imagery sources: the ``tiles.yaml`` schema, its loading/merging/validation, and ``--source``.

Configuration is data: every named source lives in ``tiles.yaml`` (shipped in the package, then
overridden by the user's ``$XDG_CONFIG_HOME/soundmap/tiles.yaml`` and finally ``--tiles-config``,
merged by name field by field). It is validated once, here, so that the rest of the code can trust
a :class:`TileSource` and users get a one-line :class:`~soundmap.errors.ConfigError` naming the
file, the source and the field.

``--source`` also accepts a raw XYZ/quadkey URL template or a local raster path, which become
ad-hoc sources of the Sentinel family unless ``--family`` says otherwise.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from ..errors import ConfigError, InputError
from ..families import get_family

KINDS: tuple[str, ...] = ("xyz", "quadkey", "file")

#: Placeholders a URL template may use: {z} {x} {y}, {-y} (TMS row, counted from the south),
#: {q}/{quadkey} (Bing quadkey), {s} (one of ``subdomains``), {api_key} (from ``api_key_env``).
TEMPLATE_TOKENS: frozenset[str] = frozenset({"z", "x", "y", "-y", "q", "quadkey", "s", "api_key"})
_TOKEN_RE = re.compile(r"\{([^{}]*)\}")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: Bytes per tile assumed for sources that do not say (a 256 px JPEG of imagery).
DEFAULT_BYTES_PER_TILE = 25_000
#: Zoom range assumed for a raw URL template (the planner clamps to it).
RAW_TEMPLATE_ZOOMS = (0, 22)


@dataclass(frozen=True)
class TileSource:
    """One imagery source, validated: where tiles come from and what the imagery is.

    ``url`` is a tile URL template for ``xyz``/``quadkey`` sources and a raster path for ``file``
    sources. ``metadata_url`` (optional, Bing's documented way) is asked once per fetch for the
    current tile URL template; ``url`` then only names the cache. ``family`` is the PSM model family the imagery suits. ``attribution`` must accompany
    every output made from it. ``spec`` keeps what the user typed for ``--source``.
    """

    name: str
    kind: str
    url: str
    min_zoom: int = 0
    max_zoom: int = 22
    tile_size: int = 256
    resolution_m: float = 10.0
    family: str = "sentinel"
    attribution: str = ""
    licence: str = ""
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)
    api_key_env: str | None = None
    subdomains: tuple[str, ...] = ()
    bytes_per_tile: int = DEFAULT_BYTES_PER_TILE
    note: str = ""
    psm_training_layer: bool = False
    metadata_url: str | None = None
    spec: str = ""
    #: Hosts besides the source's own that a tile request may be redirected to (none by default).
    redirect_hosts: tuple[str, ...] = ()

    @property
    def cache_key(self) -> str:
        """A stable id of the tiles themselves, derived from the URL template, not the name.

        Two names for the same layer (``s2cloudless`` and ``s2cloudless-2020``) share cached
        tiles, while redefining a name to another URL can never serve stale tiles. The API key is
        a placeholder in the template, so it never enters the key.
        """
        if self.kind == "file":
            return f"file:{Path(self.url).expanduser().resolve()}"
        template = self.url.replace("{quadkey}", "{q}")
        digest = hashlib.sha256(template.encode("utf-8")).hexdigest()[:16]
        host = urlsplit(template).hostname or "local"
        return f"{host}/{digest}"

    @property
    def is_remote(self) -> bool:
        """True for sources whose tiles are downloaded (xyz, quadkey) rather than read from a file."""
        return self.kind in ("xyz", "quadkey")

    def api_key(self) -> str | None:
        """The API key from the environment variable named in ``tiles.yaml`` (None if not needed)."""
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            raise ConfigError(f"source {self.name!r} needs an API key: set the environment variable "
                              f"{self.api_key_env} (named by api_key_env in tiles.yaml)")
        return key

    def tile_url(self, z: int, x: int, y: int, api_key: str | None = None) -> str:
        """The URL of tile (z, x, y): fills every placeholder of the template."""
        if not self.is_remote:
            raise InputError(f"source {self.name!r} is a local raster; it has no tile URLs")
        return fill_template(self.url, z, x, y, subdomains=self.subdomains, api_key=api_key)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (for the workspace), round-tripped by :meth:`from_dict`."""
        data = asdict(self)
        data["headers"] = dict(self.headers)
        data["subdomains"] = list(self.subdomains)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TileSource":
        """Rebuild a source written by :meth:`to_dict` (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["headers"] = dict(values.get("headers") or {})
        values["subdomains"] = tuple(values.get("subdomains") or ())
        values["redirect_hosts"] = tuple(values.get("redirect_hosts") or ())
        return cls(**values)


def quadkey(z: int, x: int, y: int) -> str:
    """Bing quadkey of tile (z, x, y): one base-4 digit per level, interleaving the bits of x and y."""
    import mercantile

    return mercantile.quadkey(x, y, z)


def fill_template(template: str, z: int, x: int, y: int, *, subdomains: tuple[str, ...] = (),
                  api_key: str | None = None) -> str:
    """Fill a tile URL template. The subdomain is chosen from (x + y) so a tile always maps to the
    same host (friendlier to HTTP caches than random picks)."""
    values = {"z": str(z), "x": str(x), "y": str(y), "-y": str((1 << z) - 1 - y)}
    if "{q}" in template or "{quadkey}" in template:
        values["q"] = values["quadkey"] = quadkey(z, x, y)
    if subdomains:
        values["s"] = subdomains[(x + y) % len(subdomains)]
    if api_key is not None:
        values["api_key"] = api_key

    def _sub(match: re.Match[str]) -> str:
        token = match.group(1)
        if token not in values:
            raise InputError(f"URL template {template!r}: no value for placeholder {{{token}}}")
        return values[token]

    return _TOKEN_RE.sub(_sub, template)


def template_problem(template: str, kind: str, subdomains: tuple[str, ...] = ()) -> str | None:
    """Why a URL template cannot work for ``kind`` (None when it can)."""
    scheme = urlsplit(template).scheme
    if scheme not in ("http", "https"):
        return f"URL template must start with http:// or https:// (got {template!r})"
    tokens = set(_TOKEN_RE.findall(template))
    unknown = sorted(tokens - TEMPLATE_TOKENS)
    if unknown:
        return (f"unknown placeholder {{{unknown[0]}}} in {template!r}; use {{z}} {{x}} {{y}} {{-y}} "
                f"{{q}} {{s}} {{api_key}}")
    if kind == "xyz" and not ({"z", "x"} <= tokens and ({"y", "-y"} & tokens)):
        return f"an xyz URL template needs {{z}}, {{x}} and {{y}} (or {{-y}}): {template!r}"
    if kind == "quadkey" and not ({"q", "quadkey"} & tokens):
        return f"a quadkey URL template needs {{q}} or {{quadkey}}: {template!r}"
    if "s" in tokens and not subdomains:
        return f"URL template uses {{s}} but no subdomains are listed: {template!r}"
    return None


# --------------------------------------------------------------------------- configuration files

@dataclass(frozen=True)
class SourcesConfig:
    """The merged, validated content of every tiles.yaml in effect."""

    default: str
    sources: dict[str, TileSource]
    files: tuple[Path, ...]


def packaged_config_path() -> Path:
    """The tiles.yaml shipped inside the package."""
    return Path(str(resources.files("soundmap").joinpath("data", "tiles.yaml")))


def user_config_path() -> Path:
    """The user's override file: ``$XDG_CONFIG_HOME/soundmap/tiles.yaml`` (``~/.config`` by default)."""
    root = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(root).expanduser() / "soundmap" / "tiles.yaml"


def config_files(config_path: str | os.PathLike | None = None) -> list[Path]:
    """The files merged, lowest priority first: packaged, user, then ``--tiles-config``."""
    files = [packaged_config_path()]
    user = user_config_path()
    if user.is_file():
        files.append(user)
    if config_path is not None:
        explicit = Path(config_path).expanduser()
        if not explicit.is_file():
            raise ConfigError(f"tiles config {explicit} does not exist; pass an existing YAML file to --tiles-config")
        files.append(explicit)
    return files


def _read_yaml(path: Path) -> dict[str, Any]:
    """Parse one tiles.yaml into its top-level mapping, with one-line errors."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read tiles config {path}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"tiles config {path} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: cannot parse YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'sources' key at the top level")
    unknown = sorted(set(data) - {"default", "sources"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key {unknown[0]!r}; allowed: default, sources")
    sources = data.get("sources") or {}
    if not isinstance(sources, dict):
        raise ConfigError(f"{path}: 'sources' must be a mapping of name -> source fields")
    for name, entry in sources.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: source {name!r} must be a mapping of fields")
    return data


_YAML_FIELDS = {f.name for f in fields(TileSource)} - {"name", "spec"}
_REQUIRED_FIELDS = ("kind", "url", "family", "attribution", "licence")


def load_config(config_path: str | os.PathLike | None = None) -> SourcesConfig:
    """Read, merge (by name, field by field) and validate every tiles.yaml in effect."""
    merged: dict[str, dict[str, Any]] = {}
    origin: dict[str, Path] = {}
    default: str | None = None
    files = config_files(config_path)
    for path in files:
        data = _read_yaml(path)
        if data.get("default") is not None:
            default = str(data["default"])
        for name, entry in (data.get("sources") or {}).items():
            merged.setdefault(str(name), {}).update(entry)
            origin[str(name)] = path
    sources = {name: build_source(name, entry, origin[name]) for name, entry in merged.items()}
    if not default:
        default = next(iter(sources), "")
    if default not in sources:
        raise ConfigError(f"{files[-1]}: default source {default!r} is not defined under 'sources'")
    return SourcesConfig(default=default, sources=sources, files=tuple(files))


def load_sources(config_path: str | os.PathLike | None = None) -> dict[str, TileSource]:
    """Every named source: the packaged tiles.yaml merged with the user's and ``config_path``."""
    return load_config(config_path).sources


def build_source(name: str, entry: Mapping[str, Any], origin: Path | str = "tiles.yaml") -> TileSource:
    """Validate one tiles.yaml entry into a :class:`TileSource` (ConfigError naming the field)."""

    def fail(message: str) -> ConfigError:
        return ConfigError(f"{origin}: source {name!r}: {message}")

    unknown = sorted(set(entry) - _YAML_FIELDS)
    if unknown:
        raise fail(f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(_YAML_FIELDS))}")
    for key in _REQUIRED_FIELDS:
        if entry.get(key) in (None, ""):
            raise fail(f"missing required field {key!r}")
    kind = entry["kind"]
    if kind not in KINDS:
        raise fail(f"kind must be one of {', '.join(KINDS)} (got {kind!r})")
    try:
        family = get_family(str(entry["family"])).name
    except InputError:
        raise fail(f"family must be sentinel, bing or googleEarth (got {entry['family']!r})") from None
    min_zoom = _int_field(entry, "min_zoom", 0, 0, 24, fail)
    max_zoom = _int_field(entry, "max_zoom", 22, 0, 24, fail)
    if min_zoom > max_zoom:
        raise fail(f"min_zoom ({min_zoom}) is larger than max_zoom ({max_zoom})")
    tile_size = _int_field(entry, "tile_size", 256, 16, 4096, fail)
    bytes_per_tile = _int_field(entry, "bytes_per_tile", DEFAULT_BYTES_PER_TILE, 1, 10**8, fail)
    resolution = entry.get("resolution_m", get_family(family).gsd)
    if isinstance(resolution, bool) or not isinstance(resolution, (int, float)) or resolution <= 0:
        raise fail(f"resolution_m must be a positive number of metres per pixel (got {resolution!r})")
    subdomains = entry.get("subdomains") or ()
    if isinstance(subdomains, str) or not all(isinstance(s, str) and s for s in subdomains):
        raise fail("subdomains must be a list of host prefixes, e.g. [a, b, c]")
    headers = entry.get("headers") or {}
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, (str, int, float))
                                                for k, v in headers.items()):
        raise fail("headers must be a mapping of header name -> text")
    if any(ch in f"{k}{v}" for k, v in headers.items() for ch in "\r\n\0"):
        raise fail("header names and values must be one line (no CR, LF or NUL characters)")
    redirect_hosts = entry.get("redirect_hosts") or ()
    if isinstance(redirect_hosts, str) or not all(isinstance(h, str) and h for h in redirect_hosts):
        raise fail("redirect_hosts must be a list of host names, e.g. [tiles.example.org]")
    api_key_env = entry.get("api_key_env")
    if api_key_env is not None and not (isinstance(api_key_env, str) and _ENV_NAME_RE.match(api_key_env)):
        raise fail(f"api_key_env must be an environment variable name (got {api_key_env!r})")
    url = str(entry["url"])
    if kind != "file":
        problem = template_problem(url, kind, tuple(subdomains))
        if problem:
            raise fail(problem)
        if "{api_key}" in url and not api_key_env:
            raise fail("URL uses {api_key} but api_key_env is not set")
    metadata_url = entry.get("metadata_url")
    if metadata_url is not None:
        if kind == "file" or not isinstance(metadata_url, str) or urlsplit(metadata_url).scheme not in ("http", "https"):
            raise fail("metadata_url must be an http(s) URL of a tile service (not for kind: file)")
        if "{api_key}" in metadata_url and not api_key_env:
            raise fail("metadata_url uses {api_key} but api_key_env is not set")
    for text_field in ("attribution", "licence", "note"):
        if not isinstance(entry.get(text_field, ""), str):
            raise fail(f"{text_field} must be text")
    return TileSource(
        name=name, kind=kind, url=url, min_zoom=min_zoom, max_zoom=max_zoom, tile_size=tile_size,
        resolution_m=float(resolution), family=family, attribution=entry["attribution"],
        licence=entry["licence"], headers={k: str(v) for k, v in headers.items()},
        api_key_env=api_key_env, subdomains=tuple(subdomains), bytes_per_tile=bytes_per_tile,
        note=entry.get("note", ""), psm_training_layer=bool(entry.get("psm_training_layer", False)),
        metadata_url=metadata_url, spec=name, redirect_hosts=tuple(redirect_hosts),
    )


def _int_field(entry: Mapping[str, Any], key: str, default: int, low: int, high: int, fail: Any) -> int:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise fail(f"{key} must be an integer from {low} to {high} (got {value!r})")
    return value


# --------------------------------------------------------------------------- --source resolution

def resolve_source(spec: str | None, *, family: str | None = None,
                   config_path: str | os.PathLike | None = None) -> TileSource:
    """Turn ``--source`` into a :class:`TileSource`.

    ``spec`` is a name from tiles.yaml (None = the configured default), a raw URL template
    (``https://host/{z}/{x}/{y}.jpg``; ``{q}`` makes it a quadkey source) or a local raster path.
    A raw template or raster is Sentinel-family unless ``family`` says otherwise; ``family`` also
    overrides a named source's family (for imagery you know better than the config).
    """
    family_name = get_family(family).name if family else None
    config = load_config(config_path)
    spec = (spec or config.default).strip()
    if "{" in spec:
        return _template_source(spec, family_name or "sentinel")
    if spec in config.sources:
        source = config.sources[spec]
        return replace(source, family=family_name) if family_name and family_name != source.family else source
    path = Path(spec).expanduser()
    if path.exists():
        return raster_source(path, family_name or "sentinel")
    if "://" in spec:
        raise InputError(f"--source {spec!r} is a URL without placeholders; give a template like "
                         "https://host/{z}/{x}/{y}.jpg")
    if os.sep in spec or Path(spec).suffix.lower() in (".tif", ".tiff", ".vrt", ".jp2", ".img"):
        raise InputError(f"--source {spec!r}: raster file not found")
    names = ", ".join(sorted(config.sources))
    raise InputError(f"unknown --source {spec!r}; use one of {names}, an XYZ template like "
                     "https://host/{z}/{x}/{y}.jpg, or a raster file path")


def _template_source(template: str, family: str) -> TileSource:
    """An ad-hoc source from a raw URL template typed on the command line."""
    kind = "quadkey" if ("{q}" in template or "{quadkey}" in template) else "xyz"
    problem = template_problem(template, kind)
    if problem:
        raise InputError(f"--source: {problem}")
    if "{api_key}" in template:
        raise InputError("--source: a raw template cannot use {api_key}; define the source in a "
                         "tiles.yaml with api_key_env instead")
    host = urlsplit(template).hostname or "unknown host"
    low, high = RAW_TEMPLATE_ZOOMS
    return TileSource(
        name=f"{kind}:{host}", kind=kind, url=template, min_zoom=low, max_zoom=high, tile_size=256,
        resolution_m=get_family(family).gsd, family=family,
        attribution=f"Imagery from {host} (check the provider's attribution requirements)",
        licence="unknown: check the provider's terms of use", spec=template,
    )


def raster_source(path: str | os.PathLike, family: str = "sentinel") -> TileSource:
    """An ad-hoc ``file`` source for a local GeoTIFF/COG/VRT (read, not downloaded)."""
    path = Path(path).expanduser().resolve()
    resolution = _raster_resolution_m(path) or get_family(family).gsd
    return TileSource(
        name=f"file:{path.name}", kind="file", url=str(path), min_zoom=0, max_zoom=0, tile_size=256,
        resolution_m=resolution, family=family,
        attribution=f"Imagery: {path.name} (user-supplied raster)", licence="as licensed by its provider",
        bytes_per_tile=0, spec=str(path),
    )


def _raster_resolution_m(path: Path) -> float | None:
    """Native pixel size in metres of a raster in a projected CRS (None for geographic CRSs)."""
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(path) as dataset:
            crs, res = dataset.crs, dataset.res
    except RasterioIOError as err:
        raise InputError(f"--source {path}: not a raster rasterio can read ({str(err).splitlines()[0]})") from None
    if crs is None:
        raise InputError(f"--source {path}: raster has no CRS; georeference it first (e.g. gdal_translate -a_srs)")
    if not crs.is_projected:
        return None
    _, factor = crs.linear_units_factor
    return float(res[0]) * float(factor)
