"""GUNW, the paper's core modality, from fetch to training: fetch gunw → stats → Dataset with a
PairRule → m3leo-train with gunw as the target and as an input, through the commands.

GUNW chips are float32 with NaN nodata; every JSON file written on the way must be strict
JSON (no ``NaN`` literal), which a strict parser checks. Fetching is offline (a saved search
and a folder of replica products: tests/helpers/gunw_world.py), so no service is needed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.asf_loopback import real_gunw_item
from helpers.cli import cli_env, run_cli
from helpers.gunw_world import make_world, write_saved_search
from m3leo_tiles.ml.dataset import M3LEODataset, PairRule

pytestmark = pytest.mark.slow

TRAIN = Path(sys.executable).parent / "m3leo-train"
REPO = Path(__file__).resolve().parents[2]


def strict(path: Path) -> dict:
    """``path`` parsed as strict JSON: a NaN/Infinity literal fails the test."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{path.name} holds {name}: not JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


@pytest.fixture(scope="module")
def fetched(shared_data, tmp_path_factory) -> Path:
    """A work folder holding ``data/demo/gunw-2020`` (fetched offline) and the demo grid."""
    base = tmp_path_factory.mktemp("gunw-e2e")
    world = make_world(base / "products", real_gunw_item(shared_data))
    names = sorted(world.products)
    saved = write_saved_search(
        [world.specs[n] for n in names], [world.products[n] for n in names], base / "saved.json"
    )
    work = base / "work"
    work.mkdir()
    done = run_cli(
        ["fetch", "gunw", "--year", "2020", "--aoi", "demo", "--out", "data", "--quiet",
         "--search-results", saved, "--source", base / "products", "--cache", base / "cache"],
        cwd=work, timeout=300, env=cli_env(M3LEO_EARTHDATA_HOST="127.0.0.1:9"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    dem = REPO / "recipes" / "examples" / "demo-dem.yaml"  # another dataset over the same tiles
    done = run_cli(["fetch", dem, "--aoi", "demo", "--out", "data", "--quiet"], cwd=work)
    assert done.returncode == 0, done.stderr
    return work


def test_stats_of_gunw_chips_are_strict_json(fetched: Path) -> None:
    done = run_cli(["stats", "gunw-2020", "--root", "data"], cwd=fetched)
    assert done.returncode == 0, done.stderr
    stats = strict(fetched / "data" / "demo" / "gunw-2020" / "stats-train.json")
    assert stats["nodata"] is None  # NaN nodata is written null
    layers = {band["band"] for band in stats["bands"]}
    assert {"unwrapped_phase", "coherence"} <= layers


def test_dataset_with_a_pair_rule_reads_gunw_chips(fetched: Path) -> None:
    done = run_cli(["stats", "gunw-2020", "--root", "data"], cwd=fetched)
    assert done.returncode == 0, done.stderr
    data = M3LEODataset(
        fetched / "data", "demo", inputs=["gunw-2020"], target="demo-dem", split=None,
        pairs=PairRule(count=2), normalize=True, grids_dir=fetched / "grids",
    )  # fmt: skip
    assert data.channel_names[:2] == (
        "gunw-2020:pair0:unwrapped_phase",
        "gunw-2020:pair0:coherence",
    )
    sample = data[0]
    assert torch.isfinite(sample["image"]).all()  # NaN nodata is filled, not fed to a model


@pytest.mark.parametrize(
    ("target", "inputs"), [("gunw-2020", "demo-dem"), ("demo-dem", "gunw-2020")]
)
def test_m3leo_train_on_gunw_as_target_and_as_input(
    fetched: Path, tmp_path: Path, target: str, inputs: str
) -> None:
    out = tmp_path / "run"
    done = subprocess.run(
        [str(TRAIN), "--target", target, "--target-type", "continuous", "--inputs", inputs,
         "--root", "data", "--aoi", "demo", "--epochs", "1", "--batch-size", "4", "--width", "4",
         "--threads", "1", "--quiet", "--out", str(out)],
        cwd=fetched, env=cli_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    for name in ("config.json", "test_metrics.json"):
        strict(out / name)
    assert strict(out / "test_metrics.json")["tiles"] >= 1
    for dataset in (target, inputs):  # statistics computed by m3leo-train, strict JSON too
        strict(fetched / "data" / "demo" / dataset / "stats-train.json")


def test_quicklook_of_gunw_chips_prints_no_warning(fetched: Path) -> None:
    done = run_cli(
        ["quicklook", "data/demo/gunw-2020", "--out", "gunw.png"],
        cwd=fetched, env=cli_env(PYTHONWARNINGS="error::RuntimeWarning"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and (fetched / "gunw.png").stat().st_size > 0
