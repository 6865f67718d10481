"""The ``m3leo-tiles`` command: a thin typer layer over the Python API.

Each command parses options, calls one API function and prints a summary. Errors the user can
act on (``M3leoError``) become one line on stderr and exit code 2 (or their own code); nothing
here holds logic a notebook user could not reach through the API.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from m3leo_tiles import __version__
from m3leo_tiles.errors import ConfigError, M3leoError

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
from m3leo_tiles.enums import GridFormat  # noqa: E402  (typer reads it from the module's globals)


@app.command()
def grid(
    aoi: Annotated[
        str,
        typer.Option(
            help="A built-in AOI (see `m3leo-tiles aois`) or a GeoJSON/GeoPackage/shapefile/WKT "
            "file in any CRS."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for tiles.geojson and splits.csv (default: grids/<aoi>)."),
    ] = None,
    format: Annotated[
        GridFormat, typer.Option("--format", help="geojson (EPSG:4326) or GeoParquet.")
    ] = GridFormat.GEOJSON,
    bands: Annotated[int, typer.Option(help="Number of parallel split bands.")] = 60,
    angle: Annotated[
        float | None,
        typer.Option(
            help="Direction the bands run, radians clockwise from west (0: west-east strips, "
            "1.57: north-south); default: the paper's angle for built-in AOIs, else 0.9."
        ),
    ] = None,
    ratios: Annotated[
        str, typer.Option(help="Bands of train:val:test in each repeat of the pattern.")
    ] = "3:1:1",
    seed: Annotated[
        int,
        typer.Option(
            help="Start the train/val/test pattern this many bands later (0-4 for 3:1:1 give "
            "the five distinct deals; same seed, same splits)."
        ),
    ] = 0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar; print only the summary.")
    ] = False,
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
    the current folder. The AOI is cut into --bands parallel strips of equal
    ground width running at --angle, dealt out train/val/test by --ratios.

    \b
    Examples:
      m3leo-tiles grid --aoi conus
      m3leo-tiles grid --aoi demo --out /tmp/demo-grid --format parquet
      m3leo-tiles grid --aoi field.gpkg --angle 0 --ratios 8:1:1 --seed 2
    """
    from m3leo_tiles.grid import make_grid

    result = make_grid(
        aoi,
        out_dir=out,
        fmt=format,
        bands=bands,
        angle=angle,
        ratios=ratios,
        seed=seed,
        progress=not quiet and sys.stderr.isatty(),
    )
    typer.echo(result.summary())


@app.command()
def aois() -> None:
    """List the built-in AOIs: name, area, tile count, bounding box, description.

    They are unions of Natural Earth countries (see scripts/build_aois.py); use the name with
    `m3leo-tiles grid --aoi NAME`, or pass your own geometry file instead.
    """
    from m3leo_tiles.grid import list_aois

    found = list_aois()
    if not found:
        raise ConfigError("no built-in AOI files found; reinstall m3leo-tiles")
    width = max(len(info.name) for info in found)
    header = f"{'name'.ljust(width)}  {'area km²':>11}  {'tiles':>9}  {'bbox (W,S,E,N)':<29}"
    typer.echo(f"{header}  about")
    for info in found:
        bbox = ",".join(f"{v:.1f}" for v in info.bbox)
        typer.echo(
            f"{info.name.ljust(width)}  {info.area_km2:>11,.0f}  {info.approx_tiles:>9,}  "
            f"{bbox:<29}  {info.description}"
        )


# --- end grid commands ---------------------------------------------------------------------


# --- engine commands (recipes, fetch, status) ----------------------------------------------
from m3leo_tiles.enums import Split  # noqa: E402  (typer reads it from the module's globals)


@app.command()
def recipes() -> None:
    """List the recipes you can fetch: built-in ones and your own YAML files.

    Example: m3leo-tiles recipes
    """
    from m3leo_tiles.recipes import list_recipes

    found = list_recipes()
    name_width = max((len(info.name) for info in found), default=0)
    origin_width = max((len(info.origin) for info in found), default=0)
    for info in found:
        typer.echo(
            f"{info.name.ljust(name_width)}  {info.origin.ljust(origin_width)}  "
            f"{info.source:<7} {info.description}".rstrip()
        )


def _source_options_epilog() -> str:
    """The options each source declares, for ``fetch --help`` (the CLI names no source)."""
    from m3leo_tiles.sources.base import available_sources

    lines = []
    for name, adapter in available_sources().items():
        if name.startswith("fake-") or name.startswith("slow-"):
            continue  # test-only adapters registered by the test suite
        for option in adapter.cli_options:
            spelled = f"--{option.name}" + ("" if option.flag else f" {option.metavar}")
            env = f" [env {option.env}]" if option.env else ""
            default = f" [default {option.default}]" if option.default is not None else ""
            lines.append(f"  {spelled:<28} {option.help}{env}{default}")
    if not lines:
        return ""
    heading = "Source options (given to the recipe's source; never part of its hash):"
    return "\b\n" + heading + "\n" + "\n".join(lines)


