"""The ``m3leo-tiles`` command: a thin typer layer over the Python API.

Each command parses options, calls one API function and prints a summary. Errors the user can
act on (``M3leoError``) become one line on stderr and exit code 2 (or their own code); nothing
here holds logic a notebook user could not reach through the API.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from m3leo_tiles import __version__
from m3leo_tiles.cli.common import exit_code_of_interrupt, metavars_for_people, run_app
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.core.redact import redact

metavars_for_people()

app = typer.Typer(
    name="m3leo-tiles",
    help=(
        "Build ML-ready Earth-observation datasets on an exact global 4480 m UTM tile grid.\n\n"
        "Typical session: `m3leo-tiles grid --aoi conus`, then "
        "`m3leo-tiles fetch agb --aoi conus --year 2020`, then `m3leo-tiles status`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# --- grid commands (grid, aois) ------------------------------------------------------------
from m3leo_tiles.core.enums import GridFormat  # noqa: E402  (typer reads it from the module's globals)

# grid's options (named here, so that the command reads as its steps)
_GridAoi = Annotated[
    str,
    typer.Option(
        help="A built-in AOI (see `m3leo-tiles aois`) or a GeoJSON/GeoPackage/shapefile/WKT "
        "file in any CRS."
    ),
]
_GridOut = Annotated[
    Path | None,
    typer.Option(help="Folder for tiles.geojson and splits.csv (default: grids/<aoi>)."),
]
_GridFormat = Annotated[
    GridFormat, typer.Option("--format", help="geojson (EPSG:4326) or GeoParquet.")
]
_GridAngle = Annotated[
    float | None,
    typer.Option(
        help="Direction the bands run, radians clockwise from west (0: west-east strips, "
        "1.57: north-south); default: the paper's angle for built-in AOIs, else 0.9."
    ),
]
_GridRatios = Annotated[
    str, typer.Option(help="Bands of train:val:test in each repeat of the pattern.")
]
_GridSeed = Annotated[
    int,
    typer.Option(
        help="Start the train/val/test pattern this many bands later (0-4 for 3:1:1 give "
        "the five distinct deals; same seed, same splits)."
    ),
]
_GridQuiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bar; print only the summary.")
]
_GridYes = Annotated[
    bool,
    typer.Option("--yes", help="Grid an AOI of more than 3 million tiles (refused without it)."),
]
_GridName = Annotated[
    str | None,
    typer.Option(
        help="The AOI's name in the grid and its folders (default: the built-in name or "
        "the file's stem); what `fetch --aoi NAME` then uses."
    ),
]


@app.command()
def grid(
    aoi: _GridAoi,
    out: _GridOut = None,
    format: _GridFormat = GridFormat.GEOJSON,
    bands: Annotated[int, typer.Option(help="Number of parallel split bands.")] = 60,
    angle: _GridAngle = None,
    ratios: _GridRatios = "3:1:1",
    seed: _GridSeed = 0,
    quiet: _GridQuiet = False,
    yes: _GridYes = False,
    name: _GridName = None,
) -> None:
    """Lay the global 4480 m tile grid over an AOI; split it into train/val/test.

    A tile is an exact 4480 m x 4480 m square of its UTM zone's lattice
    (EPSG:326zz north, 327zz south), counted from the equator, with a stable
    id such as 33N_1187_089 (zone+hemisphere, row, column): the same place
    gets the same id in any AOI. Along the 6° zone seams the tiles of both
    zones reach over, so nothing is left uncovered; those tiles are flagged
    seam=true and their overlap is reported in km².

    Writes OUT/tiles.geojson (EPSG:4326; or tiles.parquet) with identifier,
    aoi, utm_epsg, x_min, y_min, band, split, seam per tile, and
    OUT/splits.csv (identifier,split,band). OUT defaults to grids/<aoi> in
    the current folder; <aoi> is --name, else the built-in name or the
    file's stem, and must be a safe folder name (as for `fetch --aoi`).
    The AOI is cut into --bands parallel strips of equal ground width
    running at --angle, dealt out train/val/test by --ratios.

    \b
    Examples:
      m3leo-tiles grid --aoi conus
      m3leo-tiles grid --aoi demo --out /tmp/demo-grid --format parquet
      m3leo-tiles grid --aoi field.gpkg --angle 0 --ratios 8:1:1 --seed 2
      m3leo-tiles grid --aoi "my field.wkt" --name my-field
    """
    from m3leo_tiles.grid import make_grid
    from m3leo_tiles.grid.build import LARGE_GRID_TILES

    result = make_grid(
        aoi,
        out_dir=out,
        fmt=format,
        bands=bands,
        angle=angle,
        ratios=ratios,
        seed=seed,
        progress=not quiet and sys.stderr.isatty(),
        max_tiles=None if yes else LARGE_GRID_TILES,
        name=name,
    )
    typer.echo(result.summary())


@app.command()
def aois() -> None:
    """List the built-in AOIs: name, area, tile count, bounding box, description.

    They are unions of Natural Earth countries (see scripts/build_aois.py); use the name with
    `m3leo-tiles grid --aoi NAME`, or pass your own geometry file instead. "AOI km²" is the
    AOI's own area; `grid` also reports the area of its tiles, which is larger (tiles along
    the edge reach past the AOI) and "~tiles" estimates their number.
    """
    from m3leo_tiles.grid import list_aois

    found = list_aois()
    if not found:
        raise ConfigError("no built-in AOI files found; reinstall m3leo-tiles")
    width = max(len(info.name) for info in found)
    header = f"{'name'.ljust(width)}  {'AOI km²':>11}  {'~tiles':>9}  {'bbox (W,S,E,N)':<29}"
    typer.echo(f"{header}  about")
    for info in found:
        bbox = ",".join(f"{v:.1f}" for v in info.bbox)
        typer.echo(
            f"{info.name.ljust(width)}  {info.area_km2:>11,.0f}  {info.approx_tiles:>9,}  "
            f"{bbox:<29}  {info.description}"
        )


# --- end grid commands ---------------------------------------------------------------------


# --- engine commands (recipes, fetch, status) ----------------------------------------------
from m3leo_tiles.core.enums import ChipCodec, Split  # noqa: E402  (typer reads it from the module's globals)


@app.command()
def recipes() -> None:
    """List the recipes you can fetch: built-in ones and your own YAML files.

    Example: m3leo-tiles recipes
    """
    from m3leo_tiles.recipes import list_recipes

    found = list_recipes()
    name_width = max((len(info.name) for info in found), default=0)
    origin_width = max((len(info.origin) for info in found), default=0)
    source_width = max((len(info.source) for info in found), default=0)
    for info in found:
        typer.echo(
            f"{info.name.ljust(name_width)}  {info.origin.ljust(origin_width)}  "
            f"{info.source.ljust(source_width)}  {info.description}".rstrip()
        )
        typer.echo(f"{'':{name_width}}  from {_shown_path(info.path)}")
        for hidden in info.shadows:
            typer.echo(f"{'':{name_width}}  (hides {_shown_path(hidden)})")


def _shown_path(path: Path) -> str:
    """A path relative to the current folder when it is below it, else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _source_options_epilog() -> str:
    """The options each source declares, for ``fetch --help`` (the CLI names no source)."""
    from m3leo_tiles.sources.base import available_sources

    lines = []
    for adapter in available_sources().values():
        for option in adapter.cli_options:
            spelled = f"--{option.name}" + ("" if option.flag else f" {option.metavar}")
            env = f" [env {option.env}]" if option.env else ""
            default = f" [default {option.default}]" if option.default is not None else ""
            lines.append(f"  {spelled:<28} {option.help}{env}{default}")
    if not lines:
        return ""
    heading = "Source options (given to the recipe's source; never part of its hash):"
    return "\b\n" + heading + "\n" + "\n".join(lines)


