"""Which torch device a command runs on: the one implementation of ``--device``.

torch is imported inside the function (it costs seconds), so modules that only *mention* devices
(the CLI, the pipeline's planning code) stay importable without it.
"""

from __future__ import annotations

from typing import Any

from soundmap.errors import InputError


def resolve_device(device: Any = "auto") -> Any:
    """``auto`` (or None) → CUDA when available, else CPU; ``cpu``/``cuda[:N]``/a ``torch.device``
    as given. An unknown name or a GPU torch cannot see is a one-line InputError naming ``--device``."""
    import torch

    if isinstance(device, torch.device):
        resolved = device
    elif device is None or str(device).strip().lower() in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(str(device).strip().lower())
        except (RuntimeError, TypeError):
            raise InputError(f"--device expects auto, cpu or cuda[:N], got {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device} asked for a GPU but torch sees no CUDA device; use --device cpu or auto")
    return resolved
