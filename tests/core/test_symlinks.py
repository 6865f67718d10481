"""No file the tool writes is written through a symbolic link planted in its folder.

For each kind of file a link to a file outside is planted at its name (and, where a writer
used to write to a predictable temporary name first, at that name too); afterwards the outside
file is unchanged and either the link was replaced by a real file or the run refused with one
line (appends: ``fetch.log``, the manifest, the lock).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from tests.helpers.chip_tree import ChipTree, make_chip_tree
from tests.helpers.cli import assert_one_error_line, call_cli, run_cli
from tests.helpers.loopback import serve_files
from tests.sources.test_earthengine_fetch import ROME, write_grid

from m3leo_tiles.core.atomic import NoFollowFileHandler, open_append, write_bytes
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.dataset.lock import LOCK_NAME
from m3leo_tiles.dataset.manifest import MANIFEST_NAME, ManifestWriter, compact_manifest
from m3leo_tiles.fetch.api import LOG_NAME
from m3leo_tiles.sources.download import cached_download

OUTSIDE = b"somebody else's file\n"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A file outside every folder the tool writes to, old enough to look like a stale lock."""
    path = tmp_path / "elsewhere" / "precious.txt"
    path.parent.mkdir()
    path.write_bytes(OUTSIDE)
    os.utime(path, (1_000_000_000, 1_000_000_000))
    return path


