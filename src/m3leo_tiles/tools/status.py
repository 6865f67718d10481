"""What is in an output folder: per dataset, how many tiles are done, failed or still missing.

It reads only manifests, lock files, file sizes and (when found) the AOI's grid file, never
the chips, so it answers in a moment for a folder of a million chips: the question a user or a
cron job asks before deciding to rerun ``fetch``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.dataset.layout import DatasetLayout, FolderScan, datasets_under

if TYPE_CHECKING:
    import pyarrow as pa

    from m3leo_tiles.dataset.manifest import ManifestRow


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
    run: str = ""  # "running (pid ... on ... since ...)", "stale lock ...", or "" when idle
    chips: int = 0  # *.tif files in the folder
    manifest: bool = True  # False: chips found but no manifest.csv (made elsewhere, or lost)
    damaged: int = 0  # recorded ok, but the chip is missing or not of the recorded size

    @property
    def note(self) -> str:
        """What the table's last column says about this folder."""
        if self.run:
            return self.run
        if self.damaged:
            return (
                f"{self.damaged} damaged chips (missing or not the size manifest.csv records), "
                "counted failed; rerun fetch to make them again"
            )
        if not self.manifest:
            return f"{self.chips} chips but no manifest.csv; rerun fetch to adopt them"
        return "finished"


def run_state(folder: Path) -> str:
    """Whether a fetch holds this folder now, from its lock file (see ``locking``).

    A lock whose process is alive on this host is a live run; one whose process is gone is
    stale (the next fetch takes it over); one from another host cannot be checked from here.
    """
    from m3leo_tiles.dataset.lock import is_live, read_owner

    path = DatasetLayout(folder).lock
    if not path.exists():
        return ""
    owner = read_owner(path)
    if owner is None:
        return "lock file being written or unreadable"
    live = is_live(owner)
    if live is None:
        return f"locked by {owner.describe()} (another host: cannot tell if it still runs)"
    if live:
        return f"running: {owner.describe()}"
    return f"stale lock of {owner.describe()} (process gone; the next fetch takes it over)"


def _grid_ids(
    aoi: str, grids_dir: Path, cache: dict[str, pa.ChunkedArray | None]
) -> pa.ChunkedArray | None:
    if aoi not in cache:
        cache[aoi] = None
        try:
            from m3leo_tiles.grid import default_grid_path
            from m3leo_tiles.grid.files import read_grid_ids

            path = default_grid_path(aoi, grids_dir)
            if path.exists():
                cache[aoi] = read_grid_ids(path)
        except Exception:  # no grid or an unreadable one: report without "missing"
            cache[aoi] = None
    return cache[aoi]


def damaged_count(outcomes: pa.Table, chips: pa.Table) -> int:
    """How many ``ok`` rows ``fetch.plan.size_problem`` would find a problem with (no chip,
    or not the recorded size), over Arrow columns (``chips``: ``FolderScan.chip_table``): on
    CONUS a Python call per row cost a ``status`` 0.25 s. No chip is read."""
    import pyarrow.compute as pc

    ok = outcomes.filter(pc.equal(outcomes.column("status"), str(TileStatus.OK)))
    if not ok.num_rows:
        return 0
    where = pc.index_in(ok.column("identifier"), value_set=chips.column("id"))
    actual = pc.take(chips.column("size"), where)
    recorded = ok.column("bytes")
    wrong_size = pc.and_kleene(pc.is_valid(recorded), pc.not_equal(recorded, actual))
    return int(pc.sum(pc.or_kleene(pc.is_null(actual), wrong_size)).as_py() or 0)


def dataset_status(
    folder: Path,
    aoi: str,
    grid_ids: pa.ChunkedArray | None,
    listing: Future[FolderScan] | None = None,
) -> DatasetStatus:
    """One folder's counts; ``listing``: its listing, being made on another thread (waited
    for only after the manifest is read, so the two overlap)."""
    import pyarrow.compute as pc

    from m3leo_tiles.dataset.manifest import outcome_table

    layout = DatasetLayout(folder)
    manifest = layout.manifest
    outcomes = outcome_table(manifest)  # no row objects, no inputs
    ids = outcomes.column("identifier")
    tally = pc.value_counts(outcomes.column("status")).to_pylist()
    counts = Counter({TileStatus(entry["values"]): entry["counts"] for entry in tally})
    missing = None
    if grid_ids is not None:
        missing = len(grid_ids) - int(pc.sum(pc.is_in(grid_ids, value_set=ids)).as_py() or 0)
    scan = listing.result() if listing is not None else layout.scan()
    chips = scan.chip_table()
    damaged = damaged_count(outcomes, chips)
    return DatasetStatus(
        aoi=aoi,
        dataset=folder.name,
        folder=folder,
        ok=counts[TileStatus.OK] - damaged,
        empty=counts[TileStatus.EMPTY],
        no_source=counts[TileStatus.NO_SOURCE],
        failed=counts[TileStatus.FAILED] + damaged,
        missing=missing,
        grid_tiles=len(grid_ids) if grid_ids is not None else None,
        size_bytes=scan.total_bytes,
        last_run=manifest.stat().st_mtime if manifest.exists() else None,
        run=run_state(folder),
        chips=chips.num_rows,
        manifest=manifest.exists(),
        damaged=damaged,
    )


