"""The ``m3leo-tiles`` command: a thin typer layer over the Python API.

Each command parses options, calls one API function and prints a summary. Errors the user can
act on (``M3leoError``) become one line on stderr and exit code 2 (or their own code); nothing
here holds logic a notebook user could not reach through the API.
"""

from __future__ import annotations

import sys

import typer

from m3leo_tiles import __version__
from m3leo_tiles.errors import M3leoError

app = typer.Typer(
    name="m3leo-tiles",
    help=(
        "Build ML-ready Earth-observation datasets on an exact global 4480 m UTM tile grid.\n\n"
        "Typical session: `m3leo-tiles grid --aoi conus`, then "
        "`m3leo-tiles fetch esawc --aoi conus`, then `m3leo-tiles status`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# --- grid commands (grid, aois) ------------------------------------------------------------

# --- end grid commands ---------------------------------------------------------------------


# --- engine commands (recipes, fetch, status) ----------------------------------------------

# --- end engine commands -------------------------------------------------------------------


@app.callback()
def _root() -> None:
    """Build ML-ready Earth-observation datasets on an exact global 4480 m UTM tile grid."""


@app.command()
def version() -> None:
    """Print the installed m3leo-tiles version."""
    typer.echo(__version__)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning user errors into one line and an exit code.

    Exit codes: 0 all done, 1 some tiles failed (recorded), 2 usage or configuration error
    (typer reports bad options itself, also with 2), 130 interrupted.
    """
    try:
        app(args=argv)
    except M3leoError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted; finished work is kept, rerun the same command to resume", err=True)
        sys.exit(130)
