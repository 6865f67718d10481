"""The raster source on the REAL sample rasters: chips equal GDAL's own warp onto the tile grid.

Each expectation is computed independently with ``rasterio.warp.reproject`` from the source
file onto the tile's pixel grid (CRS, transform, shape derived from the tile's bounds here,
not from the code under test), so a chip that is shifted, mis-sized or differently resampled
fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.features import rasterize
from rasterio.warp import Resampling, reproject

from m3leo_tiles.core.errors import ConfigError, SourceError
from m3leo_tiles.dataset.chipfile import chip_is_empty, write_chip
from m3leo_tiles.grid.tile import TILE_SIZE_M, Tile
from m3leo_tiles.recipes import parse_recipe
from m3leo_tiles.sources.base import FetchOptions, RenderContext, get_source

S2_B05 = "s2/s2_B05.jp2"
S1_VV = "s1/S1A__IW___A_20150309T173017_VV_grd_mli_geo_norm_db.tif"
LA_DEM = [f"dem/los_angeles_tile_{i}.tif" for i in range(3)]
WORLDCOVER = "landcover/ESA_WorldCover_10m_2021_v200_N00E006_Map.tif"


def make_recipe(tmp_path: Path, **fields):
    data = {"name": "t", "source": "raster", "resolution": 89.6, "bands": ["v"]}
    data.update(fields)
    return parse_recipe(data, "test", tmp_path / "t.yaml")


def adapter(recipe, **options):
    return get_source("raster")(recipe, FetchOptions(**options))


def expected_grid(tile: Tile, resolution: float) -> tuple[Affine, int]:
    """The tile's pixel grid, derived here from its bounds alone."""
    x0, _, _, y1 = tile.bounds
    size = round(TILE_SIZE_M / resolution)
    return Affine(resolution, 0, x0, 0, -resolution, y1), size


def warp_expectation(
    path: Path, tile: Tile, resolution: float, resampling: Resampling, dtype: str, nodata: float
) -> np.ndarray:
    transform, size = expected_grid(tile, resolution)
    out = np.full((size, size), nodata, dtype=dtype)
    with rasterio.open(path) as source:
        reproject(
            rasterio.band(source, 1),
            out,
            dst_transform=transform,
            dst_crs=tile.crs,
            dst_nodata=nodata,
            resampling=resampling,
        )
    return out


def render_one(source, tile: Tile):
    inputs = source.plan([tile])[tile.identifier]
    assert inputs, f"no input planned for {tile.identifier}"
    return source.render_tile(tile, inputs)


@pytest.mark.parametrize(
    ("sample", "lonlat", "resolution", "resampling", "dtype", "nodata"),
    [
        (S2_B05, (-75.62, 37.67), 20, "bilinear", "uint16", 0),  # UTM 18N source
        (S2_B05, (-75.62, 37.67), 89.6, "average", "float32", -9999),
        (S1_VV, (4.52, 43.59), 20, "nearest", "float32", -99),  # UTM 31N source
        ("dem/Rome-30m-DEM.tif", (12.5, 42.0), 89.6, "bilinear", "float32", -9999),  # 4326+EGM96
        (LA_DEM[0], (-117.97, 33.97), 10, "cubic", "float32", -9999),  # EPSG:4326 source
    ],
)
def test_chip_equals_gdal_warp_onto_the_tile_grid(
    shared_data: Path, tmp_path: Path, sample, lonlat, resolution, resampling, dtype, nodata
) -> None:
    tile = Tile.from_point(*lonlat)
    recipe = make_recipe(
        tmp_path,
        resolution=resolution,
        resampling=resampling,
        dtype=dtype,
        nodata=nodata,
        params={"inputs": str(shared_data / sample)},
    )
    chip = render_one(adapter(recipe), tile)
    transform, size = expected_grid(tile, resolution)
    grid = tile.pixel_grid(resolution)
    assert grid.crs == f"EPSG:{tile.epsg}" and grid.transform == transform
    assert chip.data.shape == (1, size, size) and chip.data.dtype == np.dtype(dtype)
    expected = warp_expectation(
        shared_data / sample, tile, resolution, Resampling[resampling], dtype, nodata
    )
    np.testing.assert_array_equal(chip.data[0], expected)
    assert (chip.data != nodata).any()  # real pixels, not an all-nodata coincidence

    written = tmp_path / "chip.tif"
    write_chip(written, chip, grid, recipe, {})
    with rasterio.open(written) as dataset:
        assert dataset.crs.to_epsg() == tile.epsg
        assert dataset.transform == transform
        assert (dataset.bounds.left, dataset.bounds.top) == (tile.bounds[0], tile.bounds[3])
        np.testing.assert_array_equal(dataset.read(1), expected)


