"""The ``gssic`` recipe (the raster source over GSSIC's 1° cells), from a mirror folder and
from a loopback bucket, checked against ``rasterio.warp.reproject`` of the merged cells.

The cells are faithful replicas of GSSIC files (tests/helpers/gssic_tiles.py: bucket keys,
1200 × 1200 3-arcsec EPSG:4326, uint8 coherence / uint16 amplitude, LZW, nodata 0). The
expectation is computed here independently: ``rasterio.merge`` of the cell files that exist,
then one ``reproject`` onto the tile's grid derived from its bounds, so a seam at a 1° line, a
shifted cell or a mixed-up band fails.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine
from rasterio.merge import merge
from rasterio.warp import Resampling, reproject

from helpers.gssic_tiles import SMALL_BANDS as BANDS
from helpers.gssic_tiles import SMALL_METRICS as METRICS
from helpers.gssic_tiles import cell_name, small_recipe, tile_key, write_mirror
from m3leo_tiles.core.errors import SourceError
from m3leo_tiles.grid.tile import TILE_SIZE_M, Tile
from m3leo_tiles.recipes import load_recipe, parse_recipe
from m3leo_tiles.sources.base import FetchOptions, get_source

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPE = REPO_ROOT / "recipes" / "gssic.yaml"

INSIDE = Tile.from_point(-117.5, 33.5)  # inside cell N34W118
CORNER = Tile.from_point(-118.0, 34.0)  # across 118°W and 34°N: four cells
SEAM = Tile.from_point(-120.0, 33.5, zone=10)  # zone 10 tile reaching over the 120°W seam
SOUTH = Tile.from_point(-60.0, -10.5)  # southern hemisphere, across 60°W
CASES = {"inside": INSIDE, "corner": CORNER, "utm-seam": SEAM, "south": SOUTH}


def source_for(recipe, **options):
    return get_source(recipe.source)(recipe, FetchOptions(**options))


def cells_of(tile: Tile) -> set[str]:
    west, south, east, north = tile.lonlat_polygon().bounds
    return {cell_name(lon, lat) for lon in (west, east) for lat in (south, north)}


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mirror")
    cells = set().union(*(cells_of(tile) for tile in CASES.values()))
    write_mirror(root, sorted(cells), ["winter"], ["vv"], METRICS)
    return root


def tile_grid(tile: Tile) -> tuple[Affine, int]:
    x0, _, _, y1 = tile.bounds
    return Affine(89.6, 0, x0, 0, -89.6, y1), round(TILE_SIZE_M / 89.6)


def expected_chip(root: Path, tile: Tile, resampling=Resampling.bilinear) -> np.ndarray:
    """``reproject`` of the merge of the cells' files that exist, band by band."""
    transform, size = tile_grid(tile)
    bands = []
    for metric in METRICS:
        files = sorted(
            str(path)
            for cell in cells_of(tile)
            if (path := root / tile_key(cell, "winter", "vv", metric)).exists()
        )
        out = np.zeros((size, size), "uint16")
        if files:
            mosaic, mosaic_transform = merge(files, nodata=0)
            reproject(
                mosaic[0], out, src_transform=mosaic_transform, src_crs="EPSG:4326",
                src_nodata=0, dst_transform=transform, dst_crs=tile.crs, dst_nodata=0,
                resampling=resampling,
            )  # fmt: skip
        bands.append(out)
    return np.stack(bands)


def render(source, tile: Tile):
    inputs = source.plan([tile])[tile.identifier]
    return source.render_tile(tile, inputs), inputs