class _FetchCommand(TyperCommand):
    """``fetch``, whose epilog lists every source's options: it is made when help is shown,
    because loading every source costs each command's start-up ~0.35 s (a cron status)."""

    @property
    def epilog(self) -> str | None:
        if self._epilog is None:
            self._epilog = _source_options_epilog()
        return self._epilog

    @epilog.setter
    def epilog(self, value: str | None) -> None:
        self._epilog = value


def parse_source_options(args: list[str]) -> dict[str, str | bool]:
    """``--name value``, ``--name=value`` and ``--flag`` from the arguments typer left over,
    checked against the options that sources declare."""
    from m3leo_tiles.sources.base import available_sources

    if not args:  # loading every source to check nothing would cost a rerun ~0.35 s
        return {}
    declared = {o.name: o for a in available_sources().values() for o in a.cli_options}
    values: dict[str, str | bool] = {}
    rest = list(args)
    while rest:
        word = rest.pop(0)
        name, equals, value = word.removeprefix("--").partition("=")
        if not word.startswith("--") or name not in declared:
            known = ", ".join(f"--{n}" for n in sorted(declared)) or "none"
            raise ConfigError(
                f"unknown option or argument {word!r} for fetch; source options: {known} "
                "(see `m3leo-tiles fetch --help`)"
            )
        if declared[name].flag:
            if equals:
                raise ConfigError(f"--{name} is a switch and takes no value")
            values[name] = True
            continue
        if not equals:
            if not rest or rest[0].startswith("--"):
                raise ConfigError(f"--{name} needs a value ({declared[name].metavar})")
            value = rest.pop(0)
        values[name] = value
    return values


