"""Messages say a thing once and whole (issue #17 item 10): GDAL's text starts with the path
the message already names, and an ASF search error was cut at 200 characters."""

from __future__ import annotations

from pathlib import Path

import pytest
import rasterio
from rasterio.errors import RasterioIOError
from shapely.geometry import box

from m3leo_tiles.core.errors import ConfigError, first_line
from m3leo_tiles.sources.raster.defaults import file_info


def _gdal_error(path: Path) -> RasterioIOError:
    with pytest.raises(RasterioIOError) as raised:
        rasterio.open(path)
    return raised.value


def test_a_message_names_the_file_once(tmp_path: Path) -> None:
    garbage = tmp_path / "not-a-raster.tif"
    garbage.write_bytes(b"garbage")
    for path in (garbage, tmp_path / "missing.tif"):
        with pytest.raises(ConfigError) as raised:
            file_info(str(path))
        text = str(raised.value)
        assert text.startswith(f"cannot open source {path}: ") and text.count(path.name) == 1
    assert first_line(_gdal_error(garbage), str(garbage)) == (
        "not recognized as being in a supported file format."
    )
    assert first_line(_gdal_error(tmp_path / "missing.tif"), str(tmp_path / "missing.tif")) == (
        "No such file or directory"
    )
    assert first_line(ValueError(f"{garbage}: x"), "elsewhere") == f"{garbage}: x"  # kept


def test_an_asf_search_error_is_not_cut_mid_sentence(tmp_path: Path, monkeypatch) -> None:
    import asf_search

    from m3leo_tiles.recipes import load_recipe
    from m3leo_tiles.sources.base import FetchOptions
    from m3leo_tiles.sources.gunw import GunwSource

    long = "CMR answered 400: " + "the polygon is not valid because it crosses itself " * 6
    long += "(end of the message)"

    def refused(**_: object) -> None:
        raise asf_search.exceptions.ASFSearchError(long)

    monkeypatch.setattr(asf_search, "search", refused)
    source = GunwSource(load_recipe("gunw"), FetchOptions(year=2020, cache_dir=str(tmp_path)))
    with pytest.raises(ConfigError) as raised:
        source._asf_search(box(0, 0, 1, 1))
    assert "(end of the message)" in str(raised.value)
