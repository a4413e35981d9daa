"""The package's import arrows point one way (docs/architecture.md, "Layers"):

    cli → explore → pipeline → {query, train, ecology} → {store, models, tiles, geo, raster, preprocess}

A module may import its own layer or any layer below it, never one above. Besides the ranks:
``models`` never imports ``tiles`` or ``cli``; ``geo`` never imports torch; ``store`` is storage
only (no model, no rendering, no scheduling). The test reads every module's import statements
from its AST (nothing is imported), at module level and inside functions, and names every arrow
that points the wrong way.

The commands that need no model (``--help``, ``models list``, ``tiles``) must not import torch at
all; that is behaviour, checked by running them in a subprocess (not by reading source).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "soundmap"

#: Rank of each top-level part of the package: an import may go to an equal or lower rank.
#: ``distributed`` is the cluster executor of the pipeline's workflows, ``estimate`` times a whole
#: run: both sit beside ``pipeline``. The shared helpers (errors, progress, paths...) are rank 0.
RANKS: dict[str, int] = {
    "cli": 5,
    "explore": 4,
    "pipeline": 3, "distributed": 3, "estimate": 3,
    "query": 2, "train": 2, "ecology": 2,
    "store": 1, "models": 1, "tiles": 1, "geo": 1, "raster": 1, "preprocess": 1,
    "errors": 0, "progress": 0, "paths": 0, "atomic": 0, "_lazy": 0, "families": 0, "download": 0,
    "hub": 0, "scratch": 0, "__init__": 0, "__main__": 6,
}

#: Arrows forbidden although the ranks allow them (or within a rank): part → parts it never imports.
FORBIDDEN: dict[str, set[str]] = {
    "models": {"tiles", "cli"},
    "geo": {"models", "tiles", "store", "preprocess", "raster"},
    "store": {"models", "tiles", "preprocess", "raster"},
}

#: Third-party modules a part never imports (at any level).
FORBIDDEN_EXTERNAL: dict[str, set[str]] = {"geo": {"torch"}, "store": {"torch"}}


@dataclass(frozen=True)
class Arrow:
    source: str          #: dotted module that imports
    target: str          #: dotted module imported (``soundmap.x.y`` or a third-party top name)
    line: int
    module_level: bool

    def __str__(self) -> str:
        where = "module level" if self.module_level else "in a function"
        return f"{self.source}:{self.line} imports {self.target} ({where})"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """Absolute targets of a ``from … import …`` (relative ones resolved against ``module``)."""
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    if node.module is None:  # ``from . import x``: x is a submodule (or a name of the package)
        return [f"{prefix}.{alias.name}" for alias in node.names]
    return [prefix]


def _type_checking_lines(tree: ast.Module) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks (annotations only; they never run)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def arrows(path: Path) -> list[Arrow]:
    """Every import statement of one file, module level and function level."""
    module = module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_lines(tree)
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if node.lineno in skipped if hasattr(node, "lineno") else False:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            targets = _resolve(module, path.name == "__init__.py", node)
        else:
            continue
        found += [Arrow(module, t, node.lineno, id(node) in top_level) for t in targets]
    return found


def part_of(dotted: str) -> str | None:
    """Top-level part of the package (``soundmap.store.embeddings`` → ``store``), None outside it."""
    pieces = dotted.split(".")
    if pieces[0] != "soundmap":
        return None
    if len(pieces) == 1:
        return "__init__"
    is_module = pieces[1] in RANKS or (PACKAGE / pieces[1]).is_dir() or (PACKAGE / f"{pieces[1]}.py").is_file()
    return pieces[1] if is_module else "__init__"  # ``from soundmap import __version__``


def violations(all_arrows: list[Arrow]) -> list[str]:
    bad = []
    for arrow in all_arrows:
        source = part_of(arrow.source)
        target = part_of(arrow.target)
        assert source in RANKS, f"{arrow.source} is in no layer; add {source!r} to RANKS"
        if target is None:
            if arrow.target.split(".")[0] in FORBIDDEN_EXTERNAL.get(source, set()):
                bad.append(f"{arrow}: {source} never imports {arrow.target}")
            continue
        assert target in RANKS, f"{arrow.target} is in no layer; add {target!r} to RANKS"
        if RANKS[target] > RANKS[source]:
            bad.append(f"{arrow}: {source} (rank {RANKS[source]}) imports up into {target} (rank {RANKS[target]})")
        elif target in FORBIDDEN.get(source, set()):
            bad.append(f"{arrow}: {source} never imports {target}")
    return bad


def package_arrows() -> list[Arrow]:
    return [a for path in sorted(PACKAGE.rglob("*.py")) for a in arrows(path)]


def test_no_import_points_up() -> None:
    bad = violations(package_arrows())
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_checker_sees_upward_and_forbidden_arrows(tmp_path: Path) -> None:
    """The checker itself: a store module importing the pipeline (rank up), a models module
    importing tiles (same rank, forbidden), geo importing torch inside a function."""
    fake = [Arrow("soundmap.store.x", "soundmap.pipeline.embed", 3, True),
            Arrow("soundmap.models.x", "soundmap.tiles.render", 4, False),
            Arrow("soundmap.geo.grid", "torch", 5, False),
            Arrow("soundmap.query.x", "soundmap.store.embeddings", 6, True)]
    bad = violations(fake)
    assert len(bad) == 3 and not any("soundmap.query.x" in line for line in bad)


def test_relative_imports_resolve() -> None:
    node = ast.parse("from ..store.embeddings import X").body[0]
    assert _resolve("soundmap.pipeline.embed", False, node) == ["soundmap.store.embeddings"]
    node = ast.parse("from . import registry").body[0]
    assert _resolve("soundmap.models", True, node) == ["soundmap.models.registry"]
    node = ast.parse("from .. import __version__").body[0]
    assert _resolve("soundmap.cli.main", False, node) == ["soundmap.__version__"]


def test_function_level_imports_are_seen() -> None:
    """Upward imports hidden in a function body count as much as module-level ones."""
    tree = [a for a in package_arrows() if not a.module_level]
    assert tree, "no function-level import found: the walker misses them"


_PROBE = """
import contextlib, io, json, sys
from soundmap.cli.main import run
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = run(json.loads(sys.argv[1]))
heavy = sorted(m for m in ("torch", "transformers", "rasterio") if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy, "out": out.getvalue()}))
"""


@pytest.mark.parametrize("argv", [["--help"], ["models", "list"], ["models", "list", "--available"],
                                  ["tiles", "--help"], ["embed", "--help"], ["query", "--help"]])
def test_commands_without_a_model_never_import_torch(argv: list[str], installed_tiny_model: str) -> None:
    """``--help``, ``models list`` (with a model installed, so its config is read) and the
    commands' help run without torch in the process (importing it costs seconds). Run in a fresh
    interpreter: this process has torch already."""
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(argv)], capture_output=True, text=True,
                          env=dict(os.environ), timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, done.stderr
    if argv == ["models", "list"]:
        assert installed_tiny_model in result["out"]
    assert "torch" not in result["heavy"], f"`soundmap {' '.join(argv)}` imported {result['heavy']}"
