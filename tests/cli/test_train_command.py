"""``m3leo-train``, the command layer: its help documents every option (default and example),
usage mistakes are one ``error:`` line and exit 2, and the options make the ``TrainConfig``
the training runs with (the training itself: tests/ml/test_ml_train.py)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from helpers.cli import assert_one_error_line
from m3leo_tiles.cli import train as command
from m3leo_tiles.ml import train as training
from m3leo_tiles.ml.tasks import TASKS
from m3leo_tiles.ml.train import TrainConfig

TRAIN = Path(sys.executable).parent / "m3leo-train"


def options_of_the_command() -> list[Any]:
    """Every option the command declares (click's view of the typer app), but --help."""
    declared = typer.main.get_command(command.app).params
    return [p for p in declared if p.opts and p.opts[0].startswith("--") and p.name != "help"]


def call(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    """In-process ``m3leo-train ARGS``: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as done:
        command.main([str(a) for a in args])
    captured = capsys.readouterr()
    code = done.value.code
    return (code if isinstance(code, int) else 0), captured.out, captured.err


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace the training by a recorder: what the command would train, and how."""
    seen: dict[str, Any] = {}

    def record(config: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
        seen.update(config=config, resume=resume, progress=progress)
        return {"split": "test", "miou": 0.25, "tiles": 3}

    monkeypatch.setattr(training, "train", record)
    return seen


def test_installed_help_lists_every_option_with_its_default_and_an_example() -> None:
    env = dict(os.environ, COLUMNS="250")  # one line per option: nothing wrapped
    result = subprocess.run([TRAIN, "--help"], capture_output=True, text=True, timeout=120,
                            env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for option in options_of_the_command():
        flag = option.opts[0]
        line = next((x for x in lines if re.search(rf"│ {flag}\s", x)), None)
        assert line is not None, f"{flag} is not in the help"
        assert f"E.g. {flag}" in line, line
        assert "Default:" in line or "(required)" in line, line
    assert "Examples:" in result.stdout and "m3leo-train --out runs/esawc --resume" in result.stdout


def test_the_defaults_the_help_states_are_the_config_defaults() -> None:
    stated = {}
    for option in options_of_the_command():
        found = re.search(r"Default: ([\w.-]+)\.", option.help or "")
        if found:
            stated[option.name] = found.group(1)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    numeric = ("epochs", "batch_size", "lr", "seed", "width", "workers", "reader_threads")
    for name in numeric:
        assert float(stated[name]) == defaults[name], name
    for name in ("root", "grids_dir", "device"):
        assert stated[name] == defaults[name], name
    assert {"task", "epochs", "out", "resume", "reader_threads", "no_normalize"} <= {
        option.name for option in options_of_the_command()
    }


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--out", "r", "--bogus"], ["unrecognized arguments: --bogus", "m3leo-train --help"]),
        (["--out", "r", "--epochs", "x"], ["argument --epochs: invalid int value: 'x'"]),
        (["--out", "r", "--lr"], ["argument --lr: expected one argument"]),
        (["--grid", "g", "--aoi", "a", "--out", "r"], ["argument --aoi: not allowed with"]),
        (["--task", "esawc"], ["the following arguments are required: --out"]),
        (["--out", "r", "--gri", "g"], ["ambiguous option: --gri could match --grid"]),
        (["--out", "r", "--bands", "s1grd"], ["--bands takes DATASET=BAND,BAND: 's1grd'"]),
    ],
)
def test_a_usage_mistake_is_one_error_line_and_exit_2(
    capsys: pytest.CaptureFixture, ran: dict, args: list[str], needles: list[str]
) -> None:
    code, out, err = call(capsys, *args)
    assert_one_error_line(code, err, *needles)
    assert out == "" and not ran


def test_an_unknown_task_is_one_line_naming_the_known_ones(
    capsys: pytest.CaptureFixture, ran: dict
) -> None:
    code, _, err = call(capsys, "--task", "nope", "--out", "r")
    line = assert_one_error_line(code, err, "argument --task: invalid choice: 'nope'")
    assert all(repr(name) in line for name in TASKS), line


def test_options_make_the_config_and_a_unique_prefix_is_the_option(
    capsys: pytest.CaptureFixture, ran: dict, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    code, stdout, _ = call(
        capsys, "--target", "agb", "--target-type", "continuous", "--target-bands", "agb, b2,",
        "--inputs", "s1grd,s2srm", "--grid", "g.geojson", "--bands", "s1grd=vv,vh",
        "--bands", "s2srm=B2", "--classes", "10,20", "--lr=0.01", "--epo", "3",
        "--reader-threads", "2", "--no-normalize", "--quie", "--out", out,
    )  # fmt: skip
    assert code == 0
    assert ran["config"] == TrainConfig(
        out=str(out), target="agb", target_type="continuous", target_bands=("agb", "b2"),
        classes=(10, 20), inputs=("s1grd", "s2srm"), grid="g.geojson", lr=0.01, epochs=3,
        bands={"s1grd": ("vv", "vh"), "s2srm": ("B2",)}, reader_threads=2, normalize=False,
    )  # fmt: skip
    assert ran["resume"] is False and ran["progress"] is False
    results = f"{out / 'test_metrics.json'}, curves.png, predictions.png"
    assert stdout == f"test miou 0.2500 over 3 tiles → {results}\n"


def test_resume_takes_the_stored_config_and_changes_only_where_and_how_long(
    capsys: pytest.CaptureFixture, ran: dict, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    stored = TrainConfig(out=str(out), task="esawc", epochs=3, seed=4)
    (out / "config.json").write_text(stored.to_json())
    code, _, _ = call(capsys, "--out", out, "--resume", "--epochs", "5", "--seed", "9",
                      "--device", "cuda", "--task", "agb")  # fmt: skip
    assert code == 0 and ran["resume"] is True
    assert ran["config"] == dataclasses.replace(stored, epochs=5, device="cuda")


def test_resume_without_a_run_is_one_line(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, _, err = call(capsys, "--out", tmp_path / "none", "--resume")
    assert_one_error_line(code, err, f"no run to resume in {tmp_path / 'none'}")


def test_the_old_entry_point_still_runs_the_command(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        training.main(["--out", "r", "--epochs", "x"])
    assert_one_error_line(done.value.code, capsys.readouterr().err, "invalid int value")