def test_cells_planned_per_tile(tmp_path: Path, mirror: Path) -> None:
    source = source_for(small_recipe(tmp_path), sources=(str(mirror),))
    source.check()
    plan = source.plan(list(CASES.values()))
    for tile in CASES.values():
        planned = {Path(item.partition("=")[2]).parent.name for item in plan[tile.identifier]}
        assert planned == cells_of(tile)
        assert len(plan[tile.identifier]) == len(cells_of(tile)) * len(METRICS)
    assert len(cells_of(CORNER)) == 4 and len(cells_of(SEAM)) == 2 and len(cells_of(SOUTH)) == 2
    assert cells_of(SOUTH) == {"S10W061", "S10W060"}  # upper-left corner names the cell
    far_north = Tile.from_point(10.0, 83.0)  # beyond GSSIC's 82°N: no cell, no request
    assert source.plan([far_north])[far_north.identifier] == ()


@pytest.mark.parametrize("case", list(CASES))
def test_chip_equals_reproject_of_the_merged_cells(tmp_path: Path, mirror: Path, case) -> None:
    tile = CASES[case]
    chip, _ = render(source_for(small_recipe(tmp_path), sources=(str(mirror),)), tile)
    expected = expected_chip(mirror, tile)
    assert chip.band_names == BANDS and chip.data.dtype == np.uint16
    np.testing.assert_array_equal(chip.data, expected)
    assert (expected > 0).mean() > 0.7  # real values, not an all-nodata coincidence
    if tile is CORNER:  # each cell's nodata disc sits by its NW corner, elsewhere per band
        assert all((band == 0).any() for band in expected)
        assert (expected[0] == 0).sum() != (expected[1] == 0).sum()


def test_seam_is_gone_compared_with_one_warp_per_cell(tmp_path: Path, mirror: Path) -> None:
    """Why cells are mosaicked before the warp: separate bilinear warps differ at 1° lines."""
    chip, inputs = render(source_for(small_recipe(tmp_path), sources=(str(mirror),)), CORNER)
    transform, size = tile_grid(CORNER)
    per_cell = np.zeros((size, size), "uint16")
    for item in sorted(i for i in inputs if i.startswith(BANDS[0])):
        with rasterio.open(item.partition("=")[2]) as cell:
            reproject(rasterio.band(cell, 1), per_cell, dst_transform=transform,
                      dst_crs=CORNER.crs, dst_nodata=0, resampling=Resampling.bilinear,
                      init_dest_nodata=False)  # fmt: skip
    assert (per_cell != chip.data[0]).any()


def test_band_scale_offset_and_amplitude_formula(tmp_path: Path, mirror: Path) -> None:
    chip, _ = render(source_for(small_recipe(tmp_path), sources=(str(mirror),)), INSIDE)
    coherence, amplitude = chip.band_metadata
    assert float(coherence["scale"]) == 0.01 and float(coherence["offset"]) == 0
    assert "scale" not in amplitude and amplitude["gamma0_db"] == "20*log10(DN) - 83"


def test_missing_cells_and_files_are_no_data(tmp_path: Path, mirror: Path) -> None:
    partial = tmp_path / "partial"
    for path in mirror.rglob("*.tif"):
        if "N35W119" in path.name or path.name == "N34W118_winter_vv_AMP.tif":
            continue  # a whole cell missing (sea) and one file of another cell missing
        target = partial / path.relative_to(mirror)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target)
    source = source_for(small_recipe(tmp_path), sources=(str(partial),))
    chip, _ = render(source, CORNER)
    np.testing.assert_array_equal(chip.data, expected_chip(partial, CORNER))
    assert (chip.data[0] > 0).any() and (chip.data[0] == 0).any()
    empty, _ = render(source, Tile.from_point(-118.5, 34.5))  # inside the missing cell
    assert not empty.data.any()


def test_root_from_environment_and_relative_source(tmp_path: Path, mirror: Path,
                                                   monkeypatch) -> None:  # fmt: skip
    monkeypatch.setenv("M3LEO_GSSIC_ROOT", str(mirror))
    chip, inputs = render(source_for(small_recipe(tmp_path)), INSIDE)
    assert all(item.partition("=")[2].startswith(str(mirror)) for item in inputs)
    np.testing.assert_array_equal(chip.data, expected_chip(mirror, INSIDE))
    monkeypatch.delenv("M3LEO_GSSIC_ROOT")
    monkeypatch.chdir(mirror.parent)
    relative = source_for(small_recipe(tmp_path), sources=(mirror.name,))
    assert relative.root() == str(mirror)
    default = source_for(small_recipe(tmp_path))
    assert default.root() == (
        "https://sentinel-1-global-coherence-earthbigdata.s3.us-west-2.amazonaws.com"
    )


