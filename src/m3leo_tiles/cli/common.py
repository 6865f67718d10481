"""What both commands (``m3leo-tiles``, ``m3leo-train``) share: how errors end a run, and help
that names values as people write them.

One convention for every way a command can stop: an ``M3leoError`` or a usage mistake is one
``error: ...`` line on stderr and exit 2 (or the error's own code), never a box or a
traceback; Ctrl-C is one line and exit 130, SIGTERM (``core.signals.Terminated``) one line and
exit 143. The apps differ only in how they word a usage mistake (``usage_message``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import typer

try:  # typer 0.2x vendors click; its exceptions are what a bad option raises
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover (a typer that uses click itself)
    from click.exceptions import ClickException, UsageError

from m3leo_tiles.core.errors import M3leoError
from m3leo_tiles.core.redact import redact

__all__ = [
    "ClickException",
    "UsageError",
    "exit_code_of_interrupt",
    "metavars_for_people",
    "one_line",
    "run_app",
    "say_error",
]


def metavars_for_people() -> None:
    """Help that names values as people write them: ``--aoi NAME``, ``RECIPE``.

    typer 0.2x prints each parameter's Python type (``<str>``, ``<bool>`` after every switch,
    ``<list[str]>``) and a required argument as ``{recipe}``. Every option here has its own
    metavar; this drops the type after switches and arguments and the braces. It patches
    typer's parameter class, so it holds for every app of this package once imported.
    """
    try:
        from typer import core
    except ImportError:  # pragma: no cover
        return
    parameter = getattr(core, "_TyperParameter", None)
    argument = getattr(core, "TyperArgument", None)
    if parameter is None or argument is None or not hasattr(parameter, "display_type"):
        return
    if getattr(parameter.display_type, "_m3leo", False):
        return  # patched already (both apps imported)
    original = parameter.display_type

    def display_type(self: Any, ctx: Any) -> str:
        if isinstance(self, argument) or getattr(self, "is_flag", False):
            return ""
        if self.metavar:
            return str(self.metavar)
        shown = original(self, ctx)
        if "|" in shown:  # a choice: <train|val|test> -> train|val|test
            return shown.strip("<>")
        return str(self.name or "").upper()

    def usage_name(self: Any) -> str:
        name = str(self.metavar or self.name).upper()
        name = name if self.required else f"[{name}]"
        return f"{name}..." if self.nargs != 1 else name

    display_type._m3leo = True  # type: ignore[attr-defined]
    parameter.display_type = display_type
    if hasattr(argument, "_usage_display_name"):
        argument._usage_display_name = usage_name


def one_line(text: str) -> str:
    """click's messages may wrap; an ``error:`` line is one line."""
    return " ".join(text.split())


def say_error(message: str, code: int = 2) -> NoReturn:
    """Print ``error: MESSAGE`` (credentials masked) on stderr and exit ``code``."""
    typer.echo(f"error: {redact(message)}", err=True)
    sys.exit(code)


def exit_code_of_interrupt(error: BaseException) -> int:
    """130 for Ctrl-C, 143 for SIGTERM (``Terminated``): what a shell expects of the signal."""
    from m3leo_tiles.core.signals import Terminated

    return 143 if isinstance(error, Terminated) else 130


def _usage_hint(error: UsageError, prog_name: str) -> str:
    """m3leo-tiles' wording of a usage mistake: click's message and the command's --help."""
    where = error.ctx.command_path if error.ctx is not None else prog_name
    return f"{one_line(error.format_message())} (see `{where} --help`)"


ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"


def prefer_system_allocator() -> None:
    """Ask Arrow for the system allocator in a command's process, unless the user chose one.

    Arrow's default (mimalloc) keeps the memory a read freed for its own next use, so a
    driver that reads a manifest, a grid and writes a catalog holds each read's peak: on
    CONUS, a no-op fetch that writes the catalog peaked at 793 MB with it and 760 MB with the
    system allocator, which hands large buffers back (``bench/RESULTS.md``, scale). Set
    before pyarrow is imported (it reads the variable once); the workers dask starts inherit
    it."""
    os.environ.setdefault(ARROW_POOL_ENV, "system")


def run_app(
    app: typer.Typer,
    argv: list[str] | None,
    prog_name: str,
    on_interrupt: Callable[[KeyboardInterrupt], int],
    usage_message: Callable[[UsageError, str], str] = _usage_hint,
) -> NoReturn:
    """Run a typer app as a console entry point, ending as the convention above says.

    ``on_interrupt`` says in one line that the run stopped (and how to carry on) and returns
    the exit code; ``usage_message`` words a usage mistake (unknown option, bad value).
    """
    prefer_system_allocator()
    try:
        code = app(args=argv, prog_name=prog_name, standalone_mode=False)
    except UsageError as error:  # unknown option, bad choice such as --split vall
        say_error(usage_message(error, prog_name), 2)
    except ClickException as error:
        say_error(one_line(error.format_message()), error.exit_code)
    except typer.Abort:
        sys.exit(on_interrupt(KeyboardInterrupt()))
    except M3leoError as error:
        say_error(str(error), error.exit_code)
    except KeyboardInterrupt as error:  # Ctrl-C, or SIGTERM during a run (Terminated)
        sys.exit(on_interrupt(error))
    sys.exit(code if isinstance(code, int) else 0)