def plant(link: Path, target: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link


def assert_untouched(outside: Path) -> None:
    assert outside.read_bytes() == OUTSIDE


def assert_replaced(path: Path, outside: Path) -> None:
    """The link at ``path`` became a real file; the file it pointed to is as it was."""
    assert path.exists() and not path.is_symlink(), path
    assert_untouched(outside)


# --- the helpers -------------------------------------------------------------------------------


def test_a_whole_file_write_replaces_a_link(tmp_path: Path, outside: Path) -> None:
    path = plant(tmp_path / "out" / "chip.tif", outside)
    write_bytes(path, b"new", durable=True)
    assert_replaced(path, outside)
    assert path.read_bytes() == b"new"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_an_append_refuses_a_link_in_one_line(tmp_path: Path, outside: Path) -> None:
    path = plant(tmp_path / "fetch.log", outside)
    with pytest.raises(ConfigError, match=r"fetch.log is a symbolic link; refusing to write"):
        open_append(path)
    with pytest.raises(ConfigError, match="symbolic link"):
        NoFollowFileHandler(path)
    with pytest.raises(ConfigError, match="symbolic link"):
        ManifestWriter(plant(tmp_path / MANIFEST_NAME, outside))
    assert_untouched(outside)


def test_manifest_compaction_replaces_links(tmp_path: Path, outside: Path) -> None:
    path = tmp_path / MANIFEST_NAME
    with ManifestWriter(path):
        pass
    plant(tmp_path / f".{MANIFEST_NAME}.{os.getpid()}.part", outside)  # the old temporary name
    compact_manifest(path)
    assert path.is_file() and not path.is_symlink()
    assert_untouched(outside)


# --- fetch: log, manifest, lock, chips ----------------------------------------------------------


def fetch_args(tmp_path: Path, shared_data: Path) -> list[object]:
    grid = write_grid(tmp_path / "tiles.geojson", ROME)
    return ["fetch", "demo-dem", "--grid", grid, "--out", tmp_path / "data", "--workers", "1",
            "--source", shared_data / "dem" / "Rome-30m-DEM.tif", "--quiet"]  # fmt: skip


@pytest.mark.parametrize("name", [LOG_NAME, MANIFEST_NAME, LOCK_NAME])
def test_fetch_refuses_a_link_where_it_appends(tmp_path, shared_data, outside, name) -> None:
    folder = tmp_path / "data" / "rome" / "demo-dem"
    link = plant(folder / name, outside)
    done = run_cli(fetch_args(tmp_path, shared_data), cwd=tmp_path)
    assert_one_error_line(done.returncode, done.stderr, str(link), "symbolic link")
    assert_untouched(outside)
    assert link.is_symlink() and not list(folder.glob("*.tif"))


def test_fetch_replaces_a_link_planted_as_a_chip(tmp_path, shared_data, outside) -> None:
    folder = tmp_path / "data" / "rome" / "demo-dem"
    chip = plant(folder / f"{ROME[0].identifier}.tif", outside)
    done = run_cli(fetch_args(tmp_path, shared_data), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert_replaced(chip, outside)
    assert chip.read_bytes()[:2] in (b"II", b"MM")  # a GeoTIFF now


# --- the download cache ------------------------------------------------------------------------


def test_download_cache_never_writes_through_links(tmp_path: Path, outside: Path) -> None:
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    (bucket / "granule.nc").write_bytes(b"x" * 100)
    cache = tmp_path / "cache"
    target = plant(cache / "granule.nc", outside)  # a wrong size: downloaded again
    with serve_files(bucket) as server:
        path = cached_download(f"{server.url}/granule.nc", cache, expected_size=100)
        assert_replaced(target, outside)
        assert path.read_bytes() == b"x" * 100
        plant(cache / ".other.nc.lock", outside)
        with pytest.raises(ConfigError, match="symbolic link"):
            cached_download(f"{server.url}/other.nc", cache, expected_size=100)
    assert_untouched(outside)


# --- stats, pack, quicklook, grid --------------------------------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> ChipTree:
    return make_chip_tree(tmp_path_factory.mktemp("links-tree"))


def test_stats_pack_and_quicklook_replace_links(tree, tmp_path, outside, capsys) -> None:
    folder = tmp_path / "esawc"
    shutil.copytree(tree.folder("esawc"), folder)
    stats = plant(folder / "stats-train.json", outside)
    code, _, err = call_cli(capsys, "stats", folder, "--grid", tree.grid)
    assert code == 0, err
    assert_replaced(stats, outside)

    pack = folder / "pack"
    plant(pack, outside.parent)  # a link to a folder outside, at the pack's name
    code, _, err = call_cli(capsys, "pack", folder)
    assert code == 0, err
    assert pack.is_dir() and not pack.is_symlink()
    assert [p.name for p in outside.parent.iterdir()] == [outside.name]
    assert_untouched(outside)

    picture = plant(tmp_path / "ql.png", outside)
    plant(tmp_path / ".ql.png.part", outside)  # the old temporary name
    code, _, err = call_cli(capsys, "quicklook", folder, "--out", picture)
    assert code == 0, err
    assert_replaced(picture, outside)


def test_grid_files_replace_links(tmp_path: Path, outside: Path, capsys) -> None:
    out = tmp_path / "grid"
    tiles, splits = plant(out / "tiles.geojson", outside), plant(out / "splits.csv", outside)
    code, _, err = call_cli(capsys, "grid", "--aoi", "demo", "--out", out, "--quiet")
    assert code == 0, err
    assert_replaced(tiles, outside)
    assert_replaced(splits, outside)


# --- m3leo-train's run folder ------------------------------------------------------------------


def test_train_run_folder_files_replace_links(tree: ChipTree, tmp_path: Path, outside) -> None:
    from m3leo_tiles.ml.train import TrainConfig, train

    out = tmp_path / "run"
    names = ("config.json", "metrics.csv", "test_metrics.json", "curves.png", "predictions.png",
             "checkpoints/best.pt")  # fmt: skip
    links = [plant(out / name, outside) for name in names]
    plant(out / ".metrics.csv.part", outside)  # the old temporary names
    plant(out / "checkpoints" / f".best.pt.{os.getpid()}.part", outside)
    config = TrainConfig(out=str(out), task="esawc", inputs=("s2x",), root=str(tree.root),
                         grid=str(tree.grid), grids_dir=str(tree.grids_dir), epochs=1,
                         batch_size=3, width=4, threads=1, predictions=1)  # fmt: skip
    train(config, progress=False, log=lambda _: None)
    for link in links:
        assert_replaced(link, outside)
