"""Input identity digests are stored in every manifest: a change of the formula would redo
every existing dataset on the next run. These digests were computed by the code before the
raster-only path rules (``LAYER=PATH``, ``zip://``, ``/vsizip/``) moved out of the generic
base (issue #18), and must stay byte-identical."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from m3leo_tiles.recipes import parse_recipe
from m3leo_tiles.sources.base import FetchOptions, get_source

MTIME_NS = 1_700_000_000_123_456_789
# input strings (relative to the test's folder) -> the digest the code of step 1 gave
PINNED = {
    ("a.tif",): "369f67ca41f10b36",
    ("v=a.tif",): "2b70d735394766ce",
    ("zip://data.zip!inner/x.tif",): "c8df601e986ccba1",
    ("a.tif", "v=b.tif"): "95c3db2a05305d6a",
    ("https://example.org/x.tif",): "8a6015e311b18900",
    ("missing.tif",): "8c972f62b0980890",
    ("S1-GUNW-A-R-087-tops-20200101_20191220-000000-00001E_00001N-PP-1234-v3_0_0",): (
        "5e176aac54c8bf80"
    ),
}


def _files(folder: Path) -> None:
    (folder / "a.tif").write_bytes(b"a" * 100)
    (folder / "b.tif").write_bytes(b"b" * 250)
    with zipfile.ZipFile(folder / "data.zip", "w") as archive:
        archive.writestr("inner/x.tif", b"x" * 10)
    for name in ("a.tif", "b.tif", "data.zip"):
        os.utime(folder / name, ns=(MTIME_NS, MTIME_NS))


def _raster(folder: Path):
    recipe = parse_recipe(
        {"name": "t", "source": "raster", "resolution": 448, "bands": ["v"]}, "t",
        folder / "t.yaml",
    )  # fmt: skip
    return get_source("raster")(recipe, FetchOptions())


def _expected(inputs: tuple[str, ...], files: dict[str, str]) -> str:
    """The formula: each input's text, then ``\\0size\\0mtime_ns`` of the file it names."""
    digest = hashlib.sha256()
    for item in inputs:
        digest.update(item.encode())
        if item in files:
            stat = os.stat(files[item])
            digest.update(f"\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


@pytest.mark.parametrize("inputs", list(PINNED))
def test_raster_input_identity_is_pinned(
    inputs: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _files(tmp_path)
    monkeypatch.chdir(tmp_path)
    got = _raster(tmp_path).input_identity(inputs)
    assert got == PINNED[inputs]


def test_archive_members_count_with_their_archive(tmp_path: Path) -> None:
    """Absolute paths (as planning gives them): the archive of ``/vsizip/`` and ``zip://``."""
    _files(tmp_path)
    archive, plain = str(tmp_path / "data.zip"), str(tmp_path / "a.tif")
    cases = {
        f"/vsizip/{archive}/inner/x.tif": archive,
        f"/vsizip//{archive.lstrip('/')}/inner/x.tif": archive,
        f"zip://{archive}!inner/x.tif": archive,
        f"v={plain}": plain,
        plain: plain,
    }
    adapter = _raster(tmp_path)
    for item, path in cases.items():
        assert adapter.input_identity((item,)) == _expected((item,), {item: path}), item
    assert adapter.input_identity(tuple(cases)) == _expected(tuple(cases), cases)
    url = "https://example.org/x.tif"
    assert adapter.input_identity((url,)) == _expected((url,), {})


def test_a_plain_local_file_counts_for_every_source(tmp_path: Path) -> None:
    """The base default: a plain path counts with size and mtime, anything else by text."""
    _files(tmp_path)
    plain = str(tmp_path / "a.tif")
    adapter = get_source("fake-synthetic")(_raster(tmp_path).recipe)
    assert adapter.input_identity((plain,)) == _expected((plain,), {plain: plain})
    granule = "S1-GUNW-A-R-087-tops-20200101_20191220-000000-00001E_00001N-PP-1234-v3_0_0"
    assert adapter.input_identity((granule,)) == _expected((granule,), {})


def test_a_plan_looks_at_each_file_once_and_the_next_plan_looks_again(tmp_path: Path) -> None:
    from m3leo_tiles.sources.base import each_file_looked_at_once, identity_digest
    from m3leo_tiles.sources.base import plain_local_file as local

    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    a.write_bytes(b"1")
    lists = [(str(a),), (str(a), str(b)), (str(b), "https://x/y.tif")]
    alone = [identity_digest(inputs, local) for inputs in lists]
    with each_file_looked_at_once():
        assert [identity_digest(inputs, local) for inputs in lists] == alone
        b.write_bytes(b"22")  # within one plan each file counts as first seen
        assert identity_digest(lists[1], local) == alone[1]
    with each_file_looked_at_once():  # the next plan sees the new file
        assert identity_digest(lists[1], local) != alone[1]
    assert identity_digest(lists[1], local) != alone[1]
