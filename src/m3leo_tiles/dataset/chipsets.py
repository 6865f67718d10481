"""Finding what ``fetch`` wrote: dataset folders, their chips by tile id, their splits.

Everything that consumes chips (``stats``, ``pack``, the torch Dataset, ``m3leo-train``) asks
the same questions: which folder is dataset X, which tiles have a finished chip, which split is
each tile in, what are the bands called. They are answered here, from the manifest and the grid
files, without torch, so the core commands never import it.

A dataset is named by its folder (``OUT/<aoi>/<recipe>[-<year>]``); ``agb`` also finds
``agb-2020`` when that is the only year fetched, so users type the recipe name they know.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from m3leo_tiles.core.enums import Split, TileStatus
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.dataset.layout import DatasetLayout
from m3leo_tiles.dataset.manifest import read_outcomes
from m3leo_tiles.dataset.nodata import valid_mask as valid_mask  # its old home: re-exported

PAIR_BAND = re.compile(r"^(\d{8})_(\d{8})(?:_[AD]\d{3})?_(.+)$")
"""Band names of per-tile pair products (GUNW): ``<reference>_<secondary>_<layer>``, with
``_A064`` (direction, track) after the dates where two pairs of a tile share them."""


# --- band names ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PairBand:
    """One band of an interferometric pair: its dates and the layer it holds."""

    name: str
    reference: date
    secondary: date
    layer: str

    @property
    def baseline_days(self) -> int:
        """Temporal baseline: days between the two acquisitions (always >= 0)."""
        return abs((self.reference - self.secondary).days)


def _date(text: str) -> date:
    text = text.strip().replace("-", "")[:8]
    return date(int(text[:4]), int(text[4:6]), int(text[6:8]))


def parse_pair_band(name: str, metadata: Mapping[str, str] | None = None) -> PairBand | None:
    """The pair a band belongs to, from its metadata when it says so, else from its name.

    Band metadata keys ``reference_date`` / ``secondary_date`` (``YYYYMMDD`` or ISO) and
    ``layer`` win over the name, so a source may name its bands freely.
    """
    metadata = metadata or {}
    match = PAIR_BAND.match(name)
    try:
        if "reference_date" in metadata and "secondary_date" in metadata:
            layer = metadata.get("layer") or (match.group(3) if match else name)
            return PairBand(
                name, _date(metadata["reference_date"]), _date(metadata["secondary_date"]), layer
            )
        if match:
            return PairBand(name, _date(match.group(1)), _date(match.group(2)), match.group(3))
    except ValueError:
        return None
    return None


def band_key(name: str, metadata: Mapping[str, str] | None = None) -> str:
    """What statistics are grouped by: the layer of a pair band, else the band name itself."""
    pair = parse_pair_band(name, metadata)
    return pair.layer if pair else name


# --- chips and their bands -----------------------------------------------------------------


@dataclass(frozen=True)
class ChipInfo:
    """What one chip file says about itself (read with rasterio, once)."""

    bands: tuple[str, ...]
    band_metadata: tuple[Mapping[str, str], ...]
    dtype: str
    nodata: float | None
    width: int
    height: int
    crs: str
    bounds: tuple[float, float, float, float]
    scales: tuple[float, ...] = ()  # GDAL's band scale and offset (GSSIC's DN -> value)
    offsets: tuple[float, ...] = ()
    units: tuple[str, ...] = ()


def read_chip_info(path: Path) -> ChipInfo:
    import rasterio

    with rasterio.open(path) as dataset:
        names = tuple(
            description or f"band_{index + 1}"
            for index, description in enumerate(dataset.descriptions)
        )
        return ChipInfo(
            bands=names,
            band_metadata=tuple(dict(dataset.tags(i)) for i in range(1, dataset.count + 1)),
            dtype=str(dataset.dtypes[0]),
            nodata=dataset.nodata,
            width=dataset.width,
            height=dataset.height,
            crs=str(dataset.crs),
            bounds=tuple(dataset.bounds),
            scales=tuple(float(s) for s in dataset.scales),
            offsets=tuple(float(o) for o in dataset.offsets),
            units=tuple(u or "" for u in dataset.units),
        )


@dataclass(frozen=True)
class ChipSet:
    """One dataset folder ``OUT/<aoi>/<dataset>`` and the tiles that have a finished chip."""

    name: str
    aoi: str
    folder: Path
    ids: frozenset[str]

    def path(self, tile_id: str) -> Path:
        return DatasetLayout(self.folder).chip(tile_id)

    def first_chip(self) -> Path:
        if not self.ids:
            raise ConfigError(f"dataset {self.name} ({self.folder}) holds no chips; run fetch")
        return self.path(min(self.ids))

    @classmethod
    def open(cls, folder: Path) -> ChipSet:
        folder = Path(folder)
        return cls(name=folder.name, aoi=folder.parent.name, folder=folder, ids=chip_ids(folder))


def chip_ids(folder: Path) -> frozenset[str]:
    """Tiles whose chip is finished: ``ok`` in the manifest with the file present.

    Folders written by something else (no manifest) count every ``*.tif``. Hidden partial
    files never end in ``.tif``, so a chip being written is never taken.
    """
    layout = DatasetLayout(Path(folder))
    present = layout.chip_ids()
    if not layout.manifest.exists():
        return frozenset(present)
    outcomes = read_outcomes(layout.manifest)  # statuses only: no row objects, no inputs
    ok = TileStatus.OK
    return frozenset(i for i, (status, _) in outcomes.items() if status is ok and i in present)


def _is_dataset_folder(path: Path) -> bool:
    return DatasetLayout(path).looks_like_dataset()


def find_dataset(name: str | Path, root: Path = Path("data"), aoi: str | None = None) -> Path:
    """The folder of dataset ``name``: a path, or ``root/<aoi>/<name>[-<year>]``.

    Without ``aoi`` the name is looked up under every AOI folder of ``root`` and must be
    unique. A recipe name finds its single year folder (``agb`` → ``agb-2020``).
    """
    as_path = Path(name)
    if (as_path.is_absolute() or len(as_path.parts) > 1) and _is_dataset_folder(as_path):
        return as_path
    if len(as_path.parts) > 1:
        raise ConfigError(f"{as_path} is not a dataset folder (no manifest.csv, no chips)")
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"data root {root} is not a folder; pass the --out folder of fetch")
    aoi_dirs = [root / aoi] if aoi else sorted(p for p in root.iterdir() if p.is_dir())
    exact = [d / str(name) for d in aoi_dirs if _is_dataset_folder(d / str(name))]
    if len(exact) == 1:
        return exact[0]
    yearly = [
        p
        for d in aoi_dirs
        if d.is_dir()
        for p in sorted(d.glob(f"{name}-*"))
        if re.fullmatch(rf"{re.escape(str(name))}-\d{{4}}", p.name) and _is_dataset_folder(p)
    ]
    found = exact or yearly
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        choices = ", ".join(str(p.relative_to(root)) for p in found)
        raise ConfigError(f"dataset {name!r} is ambiguous under {root}: {choices}; name one")
    known = sorted(
        str(p.relative_to(root))
        for d in aoi_dirs
        if d.is_dir()
        for p in d.iterdir()
        if _is_dataset_folder(p)
    )
    where = f"{root}/{aoi}" if aoi else str(root)
    raise ConfigError(
        f"unknown dataset {name!r} under {where}; found: {', '.join(known) or 'none'} "
        "(fetch it first, or pass --root)"
    )


# --- splits --------------------------------------------------------------------------------


def grid_path_for(grid: str | Path | None, aoi: str, grids_dir: Path = Path("grids")) -> Path:
    """A grid file given as a path, an AOI name, or (None) the AOI of the dataset."""
    from m3leo_tiles.grid import default_grid_path

    if grid is not None and Path(grid).suffix:
        return Path(grid)
    return default_grid_path(str(grid) if grid is not None else aoi, Path(grids_dir))


def load_splits(grid_file: Path) -> dict[str, str]:
    """``tile id → split`` of a grid file (our grids; foreign ones without splits raise)."""
    from m3leo_tiles.grid.files import read_grid_splits

    ids, split = read_grid_splits(grid_file)
    splits = {i: s for i, s in zip(ids.to_pylist(), split.to_pylist(), strict=True) if s}
    if not splits:
        raise ConfigError(f"the grid {grid_file} has no splits; make one with `m3leo-tiles grid`")
    return splits


def ids_of_split(
    ids: Sequence[str] | frozenset[str], splits: Mapping[str, str], split: str | None
) -> list[str]:
    """The ids of one split (all ids for ``None``), sorted so every run sees the same order."""
    if split is None:
        return sorted(ids)
    wanted = str(Split(split))
    return sorted(i for i in ids if splits.get(i) == wanted)
