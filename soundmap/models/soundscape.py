"""The assembled PSM / GeoCLAP model (``SoundscapeModel``) and ``load_model``.

Layout of the module tree (and of ``model.safetensors``):

* ``image_encoder.backbone.…`` / ``image_encoder.projector.…`` — SatMAE ViT + projector → the
  512-d **pre-fusion** image feature that soundmap caches per cell (:meth:`encode_image`);
* ``fuser.…`` — metadata fusion transformer (only if the model has metadata components);
* ``image_heads.{mean_head,std_head}.…`` — PSM only; GeoCLAP has no image heads;
* ``audio_encoder.…`` / ``text_encoder.…`` — CLAP branches (soundmap.models.clap);
* ``criterion.{shift,negative_scale}`` (PSM) or ``criterion.tau`` (GeoCLAP) — training only.

Inference runs under ``torch.inference_mode``, in fp32 on CPU (bf16 would be 7× slower on CPUs
without bf16 units, performance.md) and with bf16 autocast for the image encoder on CUDA, unless
``model.precision = "fp32"`` (the authors evaluate in fp32: exact parity, slower on GPU).
Training code uses the submodules directly (:meth:`forward_image` keeps autograd).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from soundmap.errors import InputError, ModelError
from soundmap.models.config import CONFIG_FILE, WEIGHTS_FILE, ModelConfig, read_config  # noqa: F401 (re-exported)
from soundmap.models.devices import resolve_device  # noqa: F401 (re-exported)
from soundmap.models.embedding import Embedding
from soundmap.models.fusion import MetadataFuser
from soundmap.models.heads import ProbabilisticHeads
from soundmap.models.vit import ImageEncoder
from soundmap.preprocess.metadata import Metadata, MetaToken

#: Rows per fusion chunk: bounds memory for million-cell grids.
FUSE_CHUNK = 8192


class Criterion(nn.Module):
    """Learnable loss parameters kept with the model so training can resume from an import:
    PCME++ ``shift`` and ``negative_scale`` (both start at 5) or InfoNCE ``tau`` (starts at 1).
    Each has shape (1,), as the authors' criterions create them (``init × torch.ones(1)``), so
    their ``criterion.*`` tensors load with matching shapes."""

    def __init__(self, variant: str) -> None:
        super().__init__()
        if variant == "psm":
            self.shift = nn.Parameter(torch.full((1,), 5.0))
            self.negative_scale = nn.Parameter(torch.full((1,), 5.0))
        else:
            self.tau = nn.Parameter(torch.ones(1))


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (the one implementation lives in :mod:`soundmap.download`)."""
    from soundmap.download import sha256_of

    return sha256_of(path)


#: Image-encoder precision settings: ``auto`` = bf16 autocast on CUDA, fp32 on CPU; ``fp32`` =
#: fp32 everywhere (the reference's evaluation, for exact parity).
PRECISIONS = ("auto", "fp32")


def check_precision(precision: str) -> str:
    """The setting itself, or a one-line InputError naming the accepted values."""
    if precision not in PRECISIONS:
        raise InputError(f"--precision must be auto or fp32, got {precision!r}")
    return precision


