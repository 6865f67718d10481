"""Run the CLI as a user would: in a child process, or in-process for fast error checks.

The child process imports this checkout's ``src`` first (not whatever ``m3leo-tiles`` script is
installed), plus the test adapters of ``tests/helpers/site``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SITE = REPO / "tests" / "helpers" / "site"
ENTRY = "import sys; from m3leo_tiles.cli import main; sys.argv[0] = 'm3leo-tiles'; main()"


def child_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(REPO / "src"), str(SITE)])
    return dict(os.environ, PYTHONPATH=path, **extra)


def run_cli(*args: object, cwd: Path, timeout: float = 120, **extra_env: str):
    """``m3leo-tiles ARGS`` in ``cwd``; returns the CompletedProcess (text)."""
    return subprocess.run(
        [sys.executable, "-c", ENTRY, *map(str, args)],
        cwd=cwd,
        env=child_env(**extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_cli(*args: object, cwd: Path, **extra_env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", ENTRY, *map(str, args)],
        cwd=cwd,
        env=child_env(**extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def call_cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """In-process ``m3leo-tiles ARGS``: (exit code, stdout, stderr)."""
    from m3leo_tiles.cli import main

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