def test_shipped_recipe_is_the_papers_set() -> None:
    recipe = load_recipe("gssic")
    assert recipe.resolution == 89.6 and recipe.dtype == "uint16" and recipe.nodata == 0
    assert len(recipe.bands) == 4 * 2 * 8 and recipe.bands[0] == "winter_vv_coh12"
    assert {b.split("_", 2)[2] for b in recipe.bands} == {
        "coh12", "coh24", "coh36", "coh48", "amp", "rho", "tau", "rmse"}  # fmt: skip
    get_source("raster")(recipe).check()  # the bucket's URL: nothing asked while checking


# --- remote: the loopback bucket ----------------------------------------------------------


def test_stream_and_download_equal_the_mirror(tmp_path: Path, mirror: Path) -> None:
    from helpers.loopback import serve_files_in_process

    expected = expected_chip(mirror, CORNER)
    with serve_files_in_process(mirror) as server:
        streamed, inputs = render(
            source_for(small_recipe(tmp_path, remote="stream"), sources=(server.url,)), CORNER
        )
        assert inputs[0].partition("=")[2].startswith("/vsicurl/http://127.0.0.1")
        np.testing.assert_array_equal(streamed.data, expected)
        cache = tmp_path / "cache"
        downloaded, _ = render(
            source_for(small_recipe(tmp_path), sources=(server.url,), cache_dir=str(cache)),
            CORNER,
        )
        np.testing.assert_array_equal(downloaded.data, expected)
        assert all(used.startswith(server.url) for used in downloaded.metadata["inputs"].split(";"))
    cached = sorted(cache.rglob("*.tif"))
    assert len(cached) == len(cells_of(CORNER)) * len(METRICS)
    for path in cached:
        assert path.read_bytes() == (mirror / "data/tiles" / path.parent.name / path.name
                                     ).read_bytes()  # fmt: skip


def test_truncated_download_is_retried_and_never_looks_whole(tmp_path: Path, mirror: Path):
    from helpers.loopback import serve_files_in_process

    key = "/" + tile_key("N34W118", "winter", "vv", "COH12")
    with serve_files_in_process(mirror) as server:
        server.set(truncate={key: 5000})
        source = source_for(small_recipe(tmp_path), sources=(server.url,),
                            cache_dir=str(tmp_path / "cache"))  # fmt: skip
        chip, _ = render(source, INSIDE)
        tries = [p for p in server.paths() if p == key]
    assert len(tries) == 2  # the cut one, then a whole one
    np.testing.assert_array_equal(chip.data, expected_chip(mirror, INSIDE))
    assert not list((tmp_path / "cache").rglob("*.part"))


def _render_in_child(recipe_data: dict, root: str, cache: str, results) -> None:
    recipe = parse_recipe(recipe_data, "child")
    source = source_for(recipe, sources=(root,), cache_dir=cache)
    chip, _ = render(source, INSIDE)
    results.put(int(chip.data.sum()))


@pytest.mark.slow
def test_two_workers_download_each_file_once(tmp_path: Path, mirror: Path) -> None:
    from helpers.loopback import serve_files_in_process

    recipe_data = yaml.safe_load(RECIPE.read_text())
    recipe_data["params"]["layer_grids"][0]["axes"] = {
        "season": ["winter"], "pol": ["vv"], "metric": list(METRICS)}  # fmt: skip
    recipe_data["bands"] = list(BANDS)
    recipe_data["name"] = "gssic-small"
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    with serve_files_in_process(mirror, latency_s=1.0) as server:  # downloads overlap
        workers = [
            context.Process(target=_render_in_child,
                            args=(recipe_data, server.url, str(tmp_path / "cache"), results))
            for _ in range(2)
        ]  # fmt: skip
        for worker in workers:
            worker.start()
        sums = [results.get(timeout=60) for _ in workers]
        for worker in workers:
            worker.join(timeout=30)
        gets = [p for p in server.paths() if p.endswith(".tif")]
    assert sums[0] == sums[1] == int(expected_chip(mirror, INSIDE).sum())
    assert sorted(gets) == sorted(set(gets)) and len(gets) == len(METRICS)


