"""Small things a new user trips over (issue #8 item 11): bad choices are one `error:` line,
help reads as people write values, areas say which area they are."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.cli import assert_one_error_line, call_cli


def test_bad_choices_are_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = call_cli(capsys, "fetch", "demo-dem", "--split", "vall")
    assert_one_error_line(code, err, "vall", "m3leo-tiles fetch --help")
    code, _, err = call_cli(capsys, "grid", "--aoi", "demo", "--format", "xml")
    assert_one_error_line(code, err, "xml", "m3leo-tiles grid --help")
    code, _, err = call_cli(capsys, "grid", "--aoi", "demo", "--no-such-option")
    assert_one_error_line(code, err, "--no-such-option")
    assert not (tmp_path / "grids").exists()


@pytest.mark.parametrize("command", ["fetch", "grid", "status", "quicklook", "aois"])
def test_help_names_values_for_people(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    code, out, _ = call_cli(capsys, command, "--help")
    assert code == 0
    for machine in ("<bool>", "<list[str]>", "<str>", "<int>", "<path>", "{recipe}", "{"):
        assert machine not in out, (machine, out)
    if command == "fetch":
        assert "Usage: m3leo-tiles fetch [OPTIONS] RECIPE" in " ".join(out.split())
        assert "[LAYER=]PATH" in out and "LAYER=PATH" in out
        assert "grids/demo/tiles.geojson" in out and "grids/demo.geojson" not in out
        assert "--aoi" in out and "NAME" in out and "train|val|test" in out


def test_grid_and_aois_say_which_area(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = call_cli(capsys, "grid", "--aoi", "demo", "--out", tmp_path / "g", "-q")
    assert code == 0
    assert "km² of tiles (the AOI itself: 7" in out  # demo: 63 tiles, 1,264 km² of tiles
    code, out, _ = call_cli(capsys, "aois")
    assert code == 0 and "AOI km²" in out.splitlines()[0]
