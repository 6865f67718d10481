"""Which tiles a run makes: the grid (a file, an AOI's, or the only one), then a split, a
file of ids and a limit, and which years (``--year 2018-2020``); what ``fetch`` does before
it hands the tiles to ``fetch_tiles``.

Every problem a user can fix is a ``ConfigError`` raised here, before any work: no grid, no
tile left, a split the grid lacks. What is only doubtful (ids not in the grid, more workers
than cores) becomes a warning the run logs and prints.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from m3leo_tiles.core.enums import Split
from m3leo_tiles.core.errors import ConfigError

if TYPE_CHECKING:
    from m3leo_tiles.grid.files import Grid
    from m3leo_tiles.grid.tile import GridTile


@dataclass(frozen=True)
class Selection:
    """The tiles chosen, the AOI of their grid, and what the run's log says about them."""

    aoi: str
    tiles: list[GridTile]
    notes: tuple[str, ...]  # for fetch.log only
    warnings: tuple[str, ...]  # for the terminal too


def read_tile_ids(path: Path) -> list[str]:
    """A tiles file: one id per line; blank lines and ``#`` comments are ignored."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read tiles file {path}: {error.strerror or error}") from None
    ids = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    ids = [i for i in ids if i]
    if not ids:
        raise ConfigError(f"tiles file {path} lists no tile ids; put one id per line")
    return ids


def find_default_grid(grids_dir: Path) -> Path:
    """The only grid under ``grids_dir``; anything else is a question for the user."""
    from m3leo_tiles.grid import list_grids

    found = list_grids(grids_dir)
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConfigError(
            f"no grid found under {grids_dir}/; make one with `m3leo-tiles grid --aoi NAME` "
            "or pass --aoi NAME or --grid FILE"
        )
    names = ", ".join(str(p) for p in found)
    raise ConfigError(f"several grids under {grids_dir}/ ({names}); choose one with --grid FILE")


def check_choice(aoi: str | None, grid: Path | None, limit: int | None) -> None:
    """Refuse contradictory or impossible choices before anything is read."""
    if aoi is not None and grid is not None:
        raise ConfigError("give either --aoi or --grid, not both")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")


def grid_path_of(aoi: str | None, grid: Path | None, grids_dir: Path) -> Path:
    """The grid file: ``grid``, or the grid of ``aoi`` (built if missing), or the only one."""
    from m3leo_tiles.grid import ensure_grid

    if grid is not None:
        return Path(grid)
    if aoi is not None:
        return ensure_grid(aoi, grids_dir)
    return find_default_grid(Path(grids_dir))


def workers_warning(workers: int | None, scheduler: str | None) -> str | None:
    """More local workers than cores make chips no faster and take memory: say so."""
    cores = os.cpu_count() or 1
    if workers is not None and scheduler is None and workers > cores:
        return (
            f"--workers {workers} is more than the {cores} CPU cores here: chips are made "
            "no faster, and each worker takes memory; use at most --workers " + str(cores)
        )
    return None


def _unknown_ids_warning(the_grid: Grid, identifiers: list[str], tiles: Path,
                         grid_path: Path) -> str | None:  # fmt: skip
    known = {tile.identifier for tile in the_grid.tiles}
    unknown = [i for i in dict.fromkeys(identifiers) if i not in known]
    if not unknown:
        return None
    shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
    return (
        f"{len(unknown)} of the {len(set(identifiers))} ids in {tiles} are not "
        f"in the grid {grid_path} and are left out: {shown}"
    )


def _nothing_selected(the_grid: Grid, grid_path: Path, split: Split | None,
                      tiles: Path | None) -> ConfigError:  # fmt: skip
    if split is not None and not any(s == split for s in the_grid.splits.values()):
        return ConfigError(
            f"the grid {grid_path} has no {split} tiles (a small AOI cut into "
            "wide bands can get none); regrid with more bands, e.g. "
            f"`m3leo-tiles grid --aoi {the_grid.aoi} --bands 2000`, or choose another split"
        )
    return ConfigError(
        f"no tiles selected from {grid_path} (split={split}, tiles file={tiles}); "
        "check the split name and the ids"
    )


def select_tiles(
    grid_path: Path,
    split: Split | str | None = None,
    tiles: Path | None = None,
    limit: int | None = None,
    warnings: tuple[str, ...] = (),
) -> Selection:
    """The tiles of the grid at ``grid_path`` in ``split``, listed in ``tiles`` (a file of
    ids), at most ``limit``; ``warnings`` (the caller's) come first in the selection's."""
    from m3leo_tiles.grid import read_grid

    chosen_split = Split(split) if split is not None else None
    the_grid = read_grid(grid_path, splits=chosen_split is not None)
    identifiers = read_tile_ids(tiles) if tiles is not None else None
    notes = (f"grid: {Path(grid_path).resolve()} ({len(the_grid)} tiles)",)
    said = list(warnings)
    if identifiers is not None and tiles is not None:
        unknown = _unknown_ids_warning(the_grid, identifiers, tiles, grid_path)
        said += [unknown] if unknown else []
    selected = the_grid.select(split=chosen_split, identifiers=identifiers, limit=limit)
    if not selected:
        raise _nothing_selected(the_grid, grid_path, chosen_split, tiles)
    return Selection(the_grid.aoi, selected, notes, tuple(said))


MAX_YEARS = 50  # more is a typo (2018-20180), not a plan: each year is a whole dataset
YearSpec = int | str | Sequence[int] | None
_YEAR_FORM = "a year (2020), a range (2018-2020) or a list (2018,2020)"


def _one_year(text: str, given: str) -> int:
    if not text.strip().isdigit():
        raise ConfigError(f"--year {given!r}: not {_YEAR_FORM}")
    return int(text)


def _years_of_text(text: str) -> list[int]:
    """``2020``, ``2018-2020`` and ``2018,2020`` (items may be ranges: ``2016-2018,2020``)."""
    years: list[int] = []
    for item in text.split(","):
        first, dash, last = item.partition("-")
        start = _one_year(first, text)
        end = _one_year(last, text) if dash else start
        if end < start:
            raise ConfigError(f"--year {text!r}: the range {item.strip()} ends before it starts")
        if end - start >= MAX_YEARS:
            raise ConfigError(f"--year {text!r}: more than {MAX_YEARS} years in one run")
        years.extend(range(start, end + 1))
    return years


def parse_years(year: YearSpec) -> tuple[int, ...] | None:
    """The years a run makes, in order and each once; ``None`` for the recipe's default.

    Several years are several datasets made in turn by one run (the paper's 2018-2020), so a
    typo must not become a long run: a range that ends before it starts, text that is not a
    year, or more than ``MAX_YEARS`` years are refused before any work.
    """
    if year is None:
        return None
    if isinstance(year, bool):
        raise ConfigError(f"--year {year!r}: not {_YEAR_FORM}")
    if isinstance(year, int):
        years = [year]
    elif isinstance(year, str):
        years = _years_of_text(year)
    else:
        years = [_one_year(str(y), str(list(year))) if not isinstance(y, int) else y
                 for y in year]  # fmt: skip
    unique = tuple(dict.fromkeys(years))
    if not unique:
        raise ConfigError(f"--year: no year given; give {_YEAR_FORM}")
    if len(unique) > MAX_YEARS:
        raise ConfigError(f"--year: {len(unique)} years, more than {MAX_YEARS} in one run")
    return unique