# --- end to end: `m3leo-tiles fetch gssic --aoi demo` -------------------------------------


def demo_cells() -> list[str]:
    """The cells the demo AOI touches, from the AOI file itself."""
    import shapely

    from m3leo_tiles.grid.aois import load_aoi

    geometry = load_aoi("demo").geometry
    cells = set()
    for part in getattr(geometry, "geoms", [geometry]):
        west, south, east, north = shapely.buffer(part, 0.05).bounds  # tiles reach past it
        for lon in np.arange(np.floor(west), east, 1.0):
            for lat in np.arange(np.floor(south), north, 1.0):
                cells.add(cell_name(lon + 0.5, lat + 0.5))
    return sorted(cells)


@pytest.fixture(scope="module")
def demo_mirror(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo-mirror")
    write_mirror(root, demo_cells())  # every season, pol and metric of the shipped recipe
    return root


def run_cli(args: list[str], cwd: Path, **env: str):
    import subprocess
    import sys

    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), **env}
    script = Path(sys.executable).parent / "m3leo-tiles"  # the installed entry point
    return subprocess.run(
        [str(script), *args], cwd=cwd, env=environment,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def read_manifest(dataset: Path) -> dict[str, str]:
    import csv

    with open(dataset / "manifest.csv", newline="") as handle:
        return {row["identifier"]: row["status"] for row in csv.DictReader(handle)}


def check_demo_chips(dataset: Path) -> dict[str, np.ndarray]:
    statuses = read_manifest(dataset)
    assert len(statuses) > 50 and set(statuses.values()) == {"ok"}, statuses
    recipe = load_recipe("gssic")
    chips = {}
    for identifier in statuses:
        with rasterio.open(dataset / f"{identifier}.tif") as chip:
            grid = Tile.from_id(identifier).pixel_grid(89.6)  # every source's grid of the tile
            assert chip.crs.to_string() == grid.crs and chip.transform == grid.transform
            assert chip.descriptions == recipe.bands and chip.nodata == 0
            assert chip.scales[0] == 0.01 and chip.scales[recipe.bands.index("winter_vv_rho")]\
                == 0.001  # fmt: skip
            chips[identifier] = chip.read()
    return chips


@pytest.mark.slow
def test_fetch_demo_from_a_mirror_folder_and_from_the_loopback_bucket(
    tmp_path: Path, demo_mirror: Path
) -> None:
    from helpers.loopback import serve_files_in_process

    mirrored = run_cli(
        ["fetch", "gssic", "--aoi", "demo", "--source", str(demo_mirror), "--out", "out",
         "--workers", "1", "--quiet"], tmp_path,
    )  # fmt: skip
    assert mirrored.returncode == 0, mirrored.stderr
    from_mirror = check_demo_chips(tmp_path / "out" / "demo" / "gssic")

    with serve_files_in_process(demo_mirror) as server:
        remote = run_cli(
            ["fetch", "gssic", "--aoi", "demo", "--out", "remote", "--cache", "cache",
             "--workers", "2", "--quiet"], tmp_path, M3LEO_GSSIC_ROOT=server.url,
        )  # fmt: skip
        gets = [path for path in server.paths() if path.endswith(".tif")]
    assert remote.returncode == 0, remote.stderr
    from_bucket = check_demo_chips(tmp_path / "remote" / "demo" / "gssic")
    assert from_bucket.keys() == from_mirror.keys()
    for identifier, data in from_mirror.items():
        np.testing.assert_array_equal(from_bucket[identifier], data)
    assert len(gets) == len(set(gets)) == len(demo_cells()) * 64  # every file fetched once
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_band_resampling_overrides_the_recipe_for_matching_bands(tmp_path: Path, mirror: Path):
    recipe = small_recipe(tmp_path, band_resampling={"*_amp": "nearest"})
    chip, _ = render(source_for(recipe, sources=(str(mirror),)), CORNER)
    bilinear = expected_chip(mirror, CORNER)
    nearest = expected_chip(mirror, CORNER, Resampling.nearest)
    np.testing.assert_array_equal(chip.data[0], bilinear[0])
    np.testing.assert_array_equal(chip.data[1], nearest[1])
    assert (bilinear[1] != nearest[1]).any()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"layer_grids": [{"path": "x_{a}.tif", "band": "b", "axes": {"a": [1, 2]}}]},
         "must use {a}"),
        ({"layer_grids": [{"path": "{lat}.tif", "band": "{lat}", "axes": {"lat": [1]}}]},
         "cannot be an axis name"),
        ({"band_metadata": {"*": {"scale": "big"}}}, "scale must be a number"),
        ({"band_resampling": {"*": "bicubic"}}, "band_resampling"),
        ({"remote": "ftp"}, "stream, download"),
    ],
)  # fmt: skip
def test_bad_layer_params_are_one_line_errors(tmp_path: Path, change, message) -> None:
    from m3leo_tiles.core.errors import ConfigError
    from m3leo_tiles.sources.base import check_recipe

    with pytest.raises(ConfigError, match=re.escape(message)):
        check_recipe(small_recipe(tmp_path, **change))  # the source checks its params