class SoundscapeModel(nn.Module):
    """PSM (probabilistic, CSD) or GeoCLAP (deterministic, cosine) built from a :class:`ModelConfig`.

    ``precision`` (``auto`` | ``fp32``) selects how :meth:`encode_image` runs on CUDA; see
    :attr:`image_precision` for what it means on the current device.
    """

    def __init__(self, config: ModelConfig, *, name: str = "", weights_sha256: str = "") -> None:
        super().__init__()
        from soundmap.models.clap import ClapAudioBranch, ClapTextBranch

        self.config = config
        self.name = name or config.name
        self.weights_sha256 = weights_sha256
        self.clap_files: Path | None = None
        dim = config.fc_dim
        self.image_encoder = ImageEncoder(config.vit, dim)
        self.fuser = MetadataFuser(config.metadata, dim, config.fusion) if config.metadata else None
        self.image_heads = ProbabilisticHeads(dim) if config.probabilistic else None
        self.audio_encoder = ClapAudioBranch(config.audio, config.probabilistic, dim)
        self.text_encoder = ClapTextBranch(config.text, config.probabilistic, dim)
        self.criterion = Criterion(config.variant)
        self._featurizer: Any = None
        self._tokenizer: Any = None
        self.precision = "auto"
        self.eval()

    # -- facts ------------------------------------------------------------------------------------
    @property
    def probabilistic(self) -> bool:
        return self.config.probabilistic

    @property
    def family(self) -> str:
        return self.config.family

    @property
    def default_score(self) -> str:
        return self.config.default_score

    @property
    def preprocess_version(self) -> str:
        return self.config.preprocess_version

    @property
    def metadata_components(self) -> tuple[str, ...]:
        return self.config.metadata

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def set_precision(self, precision: str) -> SoundscapeModel:
        """Choose the image encoder's precision (``auto`` or ``fp32``); returns the model."""
        self.precision = check_precision(precision)
        return self

    @property
    def image_precision(self) -> str:
        """What :meth:`encode_image` computes in on the current device: ``bf16`` (``auto`` on
        CUDA) or ``fp32`` (``fp32``, or any setting on CPU). Embedding stores record it."""
        return "bf16" if self.precision == "auto" and self.device.type == "cuda" else "fp32"

    @contextlib.contextmanager
    def _image_autocast(self) -> Iterator[None]:
        """bf16 autocast for the image encoder when :attr:`image_precision` is bf16; otherwise
        autocast is switched off, so a caller's autocast cannot lower an fp32 request."""
        if self.image_precision == "bf16":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            with torch.autocast(self.device.type, enabled=False):
                yield

    # -- image ------------------------------------------------------------------------------------
    def resolutions(self, zoom: int | Sequence[int], n: int) -> torch.Tensor:
        """Per-image input resolution ``zoom × gsd`` (float32, N) for the GSD positional embedding."""
        if isinstance(zoom, torch.Tensor):
            zoom = zoom.detach().cpu().numpy()
        zooms = [float(zoom)] * n if np.ndim(zoom) == 0 else [float(z) for z in np.asarray(zoom).reshape(-1)]
        if len(zooms) != n:
            raise InputError(f"{len(zooms)} zoom levels given for {n} images")
        if any(float(z) <= 0 for z in zooms):
            raise InputError("zoom levels must be positive (PSM uses 1, 3 and 5)")
        return torch.tensor([float(z) * self.config.gsd for z in zooms], dtype=torch.float32)

    def encode_image(self, images: Any, zoom: int | Sequence[int], batch_size: int = 64) -> torch.Tensor:
        """uint8 N×H×W×3 cell renders → pre-fusion features (N × 512 float32, on the model's
        device). Applies the reference's eval transform and passes ``zoom × gsd`` to the GSDPE;
        ``zoom`` is one level for all images or one per image."""
        from soundmap.preprocess.image import eval_transform

        if not hasattr(images, "ndim") or images.ndim not in (3, 4):
            raise InputError("images must be a uint8 array of shape N×H×W×3")
        if images.ndim == 3:
            images = images[None]
        n = int(images.shape[0])
        res = self.resolutions(zoom, n)
        out = []
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                batch = images[start:start + batch_size]
                pixels = eval_transform(batch, device=self.device)
                with self._image_autocast():
                    features = self.image_encoder(pixels, res[start:start + batch_size])
                out.append(features.float())
        return torch.cat(out)

    def forward_image(self, pixels: torch.Tensor, res: torch.Tensor,
                      tokens: dict[str, MetaToken] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Training path with autograd: normalised pixels (N × 3 × 224 × 224) + res (N) +
        encoded metadata → (raw μ, log σ² | None) of the image side."""
        return self.image_outputs(self.image_encoder(pixels, res), tokens or {})

    def image_outputs(self, features: torch.Tensor, tokens: dict[str, MetaToken],
                      fast: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pre-fusion features → fusion (if any) → heads: (raw μ, log σ² | None)."""
        x = self.fuser(features, tokens, fast=fast) if self.fuser is not None else features
        if self.image_heads is not None:
            return self.image_heads(x)
        return x, None

    def fuse(self, image_features: torch.Tensor, metadata: Metadata | None = None,
             chunk: int = FUSE_CHUNK) -> Embedding:
        """Pre-fusion features (N × 512) + metadata → image :class:`Embedding` on the model's device.

        Metadata components the model does not have are ignored (``model.metadata_components``
        says which it has); a component that is None is dropped (masked) for every row.
        """
        metadata = metadata or Metadata()
        features = image_features.to(self.device, torch.float32)
        n = features.shape[0]
        tokens = metadata.encode(n, self.config.metadata) if self.fuser is not None else {}
        raws, logvars = [], []
        with torch.inference_mode():
            for start in range(0, n, chunk):
                part = slice(start, start + chunk)
                chunk_tokens = {c: MetaToken(t.values[part], t.valid[part]) for c, t in tokens.items()
                                if bool(t.valid[part].any())}
                raw, logvar = self.image_outputs(features[part], chunk_tokens)
                raws.append(raw)
                logvars.append(logvar)
        logvar_all = torch.cat(logvars) if self.probabilistic else None  # type: ignore[arg-type]
        return Embedding.from_raw(torch.cat(raws), logvar_all)

    # -- text / audio ----------------------------------------------------------------------------
    def _text_tokenizer(self) -> Any:
        if self._tokenizer is None:
            from soundmap.preprocess.text import TextTokenizer

            self._tokenizer = TextTokenizer(self.clap_files)
        return self._tokenizer

    def _audio_featurizer(self) -> Any:
        if self._featurizer is None:
            from soundmap.preprocess.audio import AudioFeaturizer

            self._featurizer = AudioFeaturizer(self.clap_files)
        return self._featurizer

    def encode_text(self, texts: str | Sequence[str] | None = None, *, input_ids: torch.Tensor | None = None,
                    attention_mask: torch.Tensor | None = None, batch_size: int = 64) -> Embedding:
        """Texts (or pre-tokenized ``input_ids``/``attention_mask``, B × 128) → text :class:`Embedding`."""
        if input_ids is None:
            if texts is None:
                raise InputError("encode_text needs texts or input_ids")
            tokens = self._text_tokenizer()(texts)
            input_ids, attention_mask = tokens["input_ids"], tokens["attention_mask"]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self._run_branch(self.text_encoder, batch_size, input_ids, attention_mask)

    def encode_audio(self, paths_or_waveforms: Any = None, sample_rate: int | None = None, *,
                     input_features: torch.Tensor | None = None, is_longer: torch.Tensor | None = None,
                     batch_size: int = 16) -> Embedding:
        """Audio files / waveforms (or CLAP ``input_features`` B × 4 × 1001 × 64 + ``is_longer``)
        → audio :class:`Embedding`."""
        if input_features is None:
            if paths_or_waveforms is None:
                raise InputError("encode_audio needs audio paths/waveforms or input_features")
            features = self._audio_featurizer()(paths_or_waveforms, sample_rate)
            input_features, is_longer = features["input_features"], features["is_longer"]
        if is_longer is None:
            is_longer = torch.ones(input_features.shape[0], dtype=torch.bool)
        return self._run_branch(self.audio_encoder, batch_size, input_features, is_longer)

    def _run_branch(self, branch: nn.Module, batch_size: int, *inputs: torch.Tensor) -> Embedding:
        raws, logvars = [], []
        with torch.inference_mode():
            for start in range(0, inputs[0].shape[0], batch_size):
                raw, logvar = branch(*(x[start:start + batch_size].to(self.device) for x in inputs))
                raws.append(raw.float())
                logvars.append(logvar)
        logvar_all = torch.cat(logvars).float() if self.probabilistic else None  # type: ignore[arg-type]
        return Embedding.from_raw(torch.cat(raws), logvar_all)

    # -- persistence ------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` atomically; records the weights' SHA-256."""
        from safetensors.torch import save_file

        from soundmap.atomic import atomic_path, write_text_atomic

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        with atomic_path(directory / WEIGHTS_FILE) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
            self.weights_sha256 = file_sha256(tmp)
        config = self.config.with_updates(name=self.name or directory.name)
        payload = config.to_dict()
        payload["weights_sha256"] = self.weights_sha256
        write_text_atomic(directory / CONFIG_FILE, json.dumps(payload, indent=2, sort_keys=True) + "\n")
        return directory

    @classmethod
    def from_state_dict(cls, config: ModelConfig, state: dict[str, torch.Tensor], *, name: str = "",
                        weights_sha256: str = "", what: str = "model weights",
                        display: Callable[[str], str] = str) -> SoundscapeModel:
        """Build a model holding exactly ``state`` (strict key/shape check first).

        The modules are created on the ``meta`` device and the loaded tensors are *assigned*, so
        no time is spent initialising ~250 M random weights that would be overwritten at once
        (seconds for the full model). Should any tensor stay on ``meta`` (a buffer that is not
        in the state dict), the model is rebuilt the ordinary way.
        """
        with torch.device("meta"):
            model = cls(config, name=name, weights_sha256=weights_sha256)
        check_state_dict(model, state, what=what, display=display)
        # fresh (aligned, unshared) storage: tensors viewed straight from a safetensors buffer can be
        # misaligned, which makes some CPU kernels round differently from an ordinary model
        owned = {key: tensor.clone(memory_format=torch.contiguous_format) for key, tensor in state.items()}
        model.load_state_dict(owned, strict=True, assign=True)
        if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
            model = cls(config, name=name, weights_sha256=weights_sha256)
            model.load_state_dict(state, strict=True)
        return model.eval()

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Strictly load a state dict; any difference is a one-line :class:`ModelError`."""
        check_state_dict(self, state, what="model weights")
        self.load_state_dict(state, strict=True)


def describe_key_problems(missing: Sequence[str], unexpected: Sequence[str], misshaped: Sequence[str]) -> str:
    """``missing 3 (a, b, c, …); unexpected 1 (x); wrong shape 1 (y: (4,) vs (5,))`` on one line."""
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
        if keys:
            shown = ", ".join(keys[:3]) + (", …" if len(keys) > 3 else "")
            parts.append(f"{label} {len(keys)} ({shown})")
    return "; ".join(parts)


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], what: str,
                     optional_prefixes: tuple[str, ...] = (), display: Callable[[str], str] = str) -> list[str]:
    """Compare ``state`` with ``model``'s keys and shapes; raise a one-line ModelError on any
    difference (keys shown through ``display``, e.g. as the checkpoint names them). Keys under
    ``optional_prefixes`` may be absent; the absent ones are returned."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    optional_missing = [k for k in missing if k.startswith(optional_prefixes)] if optional_prefixes else []
    missing = [k for k in missing if k not in optional_missing]
    unexpected = [k for k in state if k not in expected]
    misshaped = [f"{k}: {tuple(state[k].shape)} vs {expected[k]}" for k in state
                 if k in expected and tuple(state[k].shape) != expected[k]]
    if missing or unexpected or misshaped:
        problems = describe_key_problems([display(k) for k in missing], [display(k) for k in unexpected],
                                         [display(k) for k in misshaped])
        raise ModelError(f"{what} do not match the model: {problems}")
    return optional_missing


def _model_directory(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    from soundmap.paths import model_dir

    candidate = Path(name_or_path).expanduser()
    if (candidate / CONFIG_FILE).is_file():
        return candidate
    named = model_dir(cache_dir) / str(name_or_path)
    if (named / CONFIG_FILE).is_file():
        return named
    raise ModelError(f"model {str(name_or_path)!r} is not installed; see `soundmap models list`, then "
                     f"`soundmap models pull NAME` or `soundmap models import CKPT --name NAME`")


def model_files(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None, *,
                verify_hash: bool = False) -> tuple[Path, ModelConfig, str, Path]:
    """(directory, config, recorded weights SHA-256, weights file) of an installed model, checked
    (one-line ModelErrors): what every loader starts from."""
    directory = _model_directory(name_or_path, cache_dir)
    config, sha = read_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"{weights} is missing; re-import the model")
    if verify_hash and sha and file_sha256(weights) != sha:
        raise ModelError(f"{weights} does not match its recorded SHA-256; re-import the model")
    return directory, config, sha, weights


def load_model(name_or_path: str | os.PathLike, device: str | torch.device | None = "auto", *,
               clap_files: str | os.PathLike | None = None, verify_hash: bool = False,
               cache_dir: str | os.PathLike | None = None,
               text_encoder: str | os.PathLike | None = None) -> SoundscapeModel:
    """Load an installed model by name (``<model_dir>/<name>``) or from a directory holding
    ``config.json`` + ``model.safetensors``. ``verify_hash`` re-hashes the weights file.
    Sat2Sound models are recognised by their config and built by their own family
    (``text_encoder``: a local save_pretrained T5 encoder directory, Sat2Sound only)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory, config, sha, weights = model_files(name_or_path, cache_dir, verify_hash=verify_hash)
    target = resolve_device(device)
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as err:
        raise ModelError(f"cannot read {weights} ({err}); re-import the model") from None
    from .integrity import check_weights

    check_weights(weights, sha, state)  # recorded SHA-256 and finite tensors, once per file change
    if config.variant == "sat2sound":  # the third family: its own class and text-encoder lookup
        from soundmap.models.sat2sound.modeling import Sat2SoundModel

        sat2sound = Sat2SoundModel.from_state_dict(config, state, name=config.name or directory.name,
                                                   weights_sha256=sha)
        sat2sound.text_encoder_dir = Path(text_encoder) if text_encoder else None
        sat2sound.cache_dir = Path(cache_dir) if cache_dir else None
        return sat2sound.to(target).eval()
    try:
        model = SoundscapeModel.from_state_dict(config, state, name=config.name or directory.name, weights_sha256=sha)
    except (AttributeError, TypeError, ValueError) as err:  # a config.json value of the wrong type
        raise ModelError(f"{directory / CONFIG_FILE} does not describe a buildable model ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}); re-import the model") from None
    model.clap_files = Path(clap_files) if clap_files else _clap_files_under(cache_dir)
    return model.to(target).eval()


def _clap_files_under(cache_dir: str | os.PathLike | None) -> Path | None:
    """``<--cache-dir>/clap`` when the user named a cache root: the CLAP tokenizer files fetched
    there by ``soundmap models clap-files`` must be found by every command given the same
    ``--cache-dir`` (the default lookup only knows ``$SOUNDMAP_CACHE`` and the XDG root)."""
    if cache_dir is None:
        return None
    candidate = Path(cache_dir) / "clap"
    return candidate if candidate.is_dir() else None