def test_10m_and_89_6m_chips_cover_exactly_the_same_footprint(
    shared_data: Path, tmp_path: Path
) -> None:
    tile = Tile.from_point(-75.62, 37.67)
    footprints = []
    for resolution in (10, 89.6):
        recipe = make_recipe(
            tmp_path,
            resolution=resolution,
            dtype="uint16",
            nodata=0,
            params={"inputs": str(shared_data / S2_B05)},
        )
        chip = render_one(adapter(recipe), tile)
        path = tmp_path / f"{resolution}.tif"
        write_chip(path, chip, tile.pixel_grid(resolution), recipe, {})
        with rasterio.open(path) as dataset:
            footprints.append((tuple(dataset.bounds), dataset.crs.to_epsg(), dataset.shape))
    assert footprints[0][:2] == footprints[1][:2] == (tile.bounds, tile.epsg)
    assert (footprints[0][2], footprints[1][2]) == ((448, 448), (50, 50))


def test_uncovered_tile_plans_no_input_and_sea_tile_is_empty(
    shared_data: Path, tmp_path: Path
) -> None:
    recipe = make_recipe(
        tmp_path,
        resampling="mode",
        dtype="uint8",
        nodata=0,
        params={"inputs": str(shared_data / WORLDCOVER)},
    )
    source = adapter(recipe)
    land, sea, far = (
        Tile.from_point(6.60, 0.25),
        Tile.from_point(8.5, 2.5),
        Tile.from_point(-100.0, 40.0),
    )
    plan = source.plan([land, sea, far])
    assert plan[far.identifier] == ()
    assert plan[land.identifier] and plan[sea.identifier]
    assert chip_is_empty(source.render_tile(sea, plan[sea.identifier]), recipe.nodata)
    land_chip = source.render_tile(land, plan[land.identifier])
    assert not chip_is_empty(land_chip, recipe.nodata)
    assert set(np.unique(land_chip.data)) <= {0, 10, 20, 30, 40, 50, 60, 80, 90, 95}


def test_mosaic_tile_takes_values_from_every_file(shared_data: Path, tmp_path: Path) -> None:
    """A tile straddling the LA DEM pieces equals a warp of their merge (one VRT-like mosaic)."""
    paths = [shared_data / name for name in LA_DEM]
    recipe = make_recipe(
        tmp_path,
        resampling="nearest",
        nodata=-9999,
        params={"inputs": str(shared_data / "dem/los_angeles_tile_*.tif")},
    )
    tile = Tile.from_point(-118.0, 34.0)
    source = adapter(recipe)
    inputs = source.plan([tile])[tile.identifier]
    assert len(inputs) >= 2
    chip = source.render_tile(tile, inputs)

    # Independently: each piece warped onto the grid; where pieces overlap the last one wins.
    parts = [warp_expectation(p, tile, 89.6, Resampling.nearest, "float32", -9999) for p in paths]
    expected = parts[0]
    for part in parts[1:]:
        expected = np.where(part != -9999, part, expected)
    np.testing.assert_array_equal(chip.data[0], expected)
    assert sum(1 for part in parts if (part != -9999).any()) >= 2


