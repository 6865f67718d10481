"""`status --map`: every tile of a run drawn in its status colour on one self-contained page.

A small run with known outcomes (two datasets of the fake source over a 3x4 grid, some tiles
never run) is mapped; the page is opened in headless Chromium, and the pixels at the tiles'
own positions (the page says where it drew each tile) must carry the legend's colour of the
tile's status; clicking a failed tile shows its recorded reason; the dataset switch recolours
the tiles; and the page asks for nothing over the network.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import shutil
from pathlib import Path

import pytest

from helpers import fake_runs
from helpers.cli import assert_one_error_line, call_cli
from m3leo_tiles.core.enums import TileStatus
from m3leo_tiles.dataset.manifest import MANIFEST_NAME, ManifestRow, read_manifest, write_manifest
from m3leo_tiles.tools.runmap import LABELS, build_run_map, page_html

IDS = fake_runs.IDS
# dataset "fake": ran the first 9 tiles; the last 3 of the grid are missing.
FIRST = {"empty": [IDS[1]], "uncovered": [IDS[2]], "fail": [IDS[3], IDS[7]]}
# dataset "other": ran the first 6, with other outcomes.
SECOND = {"empty": [IDS[3]], "fail": [IDS[0]]}


def _expected(params: dict, ran: int) -> dict[str, str]:
    status = {ident: "ok" for ident in IDS[:ran]}
    status.update({ident: "empty" for ident in params.get("empty", ())})
    status.update({ident: "no-source" for ident in params.get("uncovered", ())})
    status.update({ident: "failed" for ident in params.get("fail", ())})
    status.update({ident: "missing" for ident in IDS[ran:]})
    return status


def _write_grid(grids: Path, aoi: str, tiles) -> None:
    import geopandas as gpd

    (grids / aoi).mkdir(parents=True)
    gpd.GeoDataFrame(
        {"identifier": [t.identifier for t in tiles], "aoi": [aoi] * len(tiles)},
        geometry=[t.lonlat_polygon() for t in tiles],
        crs="EPSG:4326",
    ).to_file(grids / aoi / "tiles.geojson", driver="GeoJSON")


@pytest.fixture(scope="module")
def run(cluster, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two datasets fetched by the runner, a grid beside them; what each tile must show."""
    root = tmp_path_factory.mktemp("runmap")
    out, grids = root / "data", root / "grids"
    fake_runs.run(cluster, fake_runs.recipe(**FIRST), out, tiles=fake_runs.TILES[:9])
    other = dataclasses.replace(fake_runs.recipe(**SECOND), name="other")
    fake_runs.run(cluster, other, out, tiles=fake_runs.TILES[:6])
    _write_grid(grids, "testaoi", fake_runs.TILES)
    return {
        "out": out,
        "grids": grids,
        "expected": {"testaoi/fake": _expected(FIRST, 9), "testaoi/other": _expected(SECOND, 6)},
    }


def _codes(run_map, name: str) -> dict[str, str]:
    (layer,) = [layer for layer in run_map.layers if f"{layer.aoi}/{layer.dataset}" == name]
    return {ident: LABELS[code] for ident, code in zip(run_map.ids, layer.codes, strict=True)}


def test_each_tile_carries_its_status_and_reason(run: dict) -> None:
    run_map = build_run_map(run["out"], run["grids"])
    assert sorted(run_map.ids) == sorted(IDS)
    for name, expected in run["expected"].items():
        assert _codes(run_map, name) == expected
    fake = next(layer for layer in run_map.layers if layer.dataset == "fake")
    rows = read_manifest(run["out"] / "testaoi" / "fake" / MANIFEST_NAME)
    shown = {
        run_map.ids[tile]: run_map.reasons[reason]
        for tile, reason in zip(fake.reason_tiles, fake.reason_ids, strict=True)
    }
    assert shown[IDS[3]] == rows[IDS[3]].reason and "cannot read" in shown[IDS[3]]
    assert shown == {ident: row.reason for ident, row in rows.items() if row.reason}
    assert len(run_map.reasons) == len(set(run_map.reasons))  # a table of distinct reasons


def test_a_damaged_chip_is_failed_and_other_aois_are_not_drawn(tmp_path: Path) -> None:
    """As status counts them: an ok row whose chip is gone is failed; a dataset of one AOI
    leaves the tiles of another AOI's grid undrawn (code 0), not 'missing'."""
    out, grids = tmp_path / "data", tmp_path / "grids"
    tiles = fake_runs.TILES
    for aoi, mine in (("west", tiles[:4]), ("east", tiles[4:])):
        folder = out / aoi / "ds"
        folder.mkdir(parents=True)
        rows = {t.identifier: ManifestRow(t.identifier, TileStatus.OK, bytes=1) for t in mine[:2]}
        write_manifest(folder / MANIFEST_NAME, rows)
        (folder / f"{mine[0].identifier}.tif").write_bytes(b"x")  # mine[1]'s chip is gone
        _write_grid(grids, aoi, mine)
    run_map = build_run_map(out, grids)
    west = _codes(run_map, "west/ds")
    assert [west[t.identifier] for t in tiles[:4]] == ["ok", "failed", "missing", "missing"]
    assert {west[t.identifier] for t in tiles[4:]} == {""}
    layer = next(layer for layer in run_map.layers if layer.aoi == "west")
    assert run_map.reasons[layer.reason_ids[0]] == "damaged chip: its chip is missing"