def status(
    out: Path = Path("data"), grids_dir: Path = Path("grids"), grid: Path | None = None
) -> list[DatasetStatus]:
    """Every dataset folder under ``out/<aoi>/``, sorted by name.

    A dataset folder is one holding a manifest, a lock or chips (chips without a manifest
    are reported as such, not hidden). ``missing`` counts tiles of the AOI's grid without a
    manifest row; the grid is ``grid`` for its own AOI, else ``grids_dir/<aoi>/tiles.*``.
    Each folder is listed on a thread of its own while the grids and manifests are read:
    the listing waits on the kernel and Arrow parses without the GIL, so two cores overlap
    them.
    """
    out = Path(out)
    cache: dict[str, pa.ChunkedArray | None] = {}
    if grid is not None:
        import pyarrow as pa

        from m3leo_tiles.grid import read_grid
        from m3leo_tiles.grid.tile import tile_ids

        given = read_grid(grid)  # a bad file is the user's error: GridError, exit 2
        cache[given.aoi] = pa.chunked_array([pa.array(tile_ids(given.tiles), pa.string())])
    layouts = list(datasets_under(out, locked=True))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="m3leo-scan") as pool:
        scans = [pool.submit(layout.scan) for layout in layouts]
        return [
            dataset_status(layout.folder, layout.aoi,
                           _grid_ids(layout.aoi, Path(grids_dir), cache), scan)
            for layout, scan in zip(layouts, scans, strict=True)
        ]  # fmt: skip


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def format_status_table(rows: list[DatasetStatus]) -> str:
    """An aligned text table, one line per dataset; the last column says if a run is live."""
    header = (
        "aoi", "dataset", "ok", "empty", "no-source", "failed", "missing", "size", "last run",
        "state",
    )  # fmt: skip
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
                r.note,
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


@dataclass(frozen=True)
class Verification:
    """``status --verify`` of one dataset folder: every chip read back."""

    folder: Path
    checked: int
    damaged: tuple[tuple[str, str], ...]  # (tile id, what is wrong)
    marked: bool  # the damaged tiles were recorded failed, so the next fetch redoes them

    def summary(self) -> str:
        if not self.damaged:
            return f"{self.folder}: {self.checked} chips verified, all whole"
        first = "; ".join(f"{ident}: {why}" for ident, why in self.damaged[:5])
        more = f" (and {len(self.damaged) - 5} more)" if len(self.damaged) > 5 else ""
        then = (
            "recorded as failed: rerun fetch to make them again"
            if self.marked
            else "a run holds the folder, so nothing was recorded; verify again when it ends"
        )
        return (
            f"{self.folder}: {self.checked} chips verified, {len(self.damaged)} damaged "
            f"({first}{more}); {then}"
        )


def tile_inputs(folder: Path, identifiers: Sequence[str]) -> dict[str, tuple[str, ...] | None]:
    """The input files that made each tile's chip (the latest row's list: paths, URLs or
    product names), by id; None for a tile the manifest has no row for. Streams the manifest
    (one pass) and reads ``input-sets.jsonl`` only when a row names a list by reference."""
    from m3leo_tiles.dataset.inputsets import InputSets
    from m3leo_tiles.dataset.manifest import iter_rows

    layout = DatasetLayout(Path(folder))
    if not layout.manifest.exists():
        raise ConfigError(f"{layout.folder} has no manifest.csv; give a dataset folder "
                          "(OUT/<aoi>/<dataset>) made by fetch")  # fmt: skip
    wanted = set(identifiers)
    latest = {row.identifier: row for row in iter_rows(layout.manifest)
              if row.identifier in wanted}  # fmt: skip
    lists = InputSets(layout.input_sets)
    found: dict[str, tuple[str, ...] | None] = {}
    for identifier in identifiers:
        row = latest.get(identifier)
        if row is None:
            found[identifier] = None
        elif row.input_set:
            found[identifier] = lists.inputs(row.input_set) or ()
        else:
            found[identifier] = row.inputs
    return found


def _damaged_row(row: ManifestRow | None, identifier: str, why: str) -> ManifestRow:
    """The failed row that makes the next fetch redo a damaged chip; it names the inputs as
    the tile's row did (a reference stays a reference, already recorded)."""
    from m3leo_tiles.dataset.manifest import ManifestRow, now_iso

    reason = f"damaged chip: {why}"
    if row is None:
        return ManifestRow(identifier, TileStatus.FAILED, reason, finished_at=now_iso())
    return ManifestRow(identifier, TileStatus.FAILED, reason, () if row.input_set else row.inputs,
                       0.0, row.recipe_hash, now_iso(), input_set=row.input_set)  # fmt: skip


def verify_dataset(folder: Path) -> Verification:
    """Read every chip of ``folder`` back: size and CRC-32 against the manifest when it has
    them, then every pixel through GDAL. A damaged chip's tile is recorded ``failed`` (so a
    rerun of fetch makes it again) unless a run holds the folder's lock."""
    from m3leo_tiles.core.errors import LockedError
    from m3leo_tiles.dataset.chipfile import Written, chip_problem
    from m3leo_tiles.dataset.lock import DatasetLock
    from m3leo_tiles.dataset.manifest import ManifestWriter, read_manifest

    layout = DatasetLayout(folder)
    rows = read_manifest(layout.manifest)
    damaged: list[tuple[str, str]] = []
    checked = 0
    chips = layout.chips()
    for identifier in sorted(chips):
        row = rows.get(identifier)
        expected = None
        if row is not None and row.status is TileStatus.OK and row.bytes is not None:
            expected = Written(row.bytes, row.crc32)
        checked += 1
        problem = chip_problem(chips[identifier], expected)
        if problem is not None:
            damaged.append((identifier, problem))
    for identifier, row in sorted(rows.items()):
        if row.status is TileStatus.OK and identifier not in chips:
            damaged.append((identifier, "its chip is missing"))
    marked = False
    if damaged:
        try:
            with DatasetLock(folder), ManifestWriter(layout.manifest) as writer:
                writer.write(_damaged_row(rows.get(ident), ident, why) for ident, why in damaged)
            marked = True
        except LockedError:
            marked = False
    return Verification(folder, checked, tuple(damaged), marked)