def test_layers_stack_band_files_in_recipe_order_and_source_overrides_one(
    shared_data: Path, tmp_path: Path
) -> None:
    layers = {band: str(shared_data / f"s2/s2_{band}.jp2") for band in ("B05", "B8A", "B11")}
    recipe = make_recipe(
        tmp_path,
        resolution=20,
        dtype="uint16",
        nodata=0,
        bands=["B11", "B8A", "B05"],
        params={"layers": layers},
    )
    tile = Tile.from_point(-75.62, 37.67)
    chip = render_one(adapter(recipe), tile)
    assert chip.band_names == ("B11", "B8A", "B05")
    for index, band in enumerate(chip.band_names):
        expected = warp_expectation(Path(layers[band]), tile, 20, Resampling.nearest, "uint16", 0)
        np.testing.assert_array_equal(chip.data[index], expected)

    swapped = adapter(recipe, sources=(f"B05={layers['B11']}",))
    swapped.check()
    chip = render_one(swapped, tile)
    np.testing.assert_array_equal(chip.data[2], chip.data[0])  # B05 now read from the B11 file
    with pytest.raises(ConfigError, match="LAYER=PATH"):
        adapter(recipe, sources=(layers["B11"],)).check()


@pytest.mark.parametrize("resolution", [89.6, 224])
def test_sum_resampling_conserves_the_total(tmp_path: Path, resolution: float) -> None:
    """Built surface in m² per 100 m Mollweide pixel (like GHS-BUILT-S): totals must add up."""
    tile = Tile.from_point(12.5, 41.9)
    rng = np.random.default_rng(7)
    density = rng.uniform(0, 1, (200, 200)).astype("float32")  # built fraction per pixel
    # A 20 km × 20 km Mollweide raster around the tile (Mollweide is equal-area).
    centre = Transformer.from_crs(4326, "ESRI:54009", always_xy=True).transform(12.5, 41.9)
    transform = Affine(
        100, 0, round(centre[0] - 10_000, -2), 0, -100, round(centre[1] + 10_000, -2)
    )
    path = tmp_path / "built.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=200,
        height=200,
        count=1,
        dtype="float32",
        crs="ESRI:54009",
        transform=transform,
    ) as out:
        out.write(density * 10_000, 1)  # m² of built surface per 10,000 m² pixel

    recipe = make_recipe(
        tmp_path,
        resolution=resolution,
        resampling="sum",
        nodata=-9999,
        params={"inputs": str(path)},
    )
    chip = render_one(adapter(recipe), tile)

    # Expected: the source's built m² inside the tile's footprint, by exact area weighting.
    to_moll = Transformer.from_crs(tile.epsg, "ESRI:54009", always_xy=True)
    x0, y0, x1, y1 = tile.bounds
    footprint = shapely.transform(
        shapely.box(x0, y0, x1, y1).segmentize(50),
        lambda xy: np.column_stack(to_moll.transform(xy[:, 0], xy[:, 1])),
    )
    fine = rasterize([footprint], out_shape=(2000, 2000), transform=transform * Affine.scale(0.1))
    covered = fine.reshape(200, 10, 200, 10).mean(axis=(1, 3))  # fraction of each pixel inside
    expected = float((density * 10_000 * covered).sum())
    assert chip.data.sum() == pytest.approx(expected, rel=0.005)


