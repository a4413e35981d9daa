"""The ``soundmap`` command: a Typer app whose command groups live in sibling modules.

User errors (:class:`soundmap.errors.SoundmapError`) become one line on stderr and exit code 2;
Ctrl-C exits 130 without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import importlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from .. import __version__
from ..errors import SoundmapError

app = typer.Typer(
    name="soundmap",
    help="What does this place sound like? Zero-shot soundscape maps (PSM / GeoCLAP / Sat2Sound) as GeoTIFFs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Each module defines ``register(app)`` adding its commands or sub-apps.
COMMAND_MODULES: tuple[str, ...] = (
    "tiles",
    "embed",
    "query",
    "ecology",
    "models",
    "estimate",
    "train",
    "doctor",
    "explore",
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"soundmap {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """What does this place sound like? Zero-shot soundscape maps (PSM / GeoCLAP / Sat2Sound) as GeoTIFFs."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"{__package__}.{_name}").register(app)


def run(argv: list[str] | None = None) -> int:
    """Console-script entry point: run the app, turning user errors into one line and exit code 2."""
    try:
        result = app(args=argv, prog_name="soundmap", standalone_mode=False)
        # typer turns Ctrl-C into Exit(130), which non-standalone mode *returns* instead of raising
        if isinstance(result, int) and not isinstance(result, bool) and result:
            if result == 130:
                print("soundmap: interrupted", file=sys.stderr)
            return result
    except SoundmapError as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"soundmap: error: {message}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("soundmap: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # typer.Exit / click usage errors already printed their message
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    except OSError as exc:
        if not _is_path_problem(exc):
            raise
        print(f"soundmap: error: {_path_problem_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # click usage errors in non-standalone mode
        import click

        # typer >= 0.2x vendors click as typer._click: its usage errors are not click's classes.
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare command group: its help is the answer
            exc.show()  # type: ignore[attr-defined]
            return int(getattr(exc, "exit_code", 2) or 2)
        if isinstance(exc, (typer.TyperException, click.exceptions.ClickException)) and hasattr(exc, "format_message"):
            print(f"soundmap: error: {_usage_line(exc)}", file=sys.stderr)
            return int(getattr(exc, "exit_code", 2) or 2)
        if isinstance(exc, typer.Abort):
            print("soundmap: aborted", file=sys.stderr)
            return 130
        if isinstance(exc, click.exceptions.Abort):
            print("soundmap: aborted", file=sys.stderr)
            return 130
        raise
    return 0


def _usage_line(exc: Exception) -> str:
    """A click usage error (unknown option, missing or malformed value) as one line pointing at ``--help``."""
    message = " ".join(exc.format_message().split()).rstrip(".")  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    return f"{message}; see `{ctx.command_path} --help`" if ctx is not None else message


#: OS errors about a path the user chose (--out, --workspace, --cache-dir...): their fault, not a bug.
_PATH_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.EEXIST, errno.ENOTDIR, errno.EISDIR,
                          errno.EROFS, errno.ENOSPC, errno.EDQUOT})


def _is_path_problem(exc: OSError) -> bool:
    return exc.filename is not None and exc.errno in _PATH_ERRNOS


def _is_scratch(path: Path) -> bool:
    """A hidden temporary soundmap makes beside an output (``.soundmap-scratch-*``, ``.map.tif.*.tmp.tif``):
    the user chose its directory, not its name, so that directory is what to name."""
    return path.name.startswith(".soundmap-") or (path.name.startswith(".") and ".tmp" in path.name)


def _path_problem_line(exc: OSError) -> str:
    """``cannot use PATH (reason)`` plus what to check: the files soundmap writes are the user's to place."""
    reason = (exc.strerror or type(exc).__name__).lower()
    path = Path(exc.filename)
    where = f"write in {path.parent}" if _is_scratch(path) else f"use {path}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"cannot {where} ({reason}); free some space or choose another --cache-dir / --out"
    return (f"cannot {where} ({reason}); check that --out, --workspace and --cache-dir point to "
            "directories you can write to")


def main() -> None:
    """``python -m soundmap`` entry point."""
    sys.exit(run())
