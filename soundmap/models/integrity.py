"""Checks that an installed model's weights are the ones recorded, and usable, at load time.

Two things can make a model silently wrong: its ``model.safetensors`` changed after install (a
flipped bit, an edit, a different file copied in) while ``config.json`` still records the old
SHA-256, or its tensors hold NaN/Inf (every score becomes NaN and the map all nodata). Both are
checked when a model is loaded, but cheaply: hashing a 1 GB file takes seconds, so the result is
remembered in a stamp file (``.verified`` beside the weights) keyed by the weights file's size and
modification time. A file that did not change since its last check is not hashed again; any
change to it (which moves its mtime) makes the next load check it again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ModelError

#: The stamp recording the last successful check of a model directory's weights.
STAMP_FILE = ".verified"


def _signature(weights: Path) -> dict[str, int]:
    stat = weights.stat()
    return {"size": int(stat.st_size), "mtime_ns": int(stat.st_mtime_ns)}


def weights_verified(weights: Path, sha256: str) -> bool:
    """True when the stamp says ``weights`` (at its current size and mtime) had ``sha256`` and
    finite tensors when last checked."""
    stamp = weights.parent / STAMP_FILE
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(recorded, dict) and recorded == {**_signature(weights), "sha256": sha256}


def verify_weights_file(weights: Path, sha256: str) -> None:
    """ModelError (one line) when ``weights`` no longer has its recorded ``sha256``."""
    from ..download import sha256_of

    if sha256 and sha256_of(weights) != sha256:
        raise ModelError(f"{weights} does not match the SHA-256 recorded in its config.json (the file changed "
                         "after install); re-install it with `soundmap models pull` or re-import it")


def check_finite(state: Mapping[str, Any], weights: Path) -> None:
    """ModelError naming the first tensor with NaN or Inf values (a model that scores NaN)."""
    import torch

    for key, tensor in state.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelError(f"{weights} has non-finite values (NaN/Inf) in tensor {key}; the model is "
                             "damaged: re-install it with `soundmap models pull` or re-import it")


def record_verified(weights: Path, sha256: str) -> None:
    """Remember that ``weights`` passed both checks (best effort: a read-only install is checked
    again next time, never refused)."""
    from ..atomic import write_text_atomic

    try:
        write_text_atomic(weights.parent / STAMP_FILE, json.dumps({**_signature(weights), "sha256": sha256}))
    except OSError:
        pass


def check_weights(weights: Path, sha256: str, state: Mapping[str, Any]) -> bool:
    """Both checks, unless the stamp says this very file passed them already; True when the
    checks ran (False: skipped thanks to the stamp)."""
    if weights_verified(weights, sha256):
        return False
    verify_weights_file(weights, sha256)
    check_finite(state, weights)
    record_verified(weights, sha256)
    return True


def forget_verified(directory: str | os.PathLike) -> None:
    """Drop a model directory's stamp (the next load checks its weights again)."""
    (Path(directory) / STAMP_FILE).unlink(missing_ok=True)