# fetch's arguments and options (named here, so that the command reads as its steps)
_FetchRecipe = Annotated[
    str,
    typer.Argument(
        metavar="RECIPE",
        help="A built-in recipe name (see `m3leo-tiles recipes`) or a YAML file.",
    ),
]
_FetchAoi = Annotated[
    str | None,
    typer.Option(metavar="NAME", help="AOI name; its grid is used, or built if missing."),
]
_FetchGrid = Annotated[
    Path | None,
    typer.Option(metavar="FILE", help="A grid file (ours, or any file with identifier+geometry)."),
]
_FetchYear = Annotated[
    str | None,
    typer.Option(
        metavar="YEAR",
        help="Year of the data (recipe default if unset); several years make one dataset "
        "each in turn, on one cluster: 2018-2020 or 2018,2020.",
    ),
]
_FetchOut = Annotated[
    Path, typer.Option(metavar="DIR", help="Output root: chips go to OUT/<aoi>/<dataset>/.")
]
_FetchWorkers = Annotated[
    int | None,
    typer.Option(metavar="N", help="Local worker processes (default: one per CPU core)."),
]
_FetchScheduler = Annotated[
    str | None,
    typer.Option(
        metavar="ADDRESS", help="Run on an existing dask cluster, e.g. tcp://10.0.0.5:8786."
    ),
]
_FetchTiles = Annotated[
    Path | None,
    typer.Option(metavar="FILE", help="A text file of tile ids, one per line: only those."),
]
_FetchLimit = Annotated[
    int | None, typer.Option(metavar="N", help="At most this many tiles (for trials).")
]
_FetchOverwrite = Annotated[
    bool, typer.Option("--overwrite", help="Redo every tile, even finished ones.")
]
_FetchSource = Annotated[
    list[str] | None,
    typer.Option(
        metavar="[LAYER=]PATH",
        help="Input file(s) replacing the recipe's own, relative to the current folder; "
        "repeat for several. For a recipe with layers: LAYER=PATH (e.g. agb=/data/a.tif).",
    ),
]
_FetchCache = Annotated[
    Path | None,
    typer.Option(
        help="Shared download cache for remote sources (default OUT/.cache); safe to "
        "share between runs and workers."
    ),
]
_FetchQuiet = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="For cron: no progress bar; print only problems."),
]
_FetchCompress = Annotated[
    ChipCodec | None,
    typer.Option(
        help="How new chips are stored (default: the recipe's compress, else zstd). Finished "
        "chips are kept as they are: the codec is no part of the recipe hash."
    ),
]
_FetchGridsDir = Annotated[Path, typer.Option(metavar="DIR", help="Where grid files are kept.")]


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    cls=_FetchCommand,
)
def fetch(
    ctx: typer.Context,
    recipe: _FetchRecipe,
    aoi: _FetchAoi = None,
    grid: _FetchGrid = None,
    year: _FetchYear = None,
    out: _FetchOut = Path("data"),
    workers: _FetchWorkers = None,
    scheduler: _FetchScheduler = None,
    split: Annotated[Split | None, typer.Option(help="Only the tiles of this split.")] = None,
    tiles: _FetchTiles = None,
    limit: _FetchLimit = None,
    overwrite: _FetchOverwrite = False,
    source: _FetchSource = None,
    cache: _FetchCache = None,
    quiet: _FetchQuiet = False,
    grids_dir: _FetchGridsDir = Path("grids"),
    compress: _FetchCompress = None,
) -> None:
    """Make the chips of RECIPE for every tile of a grid, resuming where the last run stopped.

    Chips go to OUT/<aoi>/<dataset>/<tile_id>.tif with a manifest.csv and a fetch.log beside
    them. A rerun skips finished tiles and retries failed ones.

    Exit codes: 0 all done, 1 some tiles failed (see manifest.csv) or the run found nothing
    at all (every tile empty or without a source: it says why), 2 bad usage, another run
    holds the folder, the first tiles all failed the same way or a host could not be
    reached (say why), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM); finished chips
    are kept in every case.

    \b
    Examples:
      m3leo-tiles fetch demo-dem --aoi demo
      m3leo-tiles fetch my-recipe.yaml --grid grids/demo/tiles.geojson --workers 4 --split train
      m3leo-tiles fetch agb --aoi conus --year 2019 --scheduler tcp://10.0.0.5:8786 --quiet
      m3leo-tiles fetch s1grd --aoi conus --year 2018-2020
    """
    from m3leo_tiles.fetch.api import fetch as run_fetch

    options = parse_source_options(list(ctx.args))
    try:
        report = run_fetch(
            recipe,
            aoi=aoi,
            grid=grid,
            year=year,
            out=out,
            workers=workers,
            scheduler=scheduler,
            split=split,
            tiles=tiles,
            limit=limit,
            overwrite=overwrite,
            sources=tuple(source or ()),
            cache=cache,
            options=options,
            progress=not quiet,
            grids_dir=grids_dir,
            compress=compress,
        )
    except KeyboardInterrupt as error:  # typer would turn it into a silent exit 130
        raise typer.Exit(_interrupted(error)) from None
    for one in getattr(report, "reports", (report,)):  # several years: each year's summary
        _say_fetch_report(one, quiet)
    raise typer.Exit(report.exit_code)