def parse_source_options(args: list[str]) -> dict[str, str | bool]:
    """``--name value``, ``--name=value`` and ``--flag`` from the arguments typer left over,
    checked against the options that sources declare."""
    from m3leo_tiles.sources.base import available_sources

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


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog=_source_options_epilog(),
)
def fetch(
    ctx: typer.Context,
    recipe: Annotated[
        str,
        typer.Argument(help="A built-in recipe name (see `m3leo-tiles recipes`) or a YAML file."),
    ],
    aoi: Annotated[
        str | None, typer.Option(help="AOI name; its grid is used, or built if missing.")
    ] = None,
    grid: Annotated[
        Path | None, typer.Option(help="A grid file (ours, or any file with identifier+geometry).")
    ] = None,
    year: Annotated[
        int | None, typer.Option(help="Year of the data (recipe default if unset).")
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Output root: chips go to OUT/<aoi>/<dataset>/.")
    ] = Path("data"),
    workers: Annotated[
        int | None, typer.Option(help="Local worker processes (default: one per CPU core).")
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(help="Run on an existing dask cluster, e.g. tcp://10.0.0.5:8786."),
    ] = None,
    split: Annotated[Split | None, typer.Option(help="Only the tiles of this split.")] = None,
    tiles: Annotated[
        Path | None, typer.Option(help="A text file of tile ids, one per line: only those.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many tiles (for trials).")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Redo every tile, even finished ones.")
    ] = False,
    source: Annotated[
        list[str] | None,
        typer.Option(help="Input file(s) replacing the recipe's own; repeat for several."),
    ] = None,
    cache: Annotated[
        Path | None,
        typer.Option(
            help="Shared download cache for remote sources (default OUT/.cache); safe to "
            "share between runs and workers."
        ),
    ] = None,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="For cron: no progress bar; print only problems."),
    ] = False,
    grids_dir: Annotated[Path, typer.Option(help="Where grid files are kept.")] = Path("grids"),
) -> None:
    """Make the chips of RECIPE for every tile of a grid, resuming where the last run stopped.

    Chips go to OUT/<aoi>/<dataset>/<tile_id>.tif with a manifest.csv and a fetch.log beside
    them. A rerun skips finished tiles and retries failed ones.

    Exit codes: 0 all done, 1 some tiles failed (see manifest.csv), 2 bad usage or another
    run holds the folder, 130 interrupted.

    \b
    Examples:
      m3leo-tiles fetch demo-dem --aoi demo
      m3leo-tiles fetch my-recipe.yaml --grid grids/demo.geojson --workers 4 --split train
      m3leo-tiles fetch agb --aoi conus --year 2019 --scheduler tcp://10.0.0.5:8786 --quiet
    """
    from m3leo_tiles.runner import fetch as run_fetch

    options = parse_source_options(list(ctx.args))
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
    )
    if not quiet:
        typer.echo(report.summary())
    elif report.failed:
        typer.echo(report.summary(), err=True)
    if report.failed and not quiet:
        typer.echo(
            f"{report.failed} tiles failed; reasons in {report.dataset_dir / 'manifest.csv'} "
            "and fetch.log; rerun the same command to retry them",
            err=True,
        )
    raise typer.Exit(report.exit_code)


@app.command()
def status(
    out: Annotated[Path, typer.Argument(help="Output root given to fetch --out.")] = Path("data"),
    grids_dir: Annotated[Path, typer.Option(help="Where grid files are kept.")] = Path("grids"),
) -> None:
    """Summarise every dataset under OUT: tiles ok / empty / no-source / failed / missing.

    "missing" counts grid tiles with no manifest row (shown as ? when the AOI's grid file is
    not found under --grids-dir).

    \b
    Examples:
      m3leo-tiles status
      m3leo-tiles status /data/m3leo --grids-dir /data/grids
    """
    from m3leo_tiles.status import format_status_table
    from m3leo_tiles.status import status as read_status

    if not out.is_dir():
        raise ConfigError(f"{out} is not a folder; pass the --out folder that fetch wrote to")
    found = read_status(out, grids_dir)
    if not found:
        typer.echo(f"no datasets under {out}/ yet; make one with `m3leo-tiles fetch RECIPE`")
        return
    typer.echo(format_status_table(found))


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
    from m3leo_tiles.quicklook import quicklook as draw_quicklook

    for folder in datasets:
        if not folder.is_dir():
            raise ConfigError(f"{folder} is not a dataset folder; see `m3leo-tiles status`")
    path = draw_quicklook(datasets, out, max_px=size, max_tiles=max_tiles)
    typer.echo(f"wrote {path}")


# --- end lead commands ---------------------------------------------------------------------


@app.callback()
def _root() -> None:
    """Build ML-ready Earth-observation datasets on an exact global 4480 m UTM tile grid."""


@app.command()
def version() -> None:
    """Print the installed m3leo-tiles version."""
    typer.echo(__version__)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning user errors into one line and an exit code.

    Exit codes: 0 all done, 1 some tiles failed (recorded), 2 usage or configuration error
    (typer reports bad options itself, also with 2), 130 interrupted.
    """
    try:
        app(args=argv)
    except M3leoError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted; finished work is kept, rerun the same command to resume", err=True)
        sys.exit(130)
