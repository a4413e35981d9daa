"""``soundmap doctor``: verify the tile cache, the workspace's embeddings and fused caches, and the
installed models; ``--repair`` repairs what can be repaired. Thin: :mod:`soundmap.doctor` does it."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import CacheError
from ..progress import info
from .common import CacheDirOpt, QuietOpt, WorkspaceOpt, apply_quiet

RepairOpt = Annotated[bool, typer.Option("--repair", help="Repair what was found (damaged chunks re-pended, undecodable tiles deleted, a damaged tile cache moved aside).")]


def register(app: typer.Typer) -> None:
    """Add the ``doctor`` command to the root app."""
    app.command("doctor")(doctor_command)


def doctor_command(workspace: WorkspaceOpt = None, cache_dir: CacheDirOpt = None, repair: RepairOpt = False,
                   quiet: QuietOpt = False) -> None:
    """Verify the tile cache, embeddings, fused caches and installed models end to end."""
    from ..pipeline.doctor import run_doctor
    from ..pipeline.workspace import Workspace

    apply_quiet(quiet)
    ws = Workspace.load(workspace) if workspace is not None or Workspace.exists(None) else None
    report = run_doctor(ws, cache_dir=cache_dir, repair=repair)
    for what in report.checked:
        info(f"checked {what}")
    for finding in report.findings:
        typer.echo(finding.line())
    repaired = len(report.findings) - len(report.unresolved)
    typer.echo(f"{len(report.checked)} checked, {len(report.findings)} problem(s), {repaired} repaired")
    if report.unresolved:
        hint = "run `soundmap doctor --repair`" if any(f.repairable for f in report.unresolved) else "see above"
        raise CacheError(f"{len(report.unresolved)} problem(s) left; {hint}")
