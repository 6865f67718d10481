"""Per-tile pair inputs (GUNW interferograms): which of a tile's pairs make up a sample.

A pair input's chips hold a different band list on every tile
(``20200117_20200105_unwrapped_phase``, ...); a ``PairRule`` chooses a fixed number of pairs
per tile, so that every sample has the same channels (padded with zeros and flags).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.dataset.chipsets import ChipInfo, PairBand, parse_pair_band, read_chip_info


@dataclass(frozen=True)
class PairRule:
    """Which pairs of a per-tile pair input make up a sample, and how many.

    ``count`` pairs are kept (padded with zero channels and flags when a tile has fewer),
    chosen among those within ``start``..``end`` (both dates of the pair inside) and at most
    ``max_baseline_days`` apart, ordered by ``order``: ``shortest`` baseline first (ties:
    latest first), ``longest`` first, or ``latest`` reference date first.
    """

    count: int = 4
    order: str = "shortest"
    start: date | None = None
    end: date | None = None
    max_baseline_days: int | None = None

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"PairRule.count must be at least 1, got {self.count}")
        if self.order not in {"shortest", "longest", "latest"}:
            raise ConfigError(f"PairRule.order must be shortest, longest or latest: {self.order}")

    def choose(self, pairs: Sequence[tuple[date, date]]) -> list[tuple[date, date]]:
        kept = []
        for reference, secondary in set(pairs):
            first, last = min(reference, secondary), max(reference, secondary)
            if self.start is not None and first < self.start:
                continue
            if self.end is not None and last > self.end:
                continue
            if self.max_baseline_days is not None and (last - first).days > self.max_baseline_days:
                continue
            kept.append((reference, secondary))

        def baseline(pair: tuple[date, date]) -> int:
            return abs((pair[0] - pair[1]).days)

        if self.order == "shortest":
            kept.sort(key=lambda p: (baseline(p), -p[0].toordinal(), -p[1].toordinal()))
        elif self.order == "longest":
            kept.sort(key=lambda p: (-baseline(p), -p[0].toordinal(), -p[1].toordinal()))
        else:
            kept.sort(key=lambda p: (-p[0].toordinal(), -p[1].toordinal()))
        return kept[: self.count]


def rule_for(name: str, pairs: PairRule | Mapping[str, PairRule] | None) -> PairRule:
    """The rule of input ``name``: its own, the one for all, or the default."""
    rule = pairs.get(name, PairRule()) if isinstance(pairs, Mapping) else pairs
    return rule or PairRule()


def pair_bands(info: ChipInfo) -> list[PairBand | None]:
    """Each band of a chip as a pair band (dates and layer), None where it is not one."""
    return [parse_pair_band(b, m) for b, m in zip(info.bands, info.band_metadata, strict=True)]


def dates_of(bands: Iterable[PairBand]) -> list[tuple[date, date]]:
    """The (reference, secondary) dates of pair bands, as ``PairRule.choose`` takes them."""
    return [(p.reference, p.secondary) for p in bands]


def index_pair_bands(folder: Path, ids: frozenset[str], tile_ids: Sequence[str]) -> dict:
    """The pair bands of every chip of ``tile_ids`` that the input holds (read once)."""
    per_tile: dict[str, list[PairBand]] = {}
    for identifier in tile_ids:
        if identifier in ids:
            info = read_chip_info(folder / f"{identifier}.tif")
            per_tile[identifier] = [p for p in pair_bands(info) if p is not None]
    return per_tile
