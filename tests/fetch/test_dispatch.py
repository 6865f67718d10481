"""The dispatch loop's early stop: the first tiles of a run all failing alike stop it, with
the cause said once; mixed reasons or a success keep it going."""

from __future__ import annotations

from pathlib import Path

import pytest

from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.core.errors import SystematicFailure
from m3leo_tiles.dataset.lock import LOCK_NAME
from m3leo_tiles.dataset.manifest import MANIFEST_NAME, read_manifest
from m3leo_tiles.fetch.api import EarlyStop, failure_kind, fetch_tiles
from m3leo_tiles.grid.tile import Tile
from m3leo_tiles.recipes import Recipe

pytestmark = pytest.mark.slow


def test_the_first_tiles_all_failing_alike_stop_the_run(cluster, tmp_path: Path) -> None:
    origin = Tile.from_point(12.5, 42.0)
    tiles = [Tile(origin.zone, origin.row + r, origin.col + c) for r in range(6) for c in range(8)]
    recipe = Recipe(name="f", source="fake-synthetic", resolution=448, bands=("v",),
                    dtype="uint8", nodata=0,
                    params={"fail": [t.identifier for t in tiles], "group": 48})  # fmt: skip
    with pytest.raises(SystematicFailure, match=r"first 20 tiles all failed the same way"):
        fetch_tiles(recipe, tiles, aoi="t", out=tmp_path,
                    scheduler=cluster.scheduler_address, progress=False)  # fmt: skip
    folder = tmp_path / "t" / "f"
    rows = read_manifest(folder / MANIFEST_NAME)
    assert 20 <= len(rows) < len(tiles)  # stopped early; what failed is recorded
    assert not (folder / LOCK_NAME).exists()
    assert "first 20 tiles all failed" in (folder / "fetch.log").read_text()


def test_early_stop_needs_the_same_reason_and_no_success() -> None:
    from m3leo_tiles.dataset.manifest import ManifestRow

    def rows(reasons):
        return [ManifestRow(f"t{n}", TileStatus.FAILED, r) for n, r in enumerate(reasons)]

    assert failure_kind("cannot open input /a/N40W100.tif: x 12") == failure_kind(
        "cannot open input /b/N30W090.tif: x 7"
    )
    mixed = EarlyStop(3)
    mixed.add(rows(["a", "b", "a"]))  # two kinds: no stop
    ok_first = EarlyStop(3)
    ok_first.add([ManifestRow("x", TileStatus.OK)])
    ok_first.add(rows(["a", "a", "a"]))
    same = EarlyStop(3)
    with pytest.raises(SystematicFailure):
        same.add(rows(["a", "a", "a"]))


def test_network_failures_name_the_host() -> None:
    from m3leo_tiles.sources.raster.warp import _network_reason

    text = _network_reason(
        "/vsicurl/https://dap.ceda.ac.uk/neodc/x.tif",
        OSError("'/vsicurl/https://dap.ceda.ac.uk/neodc/x.tif' does not exist in the file system"),
    )
    assert text.startswith("network: could not reach dap.ceda.ac.uk")
    assert "file system" not in text
