"""Quicklook given bad arguments or damaged chips (issue #8 item 8): one line, exit 2, or a
warning and a picture of the rest; never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio

from helpers.cli import assert_one_error_line, call_cli
from m3leo_tiles.grid import Tile


def _chips(folder: Path, count: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    start = Tile.from_point(12.5, 42.0)
    paths = []
    for n in range(count):
        tile = Tile(start.zone, start.row, start.col + n)
        grid = tile.pixel_grid(448)
        path = folder / f"{tile.identifier}.tif"
        with rasterio.open(
            path, "w", driver="GTiff", width=grid.width, height=grid.height, count=1,
            dtype="float32", crs=grid.crs, transform=grid.transform, nodata=-1,
        ) as out:  # fmt: skip
            out.write(np.arange(100, dtype="float32").reshape(1, 10, 10) + n)
        paths.append(path)
    return paths


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (["--size", "0"], "--size must be at least"),
        (["--size", "-5"], "--size must be at least"),
        (["--max-tiles", "0"], "--max-tiles must be at least 1"),
    ],
)
def test_bad_numbers_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], needle: str
) -> None:
    _chips(tmp_path / "ds")
    code, _, err = call_cli(capsys, "quicklook", tmp_path / "ds", *options)
    assert_one_error_line(code, err, needle)
    assert "run fetch first" not in err


def test_out_under_a_file_or_a_folder_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _chips(tmp_path / "ds")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = call_cli(capsys, "quicklook", tmp_path / "ds", "--out", blocker / "look.png")
    assert_one_error_line(code, err, "cannot create the folder")
    code, _, err = call_cli(capsys, "quicklook", tmp_path / "ds", "--out", tmp_path)
    assert_one_error_line(code, err, "is a folder")


def test_unwritable_out_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _chips(tmp_path / "ds")
    if os.geteuid() == 0:  # root writes into a 0555 folder; /proc refuses every new file
        target = Path("/proc/m3leo-quicklook-test.png")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        target = locked / "look.png"
    code, _, err = call_cli(capsys, "quicklook", tmp_path / "ds", "--out", target)
    assert_one_error_line(code, err, "cannot write")


def test_a_corrupt_chip_is_skipped_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _good, damaged, garbage = _chips(tmp_path / "ds")
    size = damaged.stat().st_size
    with open(damaged, "r+b") as handle:  # a partial truncation: the header survives
        handle.truncate(size // 2)
    garbage.write_bytes(b"not a tiff")
    out = tmp_path / "look.png"
    code, stdout, err = call_cli(capsys, "quicklook", tmp_path / "ds", "--out", out)
    assert code == 0, err
    assert out.is_file() and "Traceback" not in err
    warnings = [line for line in err.splitlines() if line.startswith("warning: skipped")]
    assert len(warnings) == 2 and damaged.name in err and garbage.name in err
    assert stdout.strip() == f"wrote {out}"
