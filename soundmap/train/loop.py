"""The training loop: PCME++ (PSM) or InfoNCE (GeoCLAP) over image–audio–text triplets.

Defaults are the papers' (psm-reference "Loss"): AdamW lr 5e-5, weight decay 0.2, betas
(0.9, 0.98), eps 1e-6, batch 128, 30 epochs, warm-up 5000 iterations then cosine decay. Note on
the schedule: the authors' code actually uses ``CosineAnnealingWarmRestarts(T_0=warm-up)`` (a
cosine restarting every 5000 steps, no warm-up); ``schedule="restarts"`` reproduces that,
``"cosine"`` (default) is the warm-up + cosine the papers describe.

Exact resume: a checkpoint holds the model, loss parameters, optimizer, scheduler, AMP scaler,
the torch / numpy / python (and CUDA) RNG states and the data position (epoch, samples consumed
in it, optimizer step). The data order is a function of (seed, epoch) and every augmentation is
drawn from a generator seeded by (seed, epoch, position), so a resumed run sees exactly the
batches and augmentations of an uninterrupted one; on CPU the losses match bit for bit.

Gradient accumulation sums ``grad_accum`` micro-batches of ``batch_size`` per optimizer step;
contrastive negatives still come from one micro-batch (as in the reference's per-GPU loss).
"""

from __future__ import annotations

import csv
import json
import math
import queue
import random
import threading
import time
from collections.abc import Generator, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_path, write_text_atomic
from ..errors import InputError
from ..progress import progress
from .batch import Batch, BatchBuilder, batch_rng, sample_rng
from .datasets import DataSource, ManifestSource
from .forward import BatchEmbeddings, clap_branches, embed_batch
from .losses import combine_pair_losses, infonce_pair_loss, pcmepp_pair_loss

CHECKPOINT_FORMAT = 1
METRIC_COLUMNS = ("step", "epoch", "samples", "lr", "loss", "loss_ia", "loss_it", "loss_at",
                  "samples_per_s", "val_i2a_r10pct", "val_i2a_mdr", "val_a2i_r10pct", "val_a2i_mdr")
PAIR_WEIGHTINGS = ("auto", "geosound", "mean")