def test_the_page_is_self_contained(run: dict) -> None:
    html = page_html(build_run_map(run["out"], run["grids"]), "t")
    assert "__M3LEO_" not in html  # both data tokens filled
    lowered = html.lower()
    assert " src=" not in lowered and "<link" not in lowered
    assert re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]", lowered) is None  # no address at all
    assert "default-src 'none'" in html  # the browser itself refuses any request


def test_status_map_writes_the_page_and_refuses_a_bad_path(
    run: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "map.html"
    code, text, _ = call_cli(
        capsys, "status", run["out"], "--grids-dir", run["grids"], "--map", page
    )
    assert code == 0 and page.is_file() and f"written to {page}" in text
    assert f"map of {len(IDS)} tiles in 2 datasets" in text
    code, _, err = call_cli(
        capsys, "status", run["out"], "--map", tmp_path / "nowhere" / "map.html"
    )
    assert_one_error_line(code, err, "no folder", "nowhere")
    code, _, err = call_cli(capsys, "status", run["out"], "--map", tmp_path)
    assert_one_error_line(code, err, "is a folder")


# --- in a real browser -----------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by playwright (no browser download). CI must have it (`make
    install` provides it as root); elsewhere the browser tests are skipped, saying why."""
    if CHROMIUM is None:
        message = "chromium not found: `make install` as root, or `apt-get install chromium`"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must run the map's browser test; {message}")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _pixels(page, path: Path):
    from PIL import Image

    page.screenshot(path=path)
    return Image.open(io.BytesIO(path.read_bytes())).convert("RGB")


def _legend_colours(page) -> dict[str, tuple[int, ...]]:
    """The legend's swatch colour of each status: what the user is told each colour means."""
    found = page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#legend span')].map(
             (s) => [s.dataset.status, getComputedStyle(s.querySelector('i')).backgroundColor]))"""
    )
    return {
        status: tuple(int(v) for v in css.removeprefix("rgb(").rstrip(")").split(","))
        for status, css in found.items()
    }


def _assert_tiles_coloured(page, image, expected: dict[str, str]) -> int:
    """Each tile whose centre is on screen has its status's colour there; how many were."""
    colours = _legend_colours(page)
    assert len(set(colours.values())) == len(colours) == 5  # five distinct colours
    seen = 0
    for ident, status in expected.items():
        where = page.evaluate("(id) => m3leoMap.screenOf(id)", ident)
        x, y = round(where["x"]), round(where["y"])
        if 0 <= x < image.width and 0 <= y < image.height:
            assert image.getpixel((x, y)) == colours[status], (ident, status)
            seen += 1
    return seen


def test_the_map_in_a_browser(browser, run: dict, tmp_path: Path) -> None:
    page_file = tmp_path / "map.html"
    page_file.write_text(page_html(build_run_map(run["out"], run["grids"]), "test run"))
    page = browser.new_page(viewport={"width": 800, "height": 600})
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(page_file.as_uri())
    page.wait_for_function("window.m3leoMap && window.m3leoMap.ready", timeout=30_000)
    assert page.evaluate("m3leoMap.layers") == ["testaoi/fake", "testaoi/other"]

    expected = run["expected"]["testaoi/fake"]
    assert _assert_tiles_coloured(page, _pixels(page, tmp_path / "fake.png"), expected) == 12

    hovered = page.evaluate("(id) => m3leoMap.screenOf(id)", IDS[1])
    page.mouse.move(hovered["x"], hovered["y"])
    assert page.text_content("#info-id") == IDS[1]
    assert page.text_content("#info-status") == expected[IDS[1]]

    failed = IDS[3]
    where = page.evaluate("(id) => m3leoMap.screenOf(id)", failed)
    page.mouse.click(where["x"], where["y"])
    reason = read_manifest(run["out"] / "testaoi" / "fake" / MANIFEST_NAME)[failed].reason
    assert page.text_content("#info-id") == failed
    assert page.text_content("#info-status") == "failed"
    assert page.text_content("#info-reason") == reason and reason

    page.select_option("#dataset", label="testaoi/other")
    other = run["expected"]["testaoi/other"]
    assert other != expected
    assert _assert_tiles_coloured(page, _pixels(page, tmp_path / "other.png"), other) == 12
    assert page.text_content("#info-status") == other[failed]  # the kept tile, in this dataset

    assert errors == []
    assert requests == [page_file.as_uri()]  # the page itself, nothing else


def test_hiding_a_status_in_the_legend_clears_its_tiles(browser, run: dict, tmp_path: Path) -> None:
    page_file = tmp_path / "map.html"
    page_file.write_text(page_html(build_run_map(run["out"], run["grids"]), "test run"))
    page = browser.new_page(viewport={"width": 800, "height": 600})
    page.goto(page_file.as_uri())
    page.wait_for_function("window.m3leoMap && window.m3leoMap.ready", timeout=30_000)
    ok = IDS[0]
    where = page.evaluate("(id) => m3leoMap.screenOf(id)", ok)
    before = _pixels(page, tmp_path / "before.png").getpixel((round(where["x"]), round(where["y"])))
    page.click("#legend span[data-status=ok]")
    page.evaluate("() => new Promise((done) => requestAnimationFrame(() => setTimeout(done)))")
    after = _pixels(page, tmp_path / "after.png").getpixel((round(where["x"]), round(where["y"])))
    assert before == _legend_colours(page)["ok"] and after != before


def test_a_foreign_grid_given_as_a_file_is_mapped_by_its_boxes(tmp_path: Path) -> None:
    """Ids that are not lattice ids (geetiles, the released M3LEO grids) are placed at their
    box's centre and travel as text; the grid comes from --grid as status takes it."""
    import geopandas as gpd
    from pyproj import Transformer
    from shapely.geometry import box

    folder = tmp_path / "data" / "mine" / "ds"
    folder.mkdir(parents=True)
    boxes = {"cell-a": (10.0, 45.0, 10.05, 45.04), "cell-b": (10.05, 45.0, 10.1, 45.04)}
    rows = {"cell-a": ManifestRow("cell-a", TileStatus.FAILED, "no luck")}
    write_manifest(folder / MANIFEST_NAME, rows)
    grid = tmp_path / "mine.geojson"
    gpd.GeoDataFrame(
        {"identifier": list(boxes), "aoi": ["mine"] * 2},
        geometry=[box(*b) for b in boxes.values()],
        crs="EPSG:4326",
    ).to_file(grid, driver="GeoJSON")
    run_map = build_run_map(tmp_path / "data", tmp_path / "no-grids", grid=grid)
    assert _codes(run_map, "mine/ds") == {"cell-a": "failed", "cell-b": "missing"}
    to_mercator = Transformer.from_crs(4326, 3857, always_xy=True)
    for at, (w, s, e, n) in enumerate(boxes.values()):
        x, y = to_mercator.transform((w + e) / 2, (s + n) / 2)
        assert (run_map.x[at], run_map.y[at]) == pytest.approx((x, y), abs=1.0)
    assert "cell-a\\ncell-b" in page_html(run_map, "t")


def test_zoom_and_pan_move_the_tiles_and_keep_their_colours(
    browser, run: dict, tmp_path: Path
) -> None:
    page_file = tmp_path / "map.html"
    page_file.write_text(page_html(build_run_map(run["out"], run["grids"]), "test run"))
    page = browser.new_page(viewport={"width": 800, "height": 600})
    page.goto(page_file.as_uri())
    page.wait_for_function("window.m3leoMap && window.m3leoMap.ready", timeout=30_000)
    expected = run["expected"]["testaoi/fake"]

    def at(ident: str) -> tuple[float, float]:
        where = page.evaluate("(id) => m3leoMap.screenOf(id)", ident)
        return where["x"], where["y"]

    def settle() -> None:
        page.evaluate("() => new Promise((done) => requestAnimationFrame(() => setTimeout(done)))")

    (ax, ay), bx = at(IDS[0]), at(IDS[1])[0]  # IDS[1]: the next column east
    page.mouse.move(ax, ay)
    page.mouse.wheel(0, -400)  # zoom in around tile 0: it stays put, its neighbour moves away
    settle()
    (zx, zy), wx = at(IDS[0]), at(IDS[1])[0]
    assert (zx, zy) == pytest.approx((ax, ay), abs=1.0)
    assert abs(wx - zx) > 1.5 * abs(bx - ax)
    assert 1 <= _assert_tiles_coloured(page, _pixels(page, tmp_path / "zoomed.png"), expected) < 12

    page.mouse.move(400, 300)
    page.mouse.down()
    page.mouse.move(300, 250, steps=5)  # drag 100 px left and 50 px up
    page.mouse.up()
    settle()
    assert at(IDS[0]) == pytest.approx((zx - 100, zy - 50), abs=1.0)
    assert _assert_tiles_coloured(page, _pixels(page, tmp_path / "panned.png"), expected) >= 1
