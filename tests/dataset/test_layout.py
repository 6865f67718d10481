"""One dataset folder's layout (dataset/layout.py): the file names every reader and writer
uses, which files are chips, and which folders are datasets."""

from __future__ import annotations

from pathlib import Path

from m3leo_tiles.dataset.layout import DatasetLayout, datasets_under, is_chip_name


def test_the_names_of_a_dataset_folder_stay_as_they_are(tmp_path: Path) -> None:
    layout = DatasetLayout.of(tmp_path, "rome", "demo-dem")
    folder = tmp_path / "rome" / "demo-dem"
    assert (layout.folder, layout.aoi, layout.dataset) == (folder, "rome", "demo-dem")
    assert layout.chip("33N_1036_060") == folder / "33N_1036_060.tif"
    assert layout.manifest == folder / "manifest.csv"
    assert layout.log == folder / "fetch.log"
    assert layout.lock == folder / ".m3leo.lock"
    assert layout.stats("val") == folder / "stats-val.json"
    assert layout.pack == folder / "pack"
    assert DatasetLayout(folder) == layout  # a reader handed the folder finds the same


def test_hidden_partial_files_are_never_chips(tmp_path: Path) -> None:
    layout = DatasetLayout(tmp_path)
    (tmp_path / "A.tif").write_bytes(b"12345")
    (tmp_path / ".A.tif.123.x1y2.part").write_bytes(b"12")
    (tmp_path / ".B.tif").write_bytes(b"1")
    (tmp_path / "manifest.csv").write_text("identifier\n")
    assert not is_chip_name(".B.tif") and is_chip_name("B.tif")
    assert layout.chip_ids() == {"A"}
    assert layout.chip_sizes() == {"A": 5}
    assert layout.chips() == {"A": tmp_path / "A.tif"}


def test_datasets_under_a_root(tmp_path: Path) -> None:
    for aoi, name, what in (
        ("rome", "with-manifest", "manifest.csv"),
        ("rome", "only-chips", "X.tif"),
        ("pakin", "only-a-lock", ".m3leo.lock"),
        ("pakin", "nothing", "notes.txt"),
        ("pakin", ".hidden", "manifest.csv"),
    ):
        (tmp_path / aoi / name).mkdir(parents=True)
        (tmp_path / aoi / name / what).write_text("")
    (tmp_path / "stray.tif").write_text("")
    found = [(d.aoi, d.dataset) for d in datasets_under(tmp_path)]
    assert found == [("pakin", "only-a-lock"), ("rome", "only-chips"), ("rome", "with-manifest")]
    unlocked = [d.dataset for d in datasets_under(tmp_path, locked=False)]
    assert unlocked == ["only-chips", "with-manifest"]  # a run that wrote nothing yet
    assert list(datasets_under(tmp_path / "missing")) == []
