"""m3leo-train: a short run writes its checkpoint, metrics and plots; resuming changes nothing."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers.chip_tree import ChipTree, make_chip_tree
from helpers.cli import assert_one_error_line, ctrl_c_as_a_terminal_gives
from m3leo_tiles.cli.train import main
from m3leo_tiles.ml.train import TrainConfig, train
from m3leo_tiles.ml.unet import PAPER_WIDTH, UNet, parameter_count

TRAIN = Path(sys.executable).parent / "m3leo-train"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> ChipTree:
    return make_chip_tree(tmp_path_factory.mktemp("train-tree"))


def config(tree: ChipTree, out: Path, **options) -> TrainConfig:
    defaults = {
        "out": str(out), "task": "esawc", "inputs": ("s2x", "s1x"), "root": str(tree.root),
        "grid": str(tree.grid), "grids_dir": str(tree.grids_dir), "epochs": 2,
        "batch_size": 3, "width": 4, "threads": 1, "predictions": 2,
    }  # fmt: skip
    return TrainConfig(**{**defaults, **options})


def quiet(_: str) -> None:
    pass


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_two_epochs_write_checkpoint_metrics_and_plots(tree: ChipTree, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train(config(tree, out, workers=2), progress=False, log=quiet)  # through the ring
    assert (out / "checkpoints" / "last.pt").exists()
    assert (out / "checkpoints" / "best.pt").exists()
    history = rows(out / "metrics.csv")
    assert [r["epoch"] for r in history] == ["1", "2"]
    assert set(history[0]) == {
        "epoch", "train_loss", "train_miou", "val_loss", "val_miou", "seconds",
    }  # fmt: skip
    assert all(0 <= float(r["val_miou"]) <= 1 for r in history)
    saved = json.loads((out / "test_metrics.json").read_text())
    assert saved["split"] == "test" and saved["tiles"] == 3 and len(saved["iou"]) == 11
    assert saved["classes"] == [10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100]
    assert saved["miou"] == result["miou"] and 0 <= saved["miou"] <= 1
    for name in ("curves.png", "predictions.png"):
        with Image.open(out / name) as picture:
            assert picture.width >= 600 and picture.height >= 300
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert state["epoch"] == 2 and len(state["history"]) == 2


def test_resume_equals_an_uninterrupted_run(tree: ChipTree, tmp_path: Path) -> None:
    options = {"task": "agb", "epochs": 3, "seed": 7}
    whole = tmp_path / "whole"
    train(config(tree, whole, **options), progress=False, log=quiet)
    parts = tmp_path / "parts"
    assert train(config(tree, parts, **options), progress=False, log=quiet, stop_after=1) == {}
    assert [r["epoch"] for r in rows(parts / "metrics.csv")] == ["1"]
    # where a run reads its batches may change on resume: here threads read them ahead
    resumed = config(tree, parts, **options, reader_threads=2)
    train(resumed, resume=True, progress=False, log=quiet)
    a = torch.load(whole / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(parts / "checkpoints" / "last.pt", weights_only=False)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key

    def without_time(path: Path) -> list[dict[str, str]]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows(path)]

    assert without_time(whole / "metrics.csv") == without_time(parts / "metrics.csv")
    assert len(rows(whole / "metrics.csv")) == 3
    first = json.loads((whole / "test_metrics.json").read_text())
    assert first == json.loads((parts / "test_metrics.json").read_text())
    assert {"rmse", "mse", "mae", "rmse_of_train_mean"} <= set(first)
    # another seed is another run (so the equality above is not trivially true)
    other = tmp_path / "other"
    train(config(tree, other, **{**options, "seed": 8, "epochs": 1}), progress=False, log=quiet)
    c = torch.load(other / "checkpoints" / "last.pt", weights_only=False)
    assert not torch.equal(c["model"]["inc.0.weight"], a["model"]["inc.0.weight"])


def unet_parameters(inputs: int, outputs: int, w: int) -> int:
    """The UNet's parameters counted by hand: conv weights (no bias), batch norms, head."""

    def double(cin: int, cout: int, mid: int | None = None) -> int:
        mid = mid or cout
        return 9 * cin * mid + 2 * mid + 9 * mid * cout + 2 * cout

    down = double(inputs, w) + double(w, 2 * w) + double(2 * w, 4 * w) + double(4 * w, 8 * w)
    down += double(8 * w, 8 * w)
    up = double(16 * w, 4 * w, 8 * w) + double(8 * w, 2 * w, 4 * w)
    up += double(4 * w, w, 2 * w) + double(2 * w, w, w)
    return down + up + w * outputs + outputs