@dataclass
class TrainConfig:
    """Every training knob; the defaults are the papers' settings."""

    epochs: int = 30
    max_steps: int | None = None
    batch_size: int = 128
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 5000
    schedule: str = "cosine"
    loss: str = "auto"
    vib_beta: float = 1e-4
    pseudo_alpha: float = 0.1
    text_weight: float = 0.5
    pair_weighting: str = "auto"
    init_shift: float = 5.0
    init_negative_scale: float = 5.0
    init_tau: float = 1.0
    meta_droprate: float = 0.5
    zooms: tuple[int, ...] = (1, 3, 5)
    freeze_clap: bool = False
    use_text: bool = True
    amp: str = "auto"
    seed: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    val_every: int = 0
    shuffle_buffer: int = 1000
    clip_grad_norm: float | None = None
    prefetch: int = 2

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        self.zooms = tuple(int(z) for z in self.zooms)
        checks = [
            (self.batch_size >= 2, "--batch-size must be at least 2 (contrastive losses need negatives)"),
            (self.grad_accum >= 1, "--grad-accum must be at least 1"),
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.max_steps is None or self.max_steps >= 1, "--max-steps must be at least 1"),
            (self.lr > 0, "--lr must be positive"),
            (self.warmup_steps >= 0, "--warmup must be >= 0"),
            (self.schedule in ("cosine", "restarts", "constant"), "--schedule must be cosine, restarts or constant"),
            (self.loss in ("auto", "pcmepp", "infonce"), "--loss must be auto, pcmepp or infonce"),
            (self.pair_weighting in PAIR_WEIGHTINGS, "--pair-weighting must be auto, geosound or mean"),
            (self.amp in ("auto", "off", "bf16", "fp16"), "--amp must be auto, off, bf16 or fp16"),
            (0.0 <= self.meta_droprate <= 1.0, "--meta-droprate must be between 0 and 1"),
            (all(z in (1, 3, 5) for z in self.zooms) and bool(self.zooms), "--zooms must be among 1, 3, 5"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        d["zooms"] = list(self.zooms)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def resolve_pair_weighting(pair_weighting: str, family: str) -> str:
    """How the three pair losses are combined (see :func:`combine_pair_losses`).

    ``auto`` is what the released checkpoints were trained with: ``geosound``,
    (1 − w)·L_ia + w·(L_it + L_at), for every dataset. Reference quirk, followed on purpose (the
    code, not the paper, made the checkpoints): the authors' engine.py switches SoundingEarth runs
    to the plain mean by testing ``dataset_type == "soundingEarth"``, while their train.py only
    accepts ``SoundingEarth``, so as released that branch never runs. ``mean``,
    (L_ia + L_it + L_at) / 3, stays selectable; with w = 0.5 the two differ only by an overall
    factor 1.5 (same relative pair weights), i.e. in the logged loss scale.
    """
    del family  # kept in the signature: the rule is per dataset in the authors' intent
    if pair_weighting != "auto":
        return pair_weighting
    return "geosound"


class LossParams(nn.Module):
    """Learnable loss scalars, used when the model's ``criterion`` lacks them: InfoNCE's ``tau``
    (a logit *scale*, init 1, as the PSM code) and PCME++'s ``shift`` / ``negative_scale`` (init 5).
    A SoundscapeModel carries the ones of its own variant in ``model.criterion`` (so they are
    exported and an imported checkpoint resumes with its trained values)."""

    def __init__(self, init_shift: float = 5.0, init_negative_scale: float = 5.0, init_tau: float = 1.0) -> None:
        super().__init__()
        self.tau = nn.Parameter(torch.tensor(float(init_tau)))
        self.shift = nn.Parameter(torch.tensor(float(init_shift)))
        self.negative_scale = nn.Parameter(torch.tensor(float(init_negative_scale)))


def lr_factor(step: int, *, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    ``cosine``: linear warm-up over ``warmup`` steps, then cosine from 1 to 0 at ``total``.
    ``restarts``: the authors' ``CosineAnnealingWarmRestarts(T_0=warmup, eta_min=0)``.
    ``constant``: 1.
    """
    if schedule == "constant":
        return 1.0
    if schedule == "restarts":
        period = max(1, warmup)
        return 0.5 * (1.0 + math.cos(math.pi * (step % period) / period))
    if warmup and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress_frac = min(1.0, (step - warmup) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress_frac))


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype for ``amp`` on ``device`` (None = full precision). CPU: always off."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def count_samples(source: DataSource) -> int:
    """Number of samples in a source (shards: distinct keys, from the tar headers)."""
    if isinstance(source, ManifestSource):
        return len(source)
    import tarfile

    from .webdataset import split_member_name

    total = 0
    for shard in source.shards:
        keys = set()
        with tarfile.open(shard, mode="r:*") as archive:
            for member in archive:
                parts = split_member_name(member.name) if member.isfile() else None
                if parts:
                    keys.add(parts[0])
        total += len(keys)
    return total


def capture_rng() -> dict[str, Any]:
    """Every global RNG state a training step can touch."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class StepResult:
    step: int
    loss: float
    parts: dict[str, float] = field(default_factory=dict)


class MetricsLog:
    """metrics.csv (appended across resumes) and, if installed, TensorBoard event files."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / "metrics.csv"
        new = not self.path.exists()
        self._file = self.path.open("a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        if new:
            self._writer.writeheader()
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out_dir / "tensorboard"))
        except Exception:  # tensorboard is optional
            self._tb = None

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        self._file.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and value is not None:
                    self._tb.add_scalar(key, value, int(row["step"]))

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


class Trainer:
    """Trains a SoundscapeModel on a data source; see the module docstring.

    ``out_dir`` receives ``train_config.json``, ``metrics.csv`` and ``checkpoints/step-N.pt``.
    """

    def __init__(self, model: nn.Module, source: DataSource, config: TrainConfig, out_dir: str | Path, *,
                 val_source: DataSource | None = None, featurizer: Any = None, tokenizer: Any = None,
                 image_provider: Any = None, device: str | torch.device = "cpu",
                 total_steps: int | None = None) -> None:
        self.model = model.to(device)
        self.source = source
        self.config = config
        self.out_dir = Path(out_dir)
        self.val_source = val_source
        self.device = torch.device(device)
        self.loss_kind = config.loss if config.loss != "auto" else model.config.loss
        self.pair_weighting = resolve_pair_weighting(config.pair_weighting, model.config.family)
        self.loss_params = LossParams(config.init_shift, config.init_negative_scale, config.init_tau).to(self.device)
        needed = ("shift", "negative_scale") if self.loss_kind == "pcmepp" else ("tau",)
        criterion = getattr(model, "criterion", None)
        self._scalars = {n: getattr(criterion, n) if isinstance(getattr(criterion, n, None), nn.Parameter)
                         else getattr(self.loss_params, n) for n in needed}
        for name, param in self.loss_params.named_parameters():
            param.requires_grad_(any(p is param for p in self._scalars.values()))
        if self.loss_kind == "pcmepp" and not model.config.probabilistic:
            raise InputError("PCME++ needs a probabilistic (psm) model; use --loss infonce for GeoCLAP")
        if config.freeze_clap:
            for branch in clap_branches(model):
                for p in branch.model.parameters():
                    p.requires_grad_(False)
        self.builder = BatchBuilder(family=model.config.family, train=True, zooms=config.zooms,
                                    meta_droprate=config.meta_droprate,
                                    metadata_components=model.config.metadata, use_text=config.use_text,
                                    featurizer=featurizer, tokenizer=tokenizer, image_provider=image_provider)
        self.eval_kwargs = dict(featurizer=featurizer, tokenizer=tokenizer, image_provider=image_provider)
        params = [p for p in model.parameters() if p.requires_grad]
        params += [p for p in self.loss_params.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, betas=config.betas, eps=config.eps,
                                           weight_decay=config.weight_decay)
        self.total_steps = total_steps or self._planned_steps()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, warmup=config.warmup_steps, total=self.total_steps,
                                                schedule=config.schedule))
        self.amp_dtype = autocast_dtype(config.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.epoch = 0
        self.position = 0
        self.samples_seen = 0
        self.history: list[StepResult] = []

    # -- planning ----------------------------------------------------------------------------
    def _planned_steps(self) -> int:
        if self.config.max_steps is not None:
            return self.config.max_steps
        n = count_samples(self.source)
        per_epoch = (n // self.config.batch_size) // self.config.grad_accum
        if per_epoch < 1:
            raise InputError(f"only {n} training samples: fewer than one batch of {self.config.batch_size} "
                             f"× {self.config.grad_accum}; lower --batch-size")
        return per_epoch * self.config.epochs

    # -- data ----------------------------------------------------------------------------------
    def _micro_batches(self) -> Iterator[tuple[Batch | None, int, int]]:
        """``(batch, epoch, position)`` from the current data position on, where (epoch, position)
        is the data position *after* the batch; a None batch marks the end of an epoch.

        Pure with respect to the trainer (it reads the start position once and never writes it),
        so it can run ahead in a prefetch thread; :meth:`fit` records the position of each batch
        as it consumes it.
        """
        bs, seed = self.config.batch_size, self.config.seed
        epoch, position = self.epoch, self.position
        while epoch < self.config.epochs:
            samples, indices = [], []
            for index, sample in self.source.iter_epoch(seed=seed, epoch=epoch, start=position):
                samples.append(sample)
                indices.append(index)
                if len(samples) == bs:
                    batch = self.builder.build(samples, [sample_rng(seed, epoch, i) for i in indices],
                                               batch_rng(seed, epoch, indices[0]))
                    position = indices[-1] + 1
                    samples, indices = [], []
                    yield batch, epoch, position
            epoch, position = epoch + 1, 0
            yield None, epoch, position

    # -- one step ------------------------------------------------------------------------------
    def compute_loss(self, emb: BatchEmbeddings) -> tuple[torch.Tensor, dict[str, float]]:
        """The total loss over the pairs (image–audio, and with text image–text, audio–text)."""
        image, audio, text = emb.image, emb.audio, emb.text
        c = self.config

        def pair(p: Any, q: Any):
            if self.loss_kind == "pcmepp":
                return pcmepp_pair_loss(p.mu, p.logvar, q.mu, q.logvar, negative_scale=self._scalars["negative_scale"],
                                        shift=self._scalars["shift"], vib_beta=c.vib_beta, pseudo_alpha=c.pseudo_alpha)
            return infonce_pair_loss(p.mu, q.mu, logit_scale=self._scalars["tau"])

        ia = pair(image, audio)
        parts = {"loss_ia": ia.parts["total"]}
        it = at = None
        if text is not None:
            it, at = pair(image, text), pair(audio, text)
            parts["loss_it"], parts["loss_at"] = it.parts["total"], at.parts["total"]
        total = combine_pair_losses(ia.total, None if it is None else it.total, None if at is None else at.total,
                                    text_weight=c.text_weight, mean_of_pairs=self.pair_weighting == "mean")
        return total, parts

    def train_step(self, micro_batches: list[Batch]) -> StepResult:
        """One optimizer step over ``grad_accum`` micro-batches."""
        self.model.train()
        if self.config.freeze_clap:
            for branch in clap_branches(self.model):
                branch.model.eval()
        self.optimizer.zero_grad(set_to_none=True)
        total_loss, agg = 0.0, {}
        n = len(micro_batches)
        for batch in micro_batches:
            batch = batch.to(self.device)
            ctx = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
            with ctx:
                emb = embed_batch(self.model, batch)
            loss, parts = self.compute_loss(emb)
            self.scaler.scale(loss / n).backward()
            total_loss += float(loss.detach()) / n
            for k, v in parts.items():
                agg[k] = agg.get(k, 0.0) + v / n
        if self.config.clip_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                           self.config.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        self.samples_seen += sum(len(b) for b in micro_batches)
        return StepResult(self.step, total_loss, agg)

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "model_config": self.model.config.to_dict(),
            "model": self.model.state_dict(),
            "loss_params": self.loss_params.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng(),
            "position": {"step": self.step, "epoch": self.epoch, "sample": self.position,
                         "samples_seen": self.samples_seen},
            "train_config": self.config.to_dict(),
            "total_steps": self.total_steps,
        }

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Write a checkpoint atomically (default ``checkpoints/step-<N>.pt``), keeping the newest few."""
        ckpt_dir = self.out_dir / "checkpoints"
        path = Path(path) if path is not None else ckpt_dir / f"step-{self.step:08d}.pt"
        with atomic_path(path) as tmp:
            torch.save(self.checkpoint_state(), tmp)
        if self.config.keep_checkpoints > 0 and path.parent == ckpt_dir:
            old = sorted(ckpt_dir.glob("step-*.pt"))[:-self.config.keep_checkpoints]
            for stale in old:
                stale.unlink(missing_ok=True)
        return path

    def load_checkpoint(self, path: str | Path, state: dict[str, Any] | None = None) -> None:
        """Restore everything :meth:`checkpoint_state` saved (the model config must match);
        ``state`` is the already-read checkpoint, if the caller has it."""
        state = state if state is not None else load_checkpoint_file(path)
        if state["model_config"] != self.model.config.to_dict():
            raise InputError(f"checkpoint {path} was made for a different model configuration")
        self.model.load_state_dict(state["model"])
        self.loss_params.load_state_dict(state["loss_params"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        pos = state["position"]
        self.step, self.epoch, self.position = int(pos["step"]), int(pos["epoch"]), int(pos["sample"])
        self.samples_seen = int(pos.get("samples_seen", 0))
        self.total_steps = int(state.get("total_steps", self.total_steps))
        restore_rng(state["rng"])

    # -- validation ----------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """I2A / A2I R@10 % and median rank on the validation source (zoom 1, all metadata)."""
        if self.val_source is None:
            return {}
        from .evaluate import EvalOptions, evaluate_model

        report = evaluate_model(self.model, self.val_source, EvalOptions(batch_size=self.config.batch_size),
                                device=self.device, **self.eval_kwargs)
        return {"val_i2a_r10pct": report.i2a.recall_at_10pct, "val_i2a_mdr": report.i2a.median_rank,
                "val_a2i_r10pct": report.a2i.recall_at_10pct, "val_a2i_mdr": report.a2i.median_rank}

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, *, stop_after: int | None = None) -> list[StepResult]:
        """Train until ``total_steps`` / ``epochs`` (or ``stop_after`` more steps, for tests).

        Validation (when a validation source is given) runs every ``val_every`` steps, or at the
        last step of every epoch when ``val_every`` is 0, and always after the last step.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.out_dir / "train_config.json", json.dumps(self.config.to_dict(), indent=2))
        log = MetricsLog(self.out_dir)
        target = self.total_steps if stop_after is None else min(self.total_steps, self.step + stop_after)
        bar = progress(total=target, initial=self.step, desc="train", unit="step")
        batches = prefetch(self._micro_batches(), self.config.prefetch)
        pending: list[Batch] = []
        window_start, window_samples = time.perf_counter(), 0
        epoch_ended = False
        lookahead: Any = _EMPTY
        try:
            while self.step < target:
                item, lookahead = (next(batches, StopIteration), _EMPTY) if lookahead is _EMPTY else (lookahead, _EMPTY)
                if item is StopIteration:
                    break
                item, self.epoch, self.position = item  # type: ignore[misc]
                if item is None:
                    epoch_ended = True
                    continue
                pending.append(item)
                if len(pending) < self.config.grad_accum:
                    continue
                result = self.train_step(pending)
                window_samples += sum(len(b) for b in pending)
                pending = []
                self.history.append(result)
                if self.step < target:  # peek, so an epoch that just ended is validated at its last step
                    lookahead = next(batches, StopIteration)
                    if lookahead is not StopIteration and lookahead[0] is None:
                        _, self.epoch, self.position = lookahead
                        epoch_ended, lookahead = True, _EMPTY
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                rate = window_samples / elapsed
                bar.update(1)
                bar.set_postfix(loss=f"{result.loss:.4f}", sps=f"{rate:.1f}")
                row: dict[str, Any] = {"step": self.step, "epoch": self.epoch, "samples": self.samples_seen,
                                       "lr": self.scheduler.get_last_lr()[0], "loss": result.loss,
                                       "samples_per_s": rate, **result.parts}
                every = self.config.val_every
                val_due = (every and self.step % every == 0) or (not every and epoch_ended) or self.step == target
                if val_due and self.val_source is not None:
                    row.update(self.validate())
                epoch_ended = False
                if self.step % max(1, self.config.log_every) == 0 or "val_i2a_mdr" in row or self.step == target:
                    log.write(row)
                    window_start, window_samples = time.perf_counter(), 0
                if self.config.checkpoint_every and self.step % self.config.checkpoint_every == 0:
                    self.save_checkpoint()
        finally:
            batches.close()
            bar.close()
            log.close()
        if not self.history and self.step == 0:
            raise InputError("no training step ran: the data has fewer samples than one batch")
        return self.history


T = TypeVar("T")
_EMPTY = object()


def prefetch(items: Iterator[T], depth: int) -> Generator[T, None, None]:
    """Produce ``items`` in a background thread, up to ``depth`` ahead (0 = in this thread).

    Batch building (image decoding, crops, CLAP features, tokenizing) then overlaps the model's
    forward/backward. Order is preserved; an exception in the producer is re-raised here; closing
    the generator stops the producer.
    """
    if depth <= 0:
        yield from items
        return
    slots: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(("done", None))
        except BaseException as exc:  # handed to the consumer
            slots.put(("error", exc))

    worker = threading.Thread(target=produce, name="soundmap-batches", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while worker.is_alive():
            try:
                slots.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.1)


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint (our own files: they hold numpy RNG state, so not weights-only)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a damaged or foreign file
        raise InputError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path} is not a soundmap training checkpoint")
    return state


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest ``checkpoints/step-*.pt`` of a run directory, if any."""
    found = sorted((Path(out_dir) / "checkpoints").glob("step-*.pt"))
    return found[-1] if found else None