def test_tile_templates_plan_cells_and_missing_cells_are_no_data(
    shared_data: Path, tmp_path: Path
) -> None:
    params = {"inputs": str(tmp_path / "{NS}{lat:02d}{EW}{lon:03d}.tif"), "tile_degrees": 10}
    recipe = make_recipe(tmp_path, nodata=-9999, params=params)
    source = adapter(recipe)
    inside = Tile.from_point(-95.0, 35.0)
    edge = Tile.from_point(-90.0, 35.0)  # straddles the cells of 100–90°W and 90–80°W
    plan = source.plan([inside, edge])
    assert plan[inside.identifier] == (str(tmp_path / "N40W100.tif"),)
    assert plan[edge.identifier] == (str(tmp_path / "N40W090.tif"), str(tmp_path / "N40W100.tif"))
    lower = adapter(
        make_recipe(tmp_path, nodata=-9999, params={**params, "tile_corner": "lower-left"})
    )
    assert lower.plan([inside])[inside.identifier] == (str(tmp_path / "N30W100.tif"),)
    # No such cell file: the product has no data there (open sea), not a failure.
    assert chip_is_empty(source.render_tile(inside, plan[inside.identifier]), -9999)

    # Materialise cell N40W100 from real data placed there (the SRTM tile, shifted).
    with rasterio.open(f"zip://{shared_data / 'dem/N10W110.hgt.zip'}!N10W110.hgt") as srtm:
        data = srtm.read(1)
        profile = {
            **srtm.profile,
            "driver": "GTiff",
            "transform": Affine(10 / data.shape[1], 0, -100, 0, -10 / data.shape[0], 40),
        }
    with rasterio.open(tmp_path / "N40W100.tif", "w", **profile) as cell:
        cell.write(data + 100, 1)
    chip = source.render_tile(inside, plan[inside.identifier])
    assert not chip_is_empty(chip, -9999) and chip.data.min() >= 100


def test_corrupt_input_raises_source_error(shared_data: Path, tmp_path: Path) -> None:
    recipe = make_recipe(
        tmp_path,
        dtype="uint8",
        nodata=0,
        params={"inputs": str(shared_data / "raster/corrupt.tif")},
    )
    with pytest.raises(SourceError, match=r"corrupt\.tif"):
        render_one(adapter(recipe), Tile.from_point(128.658, 37.668))


def test_missing_files_and_no_inputs_are_config_errors(tmp_path: Path) -> None:
    missing = make_recipe(tmp_path, params={"inputs": str(tmp_path / "nope.tif")})
    with pytest.raises(ConfigError, match="does not exist"):
        adapter(missing).check()
    no_match = make_recipe(tmp_path, params={"inputs": str(tmp_path / "*.tif")})
    with pytest.raises(ConfigError, match="no source files match"):
        adapter(no_match).check()
    with pytest.raises(ConfigError, match="--source"):
        adapter(make_recipe(tmp_path)).check()


def test_relative_inputs_resolve_against_the_recipe_folder(
    shared_data: Path, tmp_path: Path
) -> None:
    (tmp_path / "sub").mkdir()
    link = tmp_path / "sub" / "s1.tif"
    link.symlink_to(shared_data / S1_VV)
    recipe = parse_recipe(
        {
            "source": "raster",
            "resolution": 20,
            "bands": ["vv"],
            "nodata": -99,
            "params": {"inputs": "s1.tif"},
        },
        "test",
        tmp_path / "sub" / "r.yaml",
    )
    source = adapter(recipe)
    source.check()
    assert render_one(source, Tile.from_point(4.52, 43.59)).data.shape == (1, 224, 224)


def test_batch_of_tiles_equals_each_tile_alone(shared_data: Path, tmp_path: Path) -> None:
    """A chip must not depend on its batch: 16×16 neighbouring tiles over the SRTM tile, as
    the runner sends them, equal per-tile warps (a shared block warp did not: up to 5 m off
    for nearest), and a bad tile in the batch is yielded as its error, not raised."""
    srtm = f"zip://{shared_data / 'dem/N10W110.hgt.zip'}!N10W110.hgt"
    recipe = make_recipe(
        tmp_path, resampling="nearest", dtype="int16", nodata=-32768, params={"inputs": srtm}
    )
    source = adapter(recipe)
    centre = Tile.from_point(-109.5, 10.5)
    tiles = [Tile(centre.zone, centre.row + i, centre.col + j) for i in range(-8, 8)
             for j in range(-8, 8)]  # fmt: skip
    plan = source.plan(tiles)
    items = [(tile, plan[tile.identifier]) for tile in tiles]
    items.append((Tile.from_point(128.658, 37.668), (str(shared_data / "raster/corrupt.tif"),)))
    batched = dict(source.render_many(items, RenderContext()))
    assert isinstance(batched.pop(items[-1][0]), SourceError)
    assert set(batched) == set(tiles)
    land = 0
    for tile, inputs in items[:-1]:
        alone = source.render_tile(tile, inputs).data
        np.testing.assert_array_equal(batched[tile].data, alone)
        land += int((alone > 0).sum())
    assert land > 0  # Clipperton's pixels are in the batch, not only sea