def test_paper_unet_parameter_count() -> None:
    # The paper's esawc configuration: s1grd (16 bands) + s2srm (40 bands) in, 11 classes out,
    # half the usual widths (32 ... 256), bilinear upsampling: 4,333,995 parameters.
    paper = UNet(16 + 40, 11, PAPER_WIDTH)
    assert parameter_count(paper) == unet_parameters(56, 11, 32) == 4_333_995
    # the usual width is the well-known bilinear UNet (3 bands in, 2 classes: 17.26 M)
    assert parameter_count(UNet(3, 2, 64)) == unet_parameters(3, 2, 64) == 17_263_042
    assert paper(torch.zeros(1, 56, 50, 50)).shape == (1, 11, 50, 50)


def one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    return assert_one_error_line(stopped.value.code, capsys.readouterr().err)


def test_bad_input_is_one_line_and_exit_2(
    tree: ChipTree, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    where = ["--root", str(tree.root), "--grid", str(tree.grid), "--grids-dir", str(tree.grids_dir)]
    out = ["--out", str(tmp_path / "run"), "--quiet"]
    line = one_line_error(capsys, ["--task", "esawc", "--inputs", "s2x,nothere", *where, *out])
    assert "unknown dataset 'nothere'" in line
    line = one_line_error(
        capsys,
        ["--target", "missing", "--target-type", "continuous", "--inputs", "s2x", *where, *out],
    )
    assert "unknown dataset 'missing'" in line
    only_test = tmp_path / "data"
    (only_test / "tst" / "esawc").mkdir(parents=True)
    for identifier in tree.split_ids("test"):
        shutil.copy(tree.folder("esawc") / f"{identifier}.tif", only_test / "tst" / "esawc")
    shutil.copytree(tree.folder("s2x"), only_test / "tst" / "s2x")
    moved = ["--root", str(only_test), "--grid", str(tree.grid), "--grids-dir", str(tree.grids_dir)]
    line = one_line_error(capsys, ["--task", "esawc", "--inputs", "s2x", *moved, *out])
    assert "no chips of split 'train'" in line
    line = one_line_error(capsys, ["--task", "nope", *where, *out])
    assert "invalid choice" in line
    line = one_line_error(capsys, ["--target", "esawc", "--inputs", "s2x", *where, *out])
    assert "--target-type" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resume_without_a_run_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "nothing"
    line = one_line_error(capsys, ["--out", str(out), "--resume"])
    assert f"no run to resume in {out}" in line and "--task" not in line


def stop_a_long_run(tree: ChipTree, out: Path, signum: int) -> tuple[int, str]:
    """Start a 500-epoch run, send ``signum`` once its first checkpoint exists: (code, stderr)."""
    command = [
        TRAIN, "--task", "esawc", "--inputs", "s2x,s1x", "--root", tree.root,
        "--grid", tree.grid, "--grids-dir", tree.grids_dir, "--width", "4",
        "--batch-size", "3", "--epochs", "500", "--threads", "1", "--out", out, "--quiet",
    ]  # fmt: skip
    running = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=ctrl_c_as_a_terminal_gives)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "last.pt").exists() and time.monotonic() < deadline:
        assert running.poll() is None, running.communicate()
        time.sleep(0.2)
    running.send_signal(signum)
    _, stderr = running.communicate(timeout=60)
    return running.returncode, stderr


@pytest.mark.slow
def test_sigterm_says_how_to_resume_and_exits_143(tree: ChipTree, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, stderr = stop_a_long_run(tree, out, signal.SIGTERM)
    assert code == 143, stderr
    assert "Traceback" not in stderr and stderr.startswith("terminated (SIGTERM)")
    assert f"m3leo-train --out {out} --resume" in stderr and stderr.count("\n") == 1


@pytest.mark.slow
def test_ctrl_c_then_resume_from_the_command_line(tree: ChipTree, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, stderr = stop_a_long_run(tree, out, signal.SIGINT)
    assert code == 130, stderr
    assert "Traceback" not in stderr and f"m3leo-train --out {out} --resume" in stderr
    # the last checkpoint says how far it got (metrics.csv follows it, and may lag by a row
    # when the signal lands between the two writes: resuming rewrites it from the checkpoint)
    done = torch.load(out / "checkpoints" / "last.pt", weights_only=False)["epoch"]
    assert 1 <= done < 500
    again = subprocess.run(
        [TRAIN, "--out", out, "--resume", "--epochs", str(done + 1), "--quiet"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert f"resuming {out} after epoch {done}" in again.stdout
    assert "test miou" in again.stdout
    assert [int(r["epoch"]) for r in rows(out / "metrics.csv")] == list(range(1, done + 2))