def _say_fetch_report(report: Any, quiet: bool) -> None:
    """The summary on stdout (stderr with --quiet, only when tiles failed) and the warnings."""
    if not quiet:
        typer.echo(report.summary())
    elif report.failed:
        typer.echo(report.summary(), err=True)
    if report.nothing:
        typer.echo(f"warning: {report.nothing}", err=True)
    if report.failed and not quiet:
        typer.echo(
            f"{report.failed} tiles failed; reasons in {report.dataset_dir / 'manifest.csv'} "
            "and fetch.log; rerun the same command to retry them",
            err=True,
        )


@app.command()
def status(
    out: Annotated[Path, typer.Argument(help="Output root given to fetch --out.")] = Path("data"),
    grids_dir: Annotated[
        Path, typer.Option(help="Where grid files are kept.", metavar="DIR")
    ] = Path("grids"),
    grid: Annotated[
        Path | None,
        typer.Option(
            help="The grid file fetch used (for its AOI's 'missing' count), when it is not "
            "under --grids-dir.",
            metavar="FILE",
        ),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Read every chip back (size, CRC-32, every pixel through GDAL); damaged ones "
            "are recorded failed so that the next fetch makes them again. Exit 1 if any.",
        ),
    ] = False,
    map_path: Annotated[
        Path | None,
        typer.Option(
            "--map",
            help="Also write a map of the run to FILE: one self-contained HTML page (no "
            "network needed) with every tile coloured by status per dataset; hover or click "
            "a tile for its id, status and reason.",
            metavar="FILE",
        ),
    ] = None,
) -> None:
    """Summarise every dataset under OUT: tiles ok / empty / no-source / failed / missing.

    "missing" counts grid tiles with no manifest row (shown as ? when the AOI's grid file is
    not found under --grids-dir and not given with --grid). The last column says whether a
    run is writing the folder now (its pid, host and start), or a lock was left behind.

    \b
    Examples:
      m3leo-tiles status
      m3leo-tiles status /data/m3leo --grids-dir /data/grids
      m3leo-tiles status --grid my-tiles.geojson
      m3leo-tiles status --verify
      m3leo-tiles status --map map.html
    """
    from m3leo_tiles.tools.status import format_status_table
    from m3leo_tiles.tools.status import status as read_status

    if not out.is_dir():
        where = out if out.is_absolute() else f"{out} (in {Path.cwd()})"
        raise ConfigError(
            f"no output folder {where}; status looks for OUT/<aoi>/<dataset>/manifest.csv "
            "under the folder fetch wrote to: pass it, e.g. `m3leo-tiles status /data/m3leo`"
        )
    if map_path is not None:
        from m3leo_tiles.tools.runmap import map_path_problem

        problem = map_path_problem(map_path)
        if problem is not None:
            raise ConfigError(problem)
    found = read_status(out, grids_dir, grid=grid)
    if not found:
        typer.echo(
            f"no datasets under {out}/ yet (looked for {out}/<aoi>/<dataset>/ holding "
            "manifest.csv or chips); make one with `m3leo-tiles fetch RECIPE`"
        )
        return
    if verify:
        from m3leo_tiles.tools.status import verify_dataset

        checks = [verify_dataset(dataset.folder) for dataset in found]
        found = read_status(out, grids_dir, grid=grid)  # with the damaged tiles now failed
    typer.echo(format_status_table(found))
    if map_path is not None:
        from m3leo_tiles.tools.runmap import write_run_map

        written = write_run_map(out, map_path, grids_dir, grid=grid)
        typer.echo(written.summary())
    if verify:
        for check in checks:
            typer.echo(check.summary())
        if any(check.damaged for check in checks):
            raise typer.Exit(1)