def test_unreachable_remote_cell_is_transient_not_empty(tmp_path: Path) -> None:
    """Offline, a remote cell must fail (and be retried later), never count as 'no data'."""
    from m3leo_tiles.core.errors import TransientSourceError

    template = "http://127.0.0.1:9/cells/{NS}{lat:02d}{EW}{lon:03d}.tif"  # nothing listens
    recipe = make_recipe(tmp_path, nodata=-9999, params={"inputs": template, "tile_degrees": 10})
    source = adapter(recipe)
    tile = Tile.from_point(-95.0, 35.0)
    inputs = source.plan([tile])[tile.identifier]
    assert inputs == ("/vsicurl/http://127.0.0.1:9/cells/N40W100.tif",)
    for _ in range(2):  # the second try meets GDAL's cached failure: still transient
        with pytest.raises(TransientSourceError, match=r"could not reach 127\.0\.0\.1"):
            source.render_tile(tile, inputs)


@pytest.mark.parametrize("resolution", [89.6, 10])
def test_sum_conserves_a_real_total_both_ways(shared_data: Path, tmp_path: Path, resolution):
    """S2 B05 summed onto a tile: coarser (89.6 m) and finer (10 m) pixels keep the total.

    Tile corners are multiples of 20 m, so the tile covers exactly 224 × 224 source pixels and
    the expected total is their plain sum. GDAL before 3.6 inflated the finer case 4×.
    """
    tile = Tile.from_point(-75.62, 37.67)
    recipe = make_recipe(
        tmp_path,
        resolution=resolution,
        resampling="sum",
        nodata=-9999,
        params={"inputs": str(shared_data / S2_B05)},
    )
    source = adapter(recipe)
    source.check()
    chip = render_one(source, tile)
    with rasterio.open(shared_data / S2_B05) as dataset:
        x0, y0, x1, y1 = tile.bounds
        window = dataset.window(x0, y0, x1, y1)
        assert (window.width, window.height) == (224, 224)
        total = float(dataset.read(1, window=window).astype("float64").sum())
    assert (chip.data != -9999).all()
    assert float(chip.data.astype("float64").sum()) == pytest.approx(total, rel=1e-5)


def test_sum_refused_on_a_gdal_that_does_not_conserve(tmp_path: Path, monkeypatch) -> None:
    recipe = make_recipe(tmp_path, resampling="sum", params={"inputs": str(tmp_path)})
    monkeypatch.setattr(rasterio, "__gdal_version__", "3.5.3")
    with pytest.raises(ConfigError, match=r"GDAL 3\.6.*3\.5\.3"):
        adapter(recipe).check()


def test_mosaic_equals_a_warp_of_the_merged_files(shared_data: Path, tmp_path: Path) -> None:
    """Independently of per-file warps: merge the LA pieces first, then warp the mosaic once."""
    from rasterio.merge import merge

    tile = Tile.from_point(-118.0, 34.0)
    recipe = make_recipe(
        tmp_path,
        resampling="nearest",
        nodata=-9999,
        params={"inputs": [str(shared_data / name) for name in LA_DEM]},
    )
    chip = render_one(adapter(recipe), tile)
    mosaic, mosaic_transform = merge(
        [str(shared_data / name) for name in sorted(LA_DEM)], method="last", nodata=-9999
    )
    transform, size = expected_grid(tile, 89.6)
    expected = np.full((size, size), -9999, "float32")
    reproject(
        mosaic[0],
        expected,
        src_transform=mosaic_transform,
        src_crs="EPSG:4326",
        src_nodata=-9999,
        dst_transform=transform,
        dst_crs=tile.crs,
        dst_nodata=-9999,
        resampling=Resampling.nearest,
    )
    np.testing.assert_array_equal(chip.data[0], expected)
    assert (expected != -9999).sum() > size  # the mosaic really covers part of the tile


