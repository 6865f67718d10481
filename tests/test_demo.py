"""`make demo` end to end: grid, three fetches from the sample rasters, a quicklook PNG."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end_and_resumes(tmp_path: Path, shared_data: Path) -> None:
    env = {**os.environ, "M3LEO_DEMO_OUT": str(tmp_path)}
    script = [sys.executable, str(REPO_ROOT / "scripts" / "demo.py")]
    first = subprocess.run(script, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    # demo-landcover's site (São Tomé) is not in the demo AOI: it is not fetched for nothing.
    assert "demo-landcover" not in first.stdout and "63 no-source" not in first.stdout
    chips = sorted((tmp_path / "data" / "demo").glob("*/*.tif"))
    assert {chip.parent.name for chip in chips} == {"demo-dem", "demo-s1", "demo-s2"}
    with Image.open(tmp_path / "quicklook.png") as picture:
        assert picture.width > 1000 and picture.height > 300
    assert "run map:" in first.stdout and "(63 tiles, 3 datasets)" in first.stdout
    assert (tmp_path / "map.html").read_text().lower().startswith("<!doctype html>")
    for dataset in ("demo-dem", "demo-s1", "demo-s2"):  # fetch left a STAC catalog in each
        assert (tmp_path / "data" / "demo" / dataset / "collection.json").exists()
    mtimes = {chip: chip.stat().st_mtime_ns for chip in chips}
    # the training smoke test says what it is, learns something, and leaves its pictures
    assert "pipeline smoke test" in first.stdout
    found = re.search(r"test RMSE (\d+) .* predicting the train mean scores (\d+)", first.stdout)
    assert found and int(found.group(1)) < int(found.group(2)), first.stdout
    run = tmp_path / "runs" / "demo-s2-swir"
    assert (run / "curves.png").exists() and (run / "predictions.png").exists()

    again = subprocess.run(script, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "0 ok" in again.stdout and "already done" in again.stdout
    assert {chip: chip.stat().st_mtime_ns for chip in chips} == mtimes
    assert "resuming" in again.stdout and found.group(0) in again.stdout  # nothing left to train
