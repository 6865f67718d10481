"""`m3leo-tiles stats`: per-band statistics over a split, checked against numpy on real chips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from helpers.chip_tree import GUNW_LAYERS, WORLDCOVER, ChipTree, make_chip_tree
from helpers.cli import assert_one_error_line, call_cli
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.dataset.chipsets import ChipSet, ids_of_split, load_splits, valid_mask
from m3leo_tiles.tools.stats import FLOAT_BINS, compute_stats, read_stats, stats_path, write_stats

CLI = Path(sys.executable).parent / "m3leo-tiles"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tree(tmp_path_factory: pytest.TempPathFactory) -> ChipTree:
    return make_chip_tree(tmp_path_factory.mktemp("stats-tree"))


@pytest.fixture(scope="session")
def real_chips(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """demo-s2 (uint16), demo-dem (float32 with nodata), demo-s1 made by the real engine."""
    from m3leo_tiles.fetch.api import fetch
    from m3leo_tiles.grid import make_grid

    os.environ.setdefault("M3LEO_SHARED_DATA", str(shared_data))
    from distributed import LocalCluster

    base = tmp_path_factory.mktemp("real")
    grid = make_grid("demo", out_dir=base / "grids" / "demo")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster:
        for name in ("demo-s2", "demo-dem", "demo-s1"):
            recipe = REPO / "recipes" / "examples" / f"{name}.yaml"
            report = fetch(
                recipe, grid=grid.path, out=base / "data", progress=False,
                scheduler=cluster.scheduler_address,
            )  # fmt: skip
            assert report.ok > 0, report.summary()
    return base


def _numpy_values(folder: Path, split: str, grids_dir: Path) -> dict[str, np.ndarray]:
    chipset = ChipSet.open(folder)
    splits = load_splits(grids_dir / chipset.aoi / "tiles.geojson")
    values: dict[str, list[np.ndarray]] = {}
    for identifier in ids_of_split(chipset.ids, splits, split):
        with rasterio.open(chipset.path(identifier)) as dataset:
            data = dataset.read()
            valid = valid_mask(data, dataset.nodata)
            for i, name in enumerate(dataset.descriptions):
                values.setdefault(name, []).append(data[i][valid[i]])
    return {name: np.concatenate(parts) for name, parts in values.items()}


@pytest.mark.parametrize("dataset", ["demo-s2", "demo-dem"])
def test_stats_equal_numpy_over_the_same_chips(real_chips: Path, dataset: str) -> None:
    folder = real_chips / "data" / "demo" / dataset
    stats = compute_stats(folder, "train", grids_dir=real_chips / "grids")
    expected = _numpy_values(folder, "train", real_chips / "grids")
    assert stats.exact_percentiles == (dataset == "demo-s2")  # uint16 exact, float32 binned
    assert [b.band for b in stats.bands] == list(expected)
    for band in stats.bands:
        values = expected[band.band].astype(np.float64)
        assert band.count == values.size > 0
        assert band.mean == pytest.approx(values.mean(), rel=1e-9)
        assert band.std == pytest.approx(values.std(), rel=1e-9)
        assert (band.min, band.max) == (values.min(), values.max())
        tolerance = 0 if stats.exact_percentiles else (band.max - band.min) / FLOAT_BINS
        for q in (1, 2, 5, 25, 50, 75, 95, 98, 99):
            assert abs(band.percentile(q) - np.percentile(values, q)) <= tolerance + 1e-9


def test_stats_cover_only_the_split(tree: ChipTree) -> None:
    folder = tree.folder("s2x")
    train = compute_stats(folder, "train", grids_dir=tree.grids_dir)
    val = compute_stats(folder, "val", grids_dir=tree.grids_dir)
    everything = compute_stats(folder, None, grids_dir=tree.grids_dir)
    assert (train.chips, val.chips, everything.chips) == (5, 3, 11)  # tile 1 has no chip
    assert train.bands[0].mean != val.bands[0].mean
    # nodata rows of tile 0 are not counted: 5 full chips minus 5 rows of 50 px
    assert train.bands[0].count == 5 * 50 * 50 - 5 * 50


def test_pair_bands_are_grouped_by_layer(tree: ChipTree) -> None:
    stats = compute_stats(tree.folder("gunw"), "train", grids_dir=tree.grids_dir)
    assert [b.band for b in stats.bands] == list(GUNW_LAYERS)
    phase = _numpy_values(tree.folder("gunw"), "train", tree.grids_dir)
    values = np.concatenate([v for k, v in phase.items() if k.endswith("unwrapped_phase")])
    assert stats.band("20200117_20200105_unwrapped_phase").mean == pytest.approx(values.mean())


def test_class_values_are_recorded_and_the_file_round_trips(tree: ChipTree) -> None:
    stats = compute_stats(tree.folder("esawc"), "train", grids_dir=tree.grids_dir)
    band = stats.bands[0]
    assert sorted(map(int, band.values)) == list(WORLDCOVER)  # nodata 0 is not a value
    assert sum(band.values.values()) == band.count
    path = write_stats(stats, tree.folder("esawc"))
    assert path == stats_path(tree.folder("esawc"), "train")
    assert read_stats(tree.folder("esawc")) == stats


def test_no_chips_in_split_is_a_config_error(real_chips: Path) -> None:
    with pytest.raises(ConfigError, match="no chips of split 'test'"):
        folder = real_chips / "data" / "demo" / "demo-s1"
        compute_stats(folder, "test", grids_dir=real_chips / "grids")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_cli_writes_json_beside_the_chips_and_refuses_bad_input(
    real_chips: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    done = _cli("stats", "demo-dem", cwd=real_chips)  # the installed command, as users run it
    assert done.returncode == 0, done.stderr
    assert "elevation" in done.stdout
    assert (real_chips / "data" / "demo" / "demo-dem" / "stats-train.json").exists()
    monkeypatch.chdir(real_chips)
    for args, words in (
        (("stats", "no-such-dataset"), "unknown dataset 'no-such-dataset'"),
        (("stats", "demo-s1", "--split", "test"), "no chips of split 'test'"),
        (("stats", "demo-s2", "--split", "nope"), "unknown split"),
    ):
        code, _, err = call_cli(capsys, *args)
        assert_one_error_line(code, err, words)


def test_core_commands_do_not_import_torch() -> None:
    code = (
        "import sys, m3leo_tiles.cli.tiles, m3leo_tiles.tools.stats, m3leo_tiles.tools.pack, "
        "m3leo_tiles.tools.status, m3leo_tiles.tools.quicklook, m3leo_tiles.dataset.chipsets, "
        "m3leo_tiles.fetch.api;"
        "print(sorted(m for m in sys.modules if m.partition('.')[0] == 'torch'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr  # every core module imported
    assert done.stdout.strip() == "[]", f"the core commands imported {done.stdout.strip()}"
