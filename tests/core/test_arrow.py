"""Arrow's CSV reads keep off Arrow's CPU thread pool (core.arrow): a CLI process that
started it can abort at exit (apache/arrow#34314)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.dataset.manifest import ManifestRow, is_compact, write_manifest

COUNT_THREADS = """
import os, sys
from pathlib import Path
import pyarrow  # noqa: F401  (its import may start threads of its own: count after it)
from m3leo_tiles.dataset.manifest import outcome_table, read_manifest
from m3leo_tiles.grid.files import read_grid_ids

def threads():
    return len(os.listdir("/proc/self/task"))

before = threads()
ids = outcome_table(Path(sys.argv[1])).column("identifier")
lean = read_manifest(Path(sys.argv[1]), lean=True)
grid = read_grid_ids(Path(sys.argv[2]))
assert len(ids) == len(lean) == 500 and len(grid) == 63, (len(ids), len(lean), len(grid))
print(threads() - before)
"""


def test_reading_a_manifest_and_a_grid_starts_no_arrow_threads(tmp_path: Path) -> None:
    from m3leo_tiles.grid.build import make_grid

    manifest = tmp_path / "manifest.csv"
    ids = [f"33N_{1000 + i // 25:04d}_{i % 25:03d}" for i in range(500)]
    write_manifest(manifest, {
        i: ManifestRow(i, TileStatus.OK, "", ("a.tif",), 0.1, "h", bytes=10, crc32="0")
        for i in ids})  # fmt: skip
    assert is_compact(manifest)  # the Arrow path, as after every finished run
    grid = make_grid("demo", tmp_path / "grid").path  # with splits.csv, read by Arrow
    done = subprocess.run([sys.executable, "-c", COUNT_THREADS, str(manifest), str(grid)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Arrow's IO pool starts one reader thread for any read; its CPU pool (one thread per core
    # and more, what a threaded CSV read starts) is never started
    assert int(done.stdout) <= 1
