"""Connecting to a Dask cluster, and what every worker process keeps between tasks.

``--scheduler`` (or ``$SOUNDMAP_SCHEDULER``) takes either the address of a running scheduler
(``tcp://host:8786``, ``host:8786``) or ``local:N``, which starts a LocalCluster of N worker
*processes* on this machine (one thread each: PyTorch already uses several cores per process, and
processes sidestep the GIL for rendering). ``--resources GPU=1`` names the Dask resources an
encoder task needs; workers that have a GPU are started with ``dask worker --resources GPU=1``, so
CPU-only workers never get an encoder task (they fetch and render). A ``local:N`` cluster gives
each of its workers the resources asked for.

Per-worker state (loaded models, opened stores) lives in module globals of the worker process:
a task looks the model up by (directory, weights sha256, device) and loads it only the first
time, so a worker loads each model once however many blocks it embeds.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, ModelError

SCHEDULER_ENV = "SOUNDMAP_SCHEDULER"
"""Environment variable read when ``--scheduler`` is not given."""

LOCAL_PREFIX = "local:"


@dataclass(frozen=True)
class SchedulerSpec:
    """Where the work runs: a LocalCluster of ``local_workers`` processes, or a scheduler ``address``."""

    address: str | None = None
    local_workers: int | None = None
    resources: Mapping[str, float] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return self.local_workers is not None

    def describe(self) -> str:
        """One human phrase."""
        where = f"a local cluster of {self.local_workers} worker processes" if self.is_local else f"scheduler {self.address}"
        if self.resources:
            where += " (encoder tasks need " + ", ".join(f"{k}={v:g}" for k, v in self.resources.items()) + ")"
        return where


def parse_resources(text: str | None) -> dict[str, float]:
    """``"GPU=1,MEM=4e9"`` → ``{"GPU": 1.0, "MEM": 4e9}``; InputError (one line) on anything else."""
    resources: dict[str, float] = {}
    for item in (text or "").replace(" ", ",").split(","):
        if not item:
            continue
        name, sep, value = item.partition("=")
        try:
            amount = float(value)
        except ValueError:
            amount = -1.0
        if not sep or not name or amount <= 0:
            raise InputError(f"--resources expects NAME=AMOUNT[,NAME=AMOUNT] such as GPU=1, got {text!r}")
        resources[name] = amount
    return resources


def resolve_scheduler(scheduler: str | None = None, resources: str | Mapping[str, float] | None = None) -> SchedulerSpec | None:
    """The cluster to use: ``scheduler`` if given, else ``$SOUNDMAP_SCHEDULER``, else None (run here).

    ``local:N`` → N local worker processes; anything else is a scheduler address.
    """
    text = (scheduler if scheduler is not None else os.environ.get(SCHEDULER_ENV, "")).strip()
    parsed = parse_resources(resources) if isinstance(resources, str) or resources is None else dict(resources)
    if not text:
        if parsed:
            raise InputError("--resources needs --scheduler (or $SOUNDMAP_SCHEDULER): resources are Dask worker resources")
        return None
    if text.lower().startswith(LOCAL_PREFIX):
        count = text[len(LOCAL_PREFIX):]
        if not count.isdigit() or int(count) < 1:
            raise InputError(f"--scheduler local:N needs a positive number of worker processes, got {text!r}")
        return SchedulerSpec(local_workers=int(count), resources=parsed)
    if text.lower() == "local":
        return SchedulerSpec(local_workers=max(1, os.cpu_count() or 1), resources=parsed)
    if any(ch.isspace() for ch in text) or ":" not in text:
        raise InputError(f"--scheduler expects local:N or a scheduler address such as tcp://host:8786, got {text!r}")
    return SchedulerSpec(address=text, resources=parsed)


def _torch_threads(workers: int) -> str:
    """Threads per worker process so that N processes together use the machine's cores once."""
    return str(max(1, (os.cpu_count() or 1) // max(1, workers)))


@contextlib.contextmanager
def connect(spec: SchedulerSpec) -> Iterator[Any]:
    """A ``distributed.Client`` for ``spec`` (starting and stopping a LocalCluster for ``local:N``).

    An unreachable address is a one-line InputError, not a 30-line traceback.
    """
    from distributed import Client, LocalCluster

    if spec.is_local:
        threads = _torch_threads(int(spec.local_workers or 1))
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "SOUNDMAP_QUIET": "1"}
        with LocalCluster(n_workers=spec.local_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address="127.0.0.1:0", resources=dict(spec.resources) or None, env=env,
                          silence_logs=50) as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(spec.address, timeout="20s")
    except (OSError, TimeoutError) as err:
        raise InputError(f"cannot reach the Dask scheduler at {spec.address} ({type(err).__name__}); check "
                         "--scheduler / $SOUNDMAP_SCHEDULER and that `dask scheduler` is running") from None
    with client:
        yield client


# --------------------------------------------------------------------------- per-worker state

_LOCK = threading.Lock()
_MODELS: dict[tuple[str, str, str], Any] = {}
_LOADS: list[tuple[str, str, str]] = []


@dataclass(frozen=True)
class ModelRef:
    """How a worker finds the model: a directory every worker can read, and the weights it must hold."""

    directory: str
    weights_sha256: str
    device: str = "auto"


def worker_model(ref: ModelRef) -> Any:
    """The model of ``ref``, loaded once per worker process and kept for the next tasks.

    A worker whose copy of the directory holds other weights (a stale shared path, a half-synced
    node) fails with ModelError rather than writing features from another model.
    """
    from ..models.soundscape import load_model

    key = (ref.directory, ref.weights_sha256, ref.device)
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = load_model(Path(ref.directory), device=ref.device)
            if ref.weights_sha256 and model.weights_sha256 != ref.weights_sha256:
                raise ModelError(f"worker found other weights in {ref.directory} ({model.weights_sha256[:12]}, "
                                 f"not {ref.weights_sha256[:12]}); give every worker the same model directory")
            _MODELS[key] = model
            _LOADS.append(key)
        return model


def loaded_models() -> list[tuple[str, str, str]]:
    """(directory, sha256, device) of every model load in this process, in order (tests and
    benchmarks read it on every worker with ``client.run``)."""
    return list(_LOADS)


def model_directory(model: Any, *, cache_dir: str | os.PathLike | None = None, spill_dir: Path | None = None) -> Path:
    """A directory holding ``model`` that workers can load: the installed model of that name, a
    model directory path, or (for a model built in memory) ``model`` saved under ``spill_dir``."""
    from ..models.soundscape import CONFIG_FILE
    from ..paths import model_dir

    if model is not None and not hasattr(model, "encode_image"):
        candidate = Path(str(model)).expanduser()
        if (candidate / CONFIG_FILE).is_file():
            return candidate.resolve()
        installed = model_dir(cache_dir) / str(model)
        if (installed / CONFIG_FILE).is_file():
            return installed.resolve()
        raise ModelError(f"model {str(model)!r} is not installed; see `soundmap models list`")
    installed = model_dir(cache_dir) / str(model.name)
    if (installed / CONFIG_FILE).is_file():
        from ..models.soundscape import read_config

        if read_config(installed)[1] == model.weights_sha256:
            return installed.resolve()
    if spill_dir is None:
        raise ModelError(f"model {model.name} has no directory the workers can load; save it first or pass its name")
    target = spill_dir / str(model.weights_sha256 or model.name)[:16]
    if not (target / CONFIG_FILE).is_file():
        model.save(target)
    return target.resolve()


__all__ = ["ModelRef", "SCHEDULER_ENV", "SchedulerSpec", "connect", "loaded_models", "model_directory",
           "parse_resources", "resolve_scheduler", "worker_model"]
