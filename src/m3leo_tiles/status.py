"""What is in an output folder: per dataset, how many tiles are done, failed or still missing.

It reads only manifests, file sizes and (when found) the AOI's grid file, never the chips, so
it answers in a moment for a folder of a million chips: the question a user or a cron job asks
before deciding to rerun ``fetch``.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from m3leo_tiles.enums import TileStatus
from m3leo_tiles.manifest import MANIFEST_NAME, read_manifest


@dataclass(frozen=True)
class DatasetStatus:
    """One dataset folder ``OUT/<aoi>/<dataset>``; ``missing`` is None when no grid was found."""

    aoi: str
    dataset: str
    folder: Path
    ok: int
    empty: int
    no_source: int
    failed: int
    missing: int | None
    grid_tiles: int | None
    size_bytes: int
    last_run: float | None  # unix time of the manifest's last change


def _grid_ids(
    aoi: str, grids_dir: Path, cache: dict[str, frozenset[str] | None]
) -> frozenset[str] | None:
    if aoi not in cache:
        cache[aoi] = None
        try:
            from m3leo_tiles.grid import default_grid_path, read_grid

            path = default_grid_path(aoi, grids_dir)
            if path.exists():
                cache[aoi] = frozenset(t.identifier for t in read_grid(path).tiles)
        except Exception:  # no grid or an unreadable one: report without "missing"
            cache[aoi] = None
    return cache[aoi]


def _folder_size(folder: Path) -> int:
    total = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    return total


def dataset_status(folder: Path, aoi: str, grid_ids: frozenset[str] | None) -> DatasetStatus:
    manifest = folder / MANIFEST_NAME
    rows = read_manifest(manifest)
    counts = Counter(row.status for row in rows.values())
    missing = None
    if grid_ids is not None:
        missing = len(grid_ids - rows.keys())
    return DatasetStatus(
        aoi=aoi,
        dataset=folder.name,
        folder=folder,
        ok=counts[TileStatus.OK],
        empty=counts[TileStatus.EMPTY],
        no_source=counts[TileStatus.NO_SOURCE],
        failed=counts[TileStatus.FAILED],
        missing=missing,
        grid_tiles=len(grid_ids) if grid_ids is not None else None,
        size_bytes=_folder_size(folder),
        last_run=manifest.stat().st_mtime if manifest.exists() else None,
    )


def status(out: Path = Path("data"), grids_dir: Path = Path("grids")) -> list[DatasetStatus]:
    """Every dataset folder (one holding a manifest) under ``out/<aoi>/``, sorted by name."""
    out = Path(out)
    cache: dict[str, frozenset[str] | None] = {}
    found = []
    for manifest in sorted(out.glob(f"*/*/{MANIFEST_NAME}")):
        folder = manifest.parent
        aoi = folder.parent.name
        found.append(dataset_status(folder, aoi, _grid_ids(aoi, Path(grids_dir), cache)))
    return found


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def format_status_table(rows: list[DatasetStatus]) -> str:
    """An aligned text table, one line per dataset."""
    header = ("aoi", "dataset", "ok", "empty", "no-source", "failed", "missing", "size", "last run")
    lines = [header]
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.last_run)) if r.last_run else "-"
        lines.append(
            (
                r.aoi,
                r.dataset,
                str(r.ok),
                str(r.empty),
                str(r.no_source),
                str(r.failed),
                "?" if r.missing is None else str(r.missing),
                _size(r.size_bytes),
                when,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    numeric = {2, 3, 4, 5, 6, 7}
    out = []
    for line in lines:
        cells = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(line)
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)
