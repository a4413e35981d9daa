"""bench/ scripts must not shadow installed packages.

bench/ is on ``sys.path`` for every script run from it and for the smoke tests that import them;
a ``bench/distributed.py`` once hid Dask's ``distributed`` package, so every Dask worker started
later in the same test session failed to start.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_no_bench_script_is_named_like_an_importable_module() -> None:
    saved = list(sys.path)
    try:
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
        clashes = [script.name for script in BENCH.glob("*.py")
                   if script.stem in sys.stdlib_module_names or importlib.util.find_spec(script.stem) is not None]
    finally:
        sys.path[:] = saved
    assert clashes == []
