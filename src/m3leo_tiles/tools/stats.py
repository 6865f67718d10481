"""Per-band statistics of a dataset's chips over one split, streamed, written beside the chips.

Models need inputs on a common scale, and the scale must come from the training tiles only
(statistics from val/test would leak). ``m3leo-tiles stats DATASET`` reads the chips of the
train split one at a time, never all in memory:

* count of valid pixels (not nodata, not NaN), mean and standard deviation (Chan's pairwise
  merge of per-chip moments in float64, so a million chips do not drift), min and max;
* percentiles: exact for 8- and 16-bit integer chips (a full histogram of every value), and
  from a 65,536-bin histogram between min and max for other types (a second pass), so within
  (max − min) / 65,536 of numpy's exact answer;
* for integer bands with at most 256 distinct values, the count of each value (class lists
  and class weights for categorical targets).

Bands of per-tile band lists (GUNW pairs, ``20200117_20200105_unwrapped_phase``) are grouped
by layer (``unwrapped_phase``). The JSON is ``OUT/<aoi>/<dataset>/stats-<split>.json`` and
records which chips it was made from, so a stale file is recognised.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from m3leo_tiles import __version__
from m3leo_tiles.core import strict_json
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.dataset.chipsets import (
    ChipSet,
    band_key,
    find_dataset,
    grid_path_for,
    ids_of_split,
    load_splits,
    valid_mask,
)
from m3leo_tiles.dataset.layout import DatasetLayout

PERCENTILES = (1.0, 2.0, 5.0, 25.0, 50.0, 75.0, 95.0, 98.0, 99.0)
FLOAT_BINS = 65_536
MAX_CLASS_VALUES = 256


def stats_path(folder: Path, split: str = "train") -> Path:
    return DatasetLayout(Path(folder)).stats(split)


def ids_fingerprint(ids: Iterable[str]) -> str:
    """A short hash of the tile ids a statistic was computed over."""
    digest = hashlib.sha1()
    for identifier in sorted(ids):
        digest.update(identifier.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class BandStats:
    """Statistics of one band (or one layer of per-tile pair bands) over the valid pixels."""

    band: str
    count: int
    mean: float
    std: float
    min: float
    max: float
    percentiles: Mapping[str, float] = field(default_factory=dict)
    values: Mapping[str, int] | None = None  # integer bands with few distinct values

    def percentile(self, q: float) -> float:
        return self.percentiles[_q_key(q)]


@dataclass(frozen=True)
class DatasetStats:
    dataset: str
    aoi: str
    split: str
    chips: int
    ids_hash: str
    dtype: str
    nodata: float | None
    exact_percentiles: bool
    bands: tuple[BandStats, ...]
    software: str = f"m3leo-tiles {__version__}"
    made_at: str = ""

    def band(self, name: str) -> BandStats:
        """Stats of a band by name; a pair band's name finds its layer's stats."""
        for stats in self.bands:
            if stats.band == name:
                return stats
        key = band_key(name)
        for stats in self.bands:
            if stats.band == key:
                return stats
        known = ", ".join(s.band for s in self.bands)
        raise ConfigError(f"no statistics for band {name!r} of {self.dataset} (has: {known})")

    def to_json(self) -> str:
        """Strict JSON: a NaN (NaN nodata of GUNW chips, a band with no valid pixel) is null."""
        return strict_json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> DatasetStats:
        data: dict[str, Any] = strict_json.loads(text)
        data["bands"] = tuple(_band_from_json(band) for band in data["bands"])
        return cls(**data)


def _band_from_json(data: dict[str, Any]) -> BandStats:
    """A band's statistics with the floats written as null (NaN) read back as NaN."""
    floats = {key: strict_json.as_float(data[key]) for key in ("mean", "std", "min", "max")}
    percentiles = {q: strict_json.as_float(v) for q, v in (data.get("percentiles") or {}).items()}
    return BandStats(**{**data, **floats, "percentiles": percentiles})


def _q_key(q: float) -> str:
    return f"p{q:g}"