@app.command()
def inputs(
    dataset: Annotated[Path, typer.Argument(help="A dataset folder: OUT/<aoi>/<dataset>.")],
    tiles: Annotated[list[str], typer.Argument(help="Tile ids, e.g. 11S_0838_169.")],
) -> None:
    """Print the input files that made each tile's chip, one per line, after a `# TILE` line.

    The manifest names each tile's inputs by a reference to a list kept once in the
    folder's input-sets.jsonl; this looks it up (older manifests hold the paths inline).
    Exit 1 if a tile has no row in the manifest.

    Example: m3leo-tiles inputs data/conus/gssic 11S_0838_169
    """
    from m3leo_tiles.tools.status import tile_inputs

    found = tile_inputs(dataset, tiles)
    for tile, paths in found.items():
        typer.echo(f"# {tile}" + (": no row in manifest.csv" if paths is None else ""))
        for path in paths or ():
            typer.echo(path)
    if any(paths is None for paths in found.values()):
        raise typer.Exit(1)


# --- end engine commands -------------------------------------------------------------------


# --- lead commands (quicklook) -------------------------------------------------------------
@app.command()
def quicklook(
    datasets: Annotated[
        list[Path],
        typer.Argument(help="Dataset folders, e.g. data/demo/demo-dem (one panel per UTM zone)."),
    ],
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("quicklook.png"),
    max_tiles: Annotated[int, typer.Option(help="At most this many chips per dataset.")] = 400,
    size: Annotated[int, typer.Option(help="Panel size in pixels.")] = 480,
) -> None:
    """Draw a PNG mosaic of the chips of one or more datasets, with tile outlines on top.

    Example: m3leo-tiles quicklook data/demo/demo-s2 data/demo/demo-dem --out look.png
    """
    from m3leo_tiles.tools.quicklook import quicklook as draw_quicklook

    path = draw_quicklook(
        datasets,
        out,
        max_px=size,
        max_tiles=max_tiles,
        warn=lambda message: typer.echo(f"warning: {message}", err=True),
    )
    typer.echo(f"wrote {path}")


# --- end lead commands ---------------------------------------------------------------------


# --- consumer commands (stats, pack) -------------------------------------------------------
@app.command()
def stats(
    dataset: Annotated[
        str,
        typer.Argument(
            help="A dataset folder (data/demo/demo-s2) or its name under --root (demo-s2, agb)."
        ),
    ],
    split: Annotated[
        str, typer.Option(help="Split whose tiles are measured (train, val, test, or all).")
    ] = "train",
    root: Annotated[Path, typer.Option(help="The --out folder of fetch.")] = Path("data"),
    aoi: Annotated[str | None, typer.Option(help="AOI folder, when the name is ambiguous.")] = None,
    grid: Annotated[
        Path | None, typer.Option(help="Grid file with the splits (default: the AOI's grid).")
    ] = None,
    grids_dir: Annotated[Path, typer.Option(help="Where grid files are kept.")] = Path("grids"),
) -> None:
    """Per-band statistics of a dataset's chips over one split, written beside the chips.

    Count of valid pixels, mean, std, min, max and percentiles (exact for 8/16-bit chips),
    streamed one chip at a time, into OUT/<aoi>/<dataset>/stats-<split>.json. The torch
    Dataset's normalize=True and m3leo-train read the train split's file.

    \b
    Examples:
      m3leo-tiles stats demo-s2
      m3leo-tiles stats data/conus/agb-2020 --split val
    """
    from m3leo_tiles.tools.stats import format_stats, stats_command

    chosen = None if split == "all" else split
    if chosen is not None and chosen not in {s.value for s in Split}:
        raise ConfigError(f"unknown split {split!r}; use train, val, test or all")
    result, path = stats_command(
        dataset, root=root, aoi=aoi, split=chosen, grid=grid, grids_dir=grids_dir
    )
    typer.echo(format_stats(result))
    typer.echo(f"{result.chips} chips of split {result.split} → {path}")


