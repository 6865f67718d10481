"""``m3leo-train`` is installed: its help lists the paper's tasks and the run options."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_m3leo_train_is_installed_and_documents_its_options() -> None:
    command = Path(sys.executable).parent / "m3leo-train"
    result = subprocess.run([command, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for option in (
        "--task",
        "esawc",
        "agb",
        "ghsbuilts",
        "--resume",
        "--seed",
        "--device",
        "--reader-threads",
    ):
        assert option in result.stdout