class _Accumulator:
    """Moments, extremes and (for small integers) an exact histogram of one band key."""

    def __init__(self, dtype: np.dtype) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = np.inf
        self.max = -np.inf
        self.exact = dtype.kind in "ui" and dtype.itemsize <= 2
        self.offset = int(np.iinfo(dtype).min) if self.exact else 0
        self.counts = np.zeros(1 << (8 * dtype.itemsize), np.int64) if self.exact else None
        self.histogram: np.ndarray | None = None

    def add(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        as_float = values.astype(np.float64)
        n_b = as_float.size
        mean_b = float(as_float.mean())
        m2_b = float(((as_float - mean_b) ** 2).sum())
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.n * n_b / n
        self.n = n
        self.min = min(self.min, float(as_float.min()))
        self.max = max(self.max, float(as_float.max()))
        if self.counts is not None:
            self.counts += np.bincount(
                (values.astype(np.int64) - self.offset).ravel(), minlength=self.counts.size
            )

    def add_to_histogram(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        counts, _ = np.histogram(values, bins=FLOAT_BINS, range=(self.min, self.max))
        self.histogram = counts if self.histogram is None else self.histogram + counts

    def result(self, name: str, percentiles: Sequence[float]) -> BandStats:
        if self.n == 0:
            return BandStats(name, 0, float("nan"), float("nan"), float("nan"), float("nan"))
        std = float(np.sqrt(self.m2 / self.n))
        found = {_q_key(q): self._percentile(q) for q in percentiles}
        values = None
        if self.counts is not None and np.count_nonzero(self.counts) <= MAX_CLASS_VALUES:
            present = np.flatnonzero(self.counts)
            values = {str(int(v) + self.offset): int(self.counts[v]) for v in present}
        return BandStats(name, self.n, self.mean, std, self.min, self.max, found, values)

    def _value_at_rank(self, rank: int) -> float:
        if self.counts is not None:
            cumulative = np.cumsum(self.counts)
            return float(np.searchsorted(cumulative, rank, side="right") + self.offset)
        assert self.histogram is not None
        cumulative = np.cumsum(self.histogram)
        index = int(np.searchsorted(cumulative, rank, side="right"))
        before = cumulative[index - 1] if index else 0
        width = (self.max - self.min) / FLOAT_BINS
        inside = (rank - before + 0.5) / max(1, self.histogram[index])
        return float(min(self.max, self.min + (index + inside) * width))

    def _percentile(self, q: float) -> float:
        """numpy's default (linear) percentile, from the histogram."""
        if self.counts is None and (self.histogram is None or self.max == self.min):
            return self.min
        position = (self.n - 1) * q / 100.0
        low = int(np.floor(position))
        below = self._value_at_rank(low)
        if position == low:
            return below
        above = self._value_at_rank(min(low + 1, self.n - 1))
        return below + (position - low) * (above - below)


def compute_stats(
    folder: Path,
    split: str | None = "train",
    grid: str | Path | None = None,
    grids_dir: Path = Path("grids"),
    percentiles: Sequence[float] = PERCENTILES,
    progress: Callable[[int, int], None] | None = None,
) -> DatasetStats:
    """Statistics of the chips in ``folder`` over the tiles of ``split`` (None: all chips)."""
    import rasterio

    chipset = ChipSet.open(Path(folder))
    splits = load_splits(grid_path_for(grid, chipset.aoi, grids_dir)) if split is not None else {}
    ids = ids_of_split(chipset.ids, splits, split)
    if not ids:
        raise ConfigError(
            f"no chips of split {split!r} in {chipset.folder} ({len(chipset.ids)} chips in all); "
            "fetch that split first or choose another with --split"
        )
    accumulators: dict[str, _Accumulator] = {}
    dtype: np.dtype | None = None
    nodata: float | None = None

    def bands_of(dataset: Any) -> list[tuple[str, np.ndarray]]:
        data = dataset.read()
        valid = valid_mask(data, dataset.nodata)
        names = [d or f"band_{i + 1}" for i, d in enumerate(dataset.descriptions)]
        return [(band_key(n, dataset.tags(i + 1)), data[i][valid[i]]) for i, n in enumerate(names)]

    total = len(ids) * 2
    for step, identifier in enumerate(ids):
        with rasterio.open(chipset.path(identifier)) as dataset:
            if dtype is None:
                dtype, nodata = np.dtype(dataset.dtypes[0]), dataset.nodata
            for key, values in bands_of(dataset):
                accumulators.setdefault(key, _Accumulator(dtype)).add(values)
        if progress:
            progress(step + 1, total)
    assert dtype is not None
    exact = all(acc.counts is not None for acc in accumulators.values())
    if not exact:  # second pass: histograms between the now known extremes
        for step, identifier in enumerate(ids):
            with rasterio.open(chipset.path(identifier)) as dataset:
                for key, values in bands_of(dataset):
                    accumulator = accumulators[key]
                    if accumulator.counts is None and accumulator.max > accumulator.min:
                        accumulator.add_to_histogram(values)
            if progress:
                progress(len(ids) + step + 1, total)
    return DatasetStats(
        dataset=chipset.name,
        aoi=chipset.aoi,
        split=split or "all",
        chips=len(ids),
        ids_hash=ids_fingerprint(ids),
        dtype=str(dtype),
        nodata=nodata,
        exact_percentiles=exact,
        bands=tuple(acc.result(key, percentiles) for key, acc in accumulators.items()),
        made_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def write_stats(stats: DatasetStats, folder: Path) -> Path:
    from m3leo_tiles.core.atomic import write_text

    path = stats_path(folder, stats.split)
    write_text(path, stats.to_json() + "\n")
    return path


def read_stats(folder: Path, split: str = "train") -> DatasetStats:
    path = stats_path(folder, split)
    if not path.exists():
        raise ConfigError(
            f"no statistics for {Path(folder).name} ({path} missing); run "
            f"`m3leo-tiles stats {folder} --split {split}` first"
        )
    try:
        return DatasetStats.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, TypeError, KeyError) as error:
        raise ConfigError(f"{path} is not a statistics file ({error}); rerun stats") from None


def stats_command(
    dataset: str,
    root: Path = Path("data"),
    aoi: str | None = None,
    split: str | None = "train",
    grid: str | Path | None = None,
    grids_dir: Path = Path("grids"),
) -> tuple[DatasetStats, Path]:
    """Find the dataset, compute its statistics and write them: what the CLI runs."""
    folder = find_dataset(dataset, root, aoi)
    stats = compute_stats(folder, split=split, grid=grid, grids_dir=grids_dir)
    return stats, write_stats(stats, folder)


def ensure_train_stats(
    folder: Path, grid: str | Path, grids_dir: Path, log: Callable[[str], None]
) -> DatasetStats:
    """The train statistics of a dataset, computed and written when missing or stale.

    m3leo-train and the Dataset need them (normalisation, class values) and compute them
    rather than stop and send the user to ``m3leo-tiles stats`` first."""
    chipset = ChipSet.open(Path(folder))
    grid_file = grid_path_for(grid, chipset.aoi, Path(grids_dir))
    ids = ids_of_split(chipset.ids, load_splits(grid_file), "train")
    try:
        stats = read_stats(folder, "train")
        if stats.ids_hash == ids_fingerprint(ids):
            return stats
        reason = "stale"
    except ConfigError:
        reason = "missing"
    log(f"statistics of {chipset.name} {reason}: computing them (m3leo-tiles stats)")
    stats = compute_stats(folder, "train", grid=grid_file, grids_dir=Path(grids_dir))
    write_stats(stats, folder)
    return stats


def format_stats(stats: DatasetStats) -> str:
    """A table: one line per band."""
    lines = [f"{'band':<20} {'count':>12} {'mean':>12} {'std':>12} {'min':>12} {'max':>12}"]
    for b in stats.bands:
        lines.append(
            f"{b.band:<20} {b.count:>12,} {b.mean:>12.4g} {b.std:>12.4g} {b.min:>12.4g} "
            f"{b.max:>12.4g}"
        )
    return "\n".join(lines)