def test_footprint_across_the_antimeridian(tmp_path: Path) -> None:
    """A UTM 60N scene crossing 180°: tiles on both sides plan it, far ones do not."""
    to_utm = Transformer.from_crs(4326, 32660, always_xy=True)
    x, y = to_utm.transform(180.0, 10.0)
    path = tmp_path / "dateline.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=200,
        height=200,
        count=1,
        dtype="float32",
        crs="EPSG:32660",
        transform=Affine(100, 0, round(x, -2) - 10_000, 0, -100, round(y, -2) + 10_000),
    ) as out:
        out.write(np.full((200, 200), 5.0, "float32"), 1)
    recipe = make_recipe(tmp_path, nodata=-9999, params={"inputs": str(path)})
    source = adapter(recipe)
    east, west = Tile.from_point(179.97, 10.0), Tile.from_point(-179.97, 10.0)
    far = [Tile.from_point(0.0, 10.0), Tile.from_point(170.0, 10.0), Tile.from_point(-170, 10)]
    plan = source.plan([east, west, *far])
    assert plan[east.identifier] == plan[west.identifier] == (str(path),)
    assert all(plan[tile.identifier] == () for tile in far)
    for tile in (east, west):
        assert (source.render_tile(tile, plan[tile.identifier]).data == 5.0).any()


def test_scale_rounds_into_an_integer_dtype(shared_data: Path, tmp_path: Path) -> None:
    """S1 dB × 100 as int16: rounded like np.rint, nodata kept, never wrapped around."""
    tile = Tile.from_point(4.52, 43.59)
    recipe = make_recipe(
        tmp_path,
        resolution=20,
        resampling="bilinear",
        dtype="int16",
        nodata=-32768,
        scale=100,
        params={"inputs": str(shared_data / S1_VV), "src_nodata": -99},
    )
    chip = render_one(adapter(recipe), tile)
    floats = warp_expectation(shared_data / S1_VV, tile, 20, Resampling.bilinear, "float64", -99)
    expected = np.where(floats != -99, np.rint(floats * 100), -32768).astype("int16")
    assert chip.data.dtype == np.int16
    np.testing.assert_array_equal(chip.data[0], expected)
    assert (expected < -1000).any() and (expected == -32768).any()


def test_vanished_file_is_a_source_error(shared_data: Path, tmp_path: Path) -> None:
    copy = tmp_path / "s1.tif"
    copy.write_bytes((shared_data / S1_VV).read_bytes())
    recipe = make_recipe(tmp_path, resolution=20, nodata=-99, params={"inputs": str(copy)})
    source = adapter(recipe)
    tile = Tile.from_point(4.52, 43.59)
    inputs = source.plan([tile])[tile.identifier]
    copy.unlink()
    with pytest.raises(SourceError, match=r"s1\.tif"):
        source.render_tile(tile, inputs)
    with pytest.raises(ConfigError, match="does not exist"):
        source.plan([tile])


def test_environment_variables_with_defaults_in_inputs(
    shared_data: Path, tmp_path: Path, monkeypatch
) -> None:
    name = Path(S1_VV).name
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / name).symlink_to(shared_data / S1_VV)
    spec = "${M3LEO_TEST_BASE:-here}/" + name  # default relative to the recipe's folder
    recipe = make_recipe(tmp_path, resolution=20, nodata=-99, params={"inputs": spec})
    tile = Tile.from_point(4.52, 43.59)
    monkeypatch.delenv("M3LEO_TEST_BASE", raising=False)
    assert adapter(recipe).plan([tile])[tile.identifier] == (str(tmp_path / "here" / name),)
    monkeypatch.setenv("M3LEO_TEST_BASE", str(shared_data / "s1"))
    assert adapter(recipe).plan([tile])[tile.identifier] == (str(shared_data / S1_VV),)