def test_bands_must_be_the_generated_layers(tmp_path: Path, mirror: Path) -> None:
    from m3leo_tiles.core.errors import ConfigError

    data = yaml.safe_load(RECIPE.read_text())
    data["bands"] = data["bands"][:-1]
    recipe = parse_recipe(data, "test", tmp_path / "g.yaml")
    with pytest.raises(ConfigError, match="must be the recipe's bands"):
        source_for(recipe, sources=(str(mirror),)).check()
    with pytest.raises(ConfigError, match=r"mirror folder .*nowhere does not exist"):
        source_for(load_recipe("gssic"), sources=(str(tmp_path / "nowhere"),)).check()
    with pytest.raises(ConfigError, match="takes one --source"):
        source_for(load_recipe("gssic"), sources=(str(mirror), str(mirror))).layers()


def test_worker_block_cache_is_bounded_unless_the_user_set_it(monkeypatch) -> None:
    """Peak memory must not grow with the number of cells read (bench/RESULTS.md, gssic)."""
    from rasterio.env import get_gdal_config, set_gdal_config

    before = get_gdal_config("GDAL_CACHEMAX")
    source = get_source("raster")(load_recipe("gssic"))
    try:
        set_gdal_config("GDAL_CACHEMAX", 2**31)
        monkeypatch.setenv("GDAL_CACHEMAX", "2048")
        source.setup_worker()
        assert get_gdal_config("GDAL_CACHEMAX") == 2**31  # the user's choice stands
        monkeypatch.delenv("GDAL_CACHEMAX")
        source.setup_worker()
        assert get_gdal_config("GDAL_CACHEMAX") == 256  # MB
    finally:
        set_gdal_config("GDAL_CACHEMAX", before)


def test_one_multiband_warp_where_clean_equals_per_band_warps(
    tmp_path: Path, mirror: Path, monkeypatch
) -> None:
    """Tiles whose source window is clean take one warp for all layers; the others (nodata
    discs, cell edges, the 1° corner) one per layer. Every chip equals the independent
    per-band reproject of the merged cells, whichever way it was made."""
    import m3leo_tiles.sources.raster.vrt as raster

    verdicts = []

    def spy(stack, grid, margin=2):
        verdicts.append(clean := raster_clean(stack, grid, margin))
        return clean

    raster_clean = raster.clean_window
    monkeypatch.setattr(raster, "clean_window", spy)
    source = source_for(small_recipe(tmp_path), sources=(str(mirror),))
    tiles = [Tile(CORNER.zone, CORNER.row + i, CORNER.col + j)
             for i in range(-3, 3) for j in range(-3, 3)]  # fmt: skip
    plan = source.plan(tiles)
    for tile in tiles:
        chip = source.render_tile(tile, plan[tile.identifier])
        np.testing.assert_array_equal(chip.data, expected_chip(mirror, tile), tile.identifier)
    assert 0 < sum(verdicts) < len(verdicts)  # both ways were taken


