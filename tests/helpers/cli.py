"""Run the ``m3leo-tiles`` command in a subprocess, as a user does.

The subprocess (and the dask workers it starts) have ``helpers/site`` on their path: its
dist-info declares the test-only adapters (entry points) and its ``sitecustomize.py`` makes
``helpers`` importable; any PYTHONPATH already set (a checkout's ``src``) is kept after it, so
the code under test is the one this test run imports.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

HELPERS = Path(__file__).resolve().parent
CLI = Path(sys.executable).parent / "m3leo-tiles"


def cli_env(**extra: str) -> dict[str, str]:
    paths = [str(HELPERS / "site"), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p), **extra)


def ctrl_c_as_a_terminal_gives() -> None:
    """In a child before it runs: SIGINT back to its default, so that Python turns it into
    KeyboardInterrupt. A test run started in the background by a shell without job control
    inherits SIGINT ignored, and Python keeps an ignored SIGINT ignored: the Ctrl-C tests
    would then test nothing a user's terminal does."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(args, *, cwd: Path, timeout: float = 120, env: dict[str, str] | None = None,
            background: bool = False):  # fmt: skip
    command = [str(CLI), *map(str, args)]
    environment = env if env is not None else cli_env()
    if background:
        return subprocess.Popen(command, cwd=cwd, env=environment, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                preexec_fn=ctrl_c_as_a_terminal_gives)  # fmt: skip
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


def call_cli(capsys, *args: object) -> tuple[int, str, str]:
    """In-process ``m3leo-tiles ARGS`` (fast, for checks that start no cluster):
    (exit code, stdout, stderr); ``capsys`` is pytest's fixture."""
    from m3leo_tiles.cli.tiles import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 2)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(code: int, err: str, *needles: str) -> str:
    """Exit 2, exactly one ``error: ...`` line on stderr, no traceback; returns the line."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
