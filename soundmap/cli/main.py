"""The ``soundmap`` command: a Typer app whose command groups live in sibling modules.

User errors (:class:`soundmap.errors.SoundmapError`) become one line on stderr and exit code 2;
Ctrl-C exits 130 without a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import typer

from .. import __version__
from ..errors import SoundmapError

app = typer.Typer(
    name="soundmap",
    help="What does this place sound like? Zero-shot soundscape maps (PSM / GeoCLAP) as GeoTIFFs.",
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
    """What does this place sound like? Zero-shot soundscape maps (PSM / GeoCLAP) as GeoTIFFs."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"{__package__}.{_name}").register(app)


def run(argv: list[str] | None = None) -> int:
    """Console-script entry point: run the app, turning user errors into one line and exit code 2."""
    try:
        result = app(args=argv, standalone_mode=False)
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
    except Exception as exc:  # click usage errors in non-standalone mode
        import click

        # typer >= 0.2x vendors click as typer._click: its usage errors are not click's classes.
        if isinstance(exc, typer.TyperException) and hasattr(exc, "show"):
            exc.show()
            return int(getattr(exc, "exit_code", 2) or 2)
        if isinstance(exc, typer.Abort):
            print("soundmap: aborted", file=sys.stderr)
            return 130

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return 2
        if isinstance(exc, click.exceptions.Abort):
            print("soundmap: aborted", file=sys.stderr)
            return 130
        raise
    return 0


def main() -> None:
    """``python -m soundmap`` entry point."""
    sys.exit(run())
