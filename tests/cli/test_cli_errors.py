"""``cli.common.run_app``: the one way both commands end on an error, whatever raised it."""

from __future__ import annotations

import sys

import pytest
import typer

from helpers.cli import assert_one_error_line
from m3leo_tiles.cli.common import UsageError, exit_code_of_interrupt, run_app
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.core.signals import Terminated


def app_raising(error: BaseException | None) -> typer.Typer:
    """A one-command app that raises ``error`` (or succeeds, returning nothing)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.command()
    def run(count: int = 1) -> None:
        if error is not None:
            raise error

    return app


def ended(capsys: pytest.CaptureFixture, error: BaseException | None, *args: str,
          **options) -> tuple[int, str]:  # fmt: skip
    """(exit code, stderr) of ``run_app`` over ``app_raising(error)``."""

    def on_interrupt(stop: KeyboardInterrupt) -> int:
        print("stopped", file=sys.stderr)
        return exit_code_of_interrupt(stop)

    with pytest.raises(SystemExit) as done:
        run_app(app_raising(error), list(args), "tool", on_interrupt=on_interrupt, **options)
    return done.value.code, capsys.readouterr().err


def test_success_is_exit_0(capsys: pytest.CaptureFixture) -> None:
    assert ended(capsys, None) == (0, "")


def test_an_m3leo_error_is_one_masked_line_and_its_code(capsys: pytest.CaptureFixture) -> None:
    code, err = ended(capsys, ConfigError("bad root https://anna:secret@host/x"))
    line = assert_one_error_line(code, err, "bad root")
    assert "secret" not in line


def test_a_usage_mistake_is_one_line_with_the_help_hint(capsys: pytest.CaptureFixture) -> None:
    code, err = ended(capsys, None, "--count", "many")
    assert_one_error_line(code, err, "Invalid value for '--count'", "(see `tool --help`)")
    code, err = ended(capsys, None, "--count", "x", usage_message=lambda e, p: f"{p}: wrong")
    assert_one_error_line(code, err, "tool: wrong")
    code, err = ended(capsys, UsageError("said by the command"))
    assert_one_error_line(code, err, "said by the command")


def test_an_abort_is_said_once_as_an_interrupt(capsys: pytest.CaptureFixture) -> None:
    assert ended(capsys, typer.Abort()) == (130, "stopped\n")


def test_an_interrupt_inside_a_command_is_typers_silent_130(
    capsys: pytest.CaptureFixture,
) -> None:
    """Why ``fetch`` and ``m3leo-train`` catch their own interrupts (to say how to resume,
    and 143 for SIGTERM): typer ends any other command on Ctrl-C with 130 and no word."""
    assert ended(capsys, KeyboardInterrupt()) == (130, "")
    assert ended(capsys, Terminated("term")) == (130, "")


@pytest.mark.parametrize(("error", "code"), [(KeyboardInterrupt(), 130), (Terminated("t"), 143)])
def test_an_interrupt_outside_a_command_is_said_once_with_the_signal_code(
    capsys: pytest.CaptureFixture, error: BaseException, code: int
) -> None:
    def app(**_: object) -> None:  # stopped before typer runs a command (while starting)
        raise error

    with pytest.raises(SystemExit) as done:
        run_app(app, [], "tool", on_interrupt=exit_code_of_interrupt)  # type: ignore[arg-type]
    assert done.value.code == code