@app.command()
def catalog(
    datasets: Annotated[
        list[str],
        typer.Argument(
            help="Dataset folders (data/conus/gssic) or names under --root (gssic, agb-2020)."
        ),
    ],
    root: Annotated[Path, typer.Option(help="The --out folder of fetch.")] = Path("data"),
    aoi: Annotated[str | None, typer.Option(help="AOI folder, when a name is ambiguous.")] = None,
    json_items: Annotated[
        bool,
        typer.Option(
            "--json", help="Also one Item JSON per chip under items/ (small datasets, hosting)."
        ),
    ] = False,
    recipe: Annotated[
        str | None,
        typer.Option(help="The recipe (name or YAML) that made the chips (default: theirs)."),
    ] = None,
    grid: Annotated[
        Path | None, typer.Option(help="Grid file with the splits (default: the AOI's grid).")
    ] = None,
    grids_dir: Annotated[Path, typer.Option(help="Where grid files are kept.")] = Path("grids"),
) -> None:
    """Write a dataset's STAC catalog beside its chips: collection.json and items.parquet.

    The Collection (description, license and provenance from the recipe, extent, bands, grid,
    splits) and one Item per chip (footprint, proj:*, file:size and checksum, ml-aoi:split)
    as stac-geoparquet; with --json one Item JSON per chip as well. fetch keeps it up to date;
    a rerun rewrites only what changed, and nothing when nothing did.

    \b
    Examples:
      m3leo-tiles catalog gssic
      m3leo-tiles catalog data/demo/demo-s2 --json
    """
    from m3leo_tiles.tools.catalog import catalog_command

    catalog_command(datasets, root=root, aoi=aoi, recipe=recipe, grid=grid, grids_dir=grids_dir,
                    json_items=json_items or None,
                    progress=lambda report: typer.echo(report.summary()))  # fmt: skip


@app.command()
def pack(
    dataset: Annotated[str, typer.Argument(help="A dataset folder or its name under --root.")],
    root: Annotated[Path, typer.Option(help="The --out folder of fetch.")] = Path("data"),
    aoi: Annotated[str | None, typer.Option(help="AOI folder, when the name is ambiguous.")] = None,
) -> None:
    """Pack a dataset's chips into one uncompressed array for fast training (optional).

    Writes OUT/<aoi>/<dataset>/pack/ (chips.npy + index.json). The torch Dataset reads it
    instead of the GeoTIFFs while it matches the chips (name, size, mtime of each); after a
    fetch changed the folder it reads the chips again until you rerun pack.

    Example: m3leo-tiles pack demo-s2
    """
    from m3leo_tiles.dataset.chipsets import find_dataset
    from m3leo_tiles.tools.pack import pack as pack_dataset
    from m3leo_tiles.tools.pack import pack_dir

    folder = find_dataset(dataset, root, aoi)
    index = pack_dataset(folder)
    typer.echo(
        f"packed {len(index.ids)} chips ({len(index.bands)} bands, {index.height}x{index.width} "
        f"px, {index.dtype}) → {pack_dir(folder)}"
    )


# --- end consumer commands -----------------------------------------------------------------


@app.callback()
def _root() -> None:
    """Build ML-ready Earth-observation datasets on an exact global 4480 m UTM tile grid."""


@app.command()
def version() -> None:
    """Print the installed m3leo-tiles version."""
    typer.echo(__version__)


def _interrupted(error: KeyboardInterrupt) -> int:
    """Say in one line that a run was stopped; the exit code a shell expects for the signal."""
    text = str(error) or "interrupted; finished work is kept, rerun the same command to resume"
    typer.echo(redact(text), err=True)
    return exit_code_of_interrupt(error)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning user errors into one line and an exit code.

    Exit codes: 0 all done, 1 some tiles failed (recorded), 2 usage or configuration error
    (a bad option value too: one ``error:`` line, not a box), 130 interrupted (Ctrl-C),
    143 terminated (SIGTERM during a fetch).
    """
    run_app(app, argv, "m3leo-tiles", on_interrupt=_interrupted)
