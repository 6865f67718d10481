"""SIGTERM (a batch scheduler's stop) ends a run as Ctrl-C does: one line, exit 143, the
finished chips kept, the lock released, and a rerun resumes without redoing them."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from helpers.cli import cli_env
from helpers.rome import ROME, dem_recipe, write_grid
from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.dataset.lock import LOCK_NAME
from m3leo_tiles.dataset.manifest import MANIFEST_NAME, read_manifest
from m3leo_tiles.grid.tile import Tile

pytestmark = pytest.mark.slow


def test_sigterm_stops_cleanly_keeps_chips_and_releases_the_lock(
    tmp_path: Path, shared_data: Path
) -> None:
    import subprocess
    import sys

    origin = Tile.from_point(12.5, 42.0)
    tiles = [Tile(origin.zone, origin.row, origin.col + c) for c in range(-1, 2)]
    tiles += [Tile(origin.zone, origin.row + 1, origin.col + c) for c in range(-1, 2)]
    grid = write_grid(tmp_path / "g.geojson", tiles)
    recipe = dem_recipe(tmp_path, lines=[f"params: {{inputs: {shared_data / ROME}}}"])
    recipe.write_text(recipe.read_text().replace("source: raster", "source: slow-raster"))
    args = ["fetch", recipe, "--grid", grid, "--out", tmp_path / "data", "--workers", "1", "-q"]
    entry = "import sys; from m3leo_tiles.cli.tiles import main; sys.argv[0]='m3leo-tiles'; main()"
    env = cli_env(M3LEO_TEST_SLEEP="0.5")
    process = subprocess.Popen([sys.executable, "-c", entry, *map(str, args)], cwd=tmp_path,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
    folder = tmp_path / "data" / "t" / "dem"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(list(folder.glob("*.tif"))) < 1:
            assert process.poll() is None, process.communicate()
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("terminated (SIGTERM):"), stderr
    assert "leaked" not in stderr and "Traceback" not in stderr
    assert not (folder / LOCK_NAME).exists()
    kept = {p.stem: p.stat().st_mtime_ns for p in folder.glob("*.tif")}
    assert kept
    # A chip written just before the signal may have no manifest row yet: the rerun adopts it.
    again = subprocess.run([sys.executable, "-c", entry, *map(str, args)], cwd=tmp_path,
                           env=cli_env(M3LEO_TEST_SLEEP="0"), capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert again.returncode == 0, again.stderr
    rows = read_manifest(folder / MANIFEST_NAME)
    assert set(kept) <= set(rows) and all(rows[t].status is TileStatus.OK for t in kept)
    assert {t: (folder / f"{t}.tif").stat().st_mtime_ns for t in kept} == kept  # not redone
