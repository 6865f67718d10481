"""``m3leo-train`` is installed and says plainly that training is not built yet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_m3leo_train_is_installed_and_honest() -> None:
    command = Path(sys.executable).parent / "m3leo-train"
    result = subprocess.run([command], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "not built yet" in result.stderr and "Traceback" not in result.stderr
