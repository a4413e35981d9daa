"""Shared plumbing of the benchmarks: arguments, timing, and the one output format.

Every benchmark ends by printing one line per figure, ``name: value (target >= x)``, so that runs
can be compared with ``grep``/``diff``. Figures are ratios measured side by side in one run,
because these machines are noisy; absolute rates are printed for context only.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field


def parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes: finishes in a few minutes on 2 CPU cores")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    return p


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    """Fastest wall time of ``repeats`` calls (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@dataclass
class Figures:
    """Collects figures and prints them in the comparable one-line format."""

    title: str
    rows: list[tuple[str, float, str]] = field(default_factory=list)

    def add(self, name: str, value: float, target: str = "") -> None:
        self.rows.append((name, value, target))

    def print(self) -> None:
        print(f"# {self.title} — {platform.node()} {platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d %H:%M')}")
        for name, value, target in self.rows:
            suffix = f" (target {target})" if target else ""
            shown = str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:.4g}"
            print(f"{name}: {shown}{suffix}")