# --- a damaged download cache heals (issue 17, item 4) ------------------------------------


def _render_batch(source, tile: Tile):
    from m3leo_tiles.sources.base import RenderContext

    inputs = source.plan([tile])[tile.identifier]
    [(_, outcome)] = list(source.render_many([(tile, inputs)], RenderContext()))
    return outcome


def test_a_cached_cell_cut_short_is_downloaded_again_once(tmp_path: Path, mirror: Path) -> None:
    from helpers.loopback import serve_files_in_process
    from m3leo_tiles.sources._gdal import forget_datasets_using

    key = "/" + tile_key("N34W118", "winter", "vv", "COH12")
    cache = tmp_path / "cache"
    with serve_files_in_process(mirror) as server:
        options = {"sources": (server.url,), "cache_dir": str(cache)}
        first = _render_batch(source_for(small_recipe(tmp_path), **options), INSIDE)
        [cached] = cache.rglob(Path(key).name)
        os.truncate(cached, cached.stat().st_size // 2)  # cut after the download
        forget_datasets_using(str(cache))  # a rerun is a new process: nothing left open
        again = _render_batch(source_for(small_recipe(tmp_path), **options), INSIDE)
        tries = [p for p in server.paths() if p == key]
    assert len(tries) == 2  # the first download, then one more for the damaged copy
    expected = expected_chip(mirror, INSIDE)
    np.testing.assert_array_equal(first.data, expected)
    np.testing.assert_array_equal(again.data, expected)
    assert cached.read_bytes() == (mirror / key.lstrip("/")).read_bytes()


def test_a_cell_served_damaged_fails_its_tile_naming_the_file(tmp_path: Path) -> None:
    from helpers.loopback import serve_files_in_process

    root = tmp_path / "bad-mirror"
    write_mirror(root, sorted(cells_of(INSIDE)), ["winter"], ["vv"], METRICS)
    key = tile_key("N34W118", "winter", "vv", "COH12")
    bad = root / key
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # the server's copy is cut
    with serve_files_in_process(root) as server:
        source = source_for(small_recipe(tmp_path), sources=(server.url,),
                            cache_dir=str(tmp_path / "cache"))  # fmt: skip
        outcome = _render_batch(source, INSIDE)
        tries = [p for p in server.paths() if p == "/" + key]
    assert isinstance(outcome, SourceError), outcome
    assert f"cannot read cached {Path(key).name}" in str(outcome)
    assert len(tries) == 2  # downloaded, found damaged, downloaded once more: no loop


def test_a_damaged_file_of_a_local_mirror_is_named_in_the_reason(tmp_path: Path) -> None:
    """A multi-layer read that fails says only GDAL's "Read failed": the tile's layers are then
    warped one by one, and the reason names the file that cannot be read."""
    root = tmp_path / "mirror"
    write_mirror(root, sorted(cells_of(INSIDE)), ["winter"], ["vv"], METRICS)
    bad = root / tile_key("N34W118", "winter", "vv", "COH12")
    data = bytearray(bad.read_bytes())
    data[len(data) // 2 :] = b"\xff" * (len(data) - len(data) // 2)  # a disk error's garbage
    bad.write_bytes(bytes(data))
    source = source_for(small_recipe(tmp_path), sources=(str(root),))
    source.check()
    with pytest.raises(SourceError, match=rf"cannot read input {re.escape(str(bad))}"):
        render(source, INSIDE)
