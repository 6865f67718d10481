"""Run the ``m3leo-tiles`` command in a subprocess, as a user does.

The subprocess (and the dask workers it starts) load ``helpers/site/sitecustomize.py``, which
registers the test-only adapters; any PYTHONPATH already set (a checkout's ``src``) is kept
after it, so the code under test is the one this test run imports.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HELPERS = Path(__file__).resolve().parent
CLI = Path(sys.executable).parent / "m3leo-tiles"


def cli_env(**extra: str) -> dict[str, str]:
    paths = [str(HELPERS / "site"), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p), **extra)


def run_cli(args, *, cwd: Path, timeout: float = 120, env: dict[str, str] | None = None,
            background: bool = False):  # fmt: skip
    command = [str(CLI), *map(str, args)]
    environment = env if env is not None else cli_env()
    if background:
        return subprocess.Popen(command, cwd=cwd, env=environment, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip
