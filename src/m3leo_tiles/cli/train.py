"""The ``m3leo-train`` command: a thin typer layer over ``m3leo_tiles.ml.train``.

It turns options into a ``TrainConfig`` (or the stored one, for ``--resume``), calls
``ml.train.train`` and prints where the results are; the training itself is ml/'s, which a
notebook calls the same way. Errors end as ``m3leo-tiles``' do (``cli.common``): one
``error:`` line and exit 2, 130 on Ctrl-C, 143 on SIGTERM with the resume command.

Usage mistakes keep the wording the command had when it was built on argparse
(``argument --epochs: invalid int value: 'x' (see m3leo-train --help)``), and an option may
still be shortened to any unique prefix (``--quie``), as argparse allowed.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from m3leo_tiles.cli.common import UsageError, metavars_for_people, one_line, run_app
from m3leo_tiles.core.errors import ConfigError
from m3leo_tiles.ml.tasks import TASKS
from m3leo_tiles.ml.train import CONFIG_NAME, CURVES_NAME, PREDICTIONS_NAME, TEST_METRICS_NAME

try:  # the classes of click's usage errors whose argparse wording differs
    from typer._click.exceptions import BadOptionUsage, MissingParameter
except ImportError:  # pragma: no cover (a typer that uses click itself)
    from click.exceptions import BadOptionUsage, MissingParameter

metavars_for_people()

PROG = "m3leo-train"
TARGET_TYPES = ("categorical", "continuous")
RESUMABLE = ("epochs", "device", "workers", "reader_threads", "threads")
"""What ``--resume`` may change: the run is defined by its config, except how long and where."""

N = TypeVar("N", int, float)

app = typer.Typer(
    name=PROG,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _opt(help: str, metavar: str | None = None, *names: str) -> Any:
    """An option whose help ends with its default and an example, as every option's does."""
    return typer.Option(*names, help=help, metavar=metavar, show_default=False)


@functools.cache
def _option_names() -> frozenset[str]:
    """Long option names without ``--`` (and ``h``), for prefixes such as ``--quie``."""
    names = {name.replace("_", "-") for name in inspect.signature(command).parameters}
    return frozenset(names - {"ctx"} | {"help", "h"})


def _expand_prefix(token: str) -> str:
    """argparse's abbreviations: a unique prefix of a long option stands for it."""
    known = _option_names()
    if token in known:
        return token
    matches = sorted(name for name in known if len(name) > 1 and name.startswith(token))
    if len(matches) > 1:
        spelled = ", ".join(f"--{name}" for name in matches)
        raise UsageError(f"ambiguous option: --{token} could match {spelled}")
    return matches[0] if matches else token


@app.command(
    context_settings={
        "help_option_names": ["-h", "--help"],
        "token_normalize_func": _expand_prefix,
        "allow_extra_args": True,  # said as argparse did: "unrecognized arguments: ..."
        "ignore_unknown_options": True,
    },
    epilog=(
        "\b\nExamples:\n"
        "  m3leo-train --task esawc --aoi conus --epochs 20 --out runs/esawc\n"
        "  m3leo-train --out runs/esawc --resume\n"
        "  m3leo-train --target agb --target-type continuous --inputs s1grd \\\n"
        "      --grid grids/conus/tiles.geojson --device cuda --out runs/agb"
    ),
)
def command(
    ctx: typer.Context,
    task: Annotated[str | None, _opt(
        f"A paper task preset: {', '.join(TASKS)}. Default: none (or --target). "
        "E.g. --task esawc", "TASK")] = None,
    target: Annotated[str | None, _opt(
        "Any target dataset (with --target-type). Default: the task's. E.g. --target agb",
        "DATASET")] = None,
    target_type: Annotated[str | None, _opt(
        f"{' or '.join(TARGET_TYPES)}, for --target. Default: none. "
        "E.g. --target-type continuous", "TYPE")] = None,
    target_bands: Annotated[str | None, _opt(
        "Target band(s). Default: the task's, else the first. E.g. --target-bands agb",
        "BAND,...")] = None,
    classes: Annotated[str | None, _opt(
        "Class values in index order, or esa-worldcover. Default: the task's, else those the "
        "train statistics found. E.g. --classes 10,20,30", "VALUES")] = None,
    inputs: Annotated[str | None, _opt(
        "Input datasets. Default: the task's (s1grd,s2srm). E.g. --inputs s1grd,s2srm",
        "DATASET,...")] = None,
    bands: Annotated[list[str] | None, _opt(
        "Bands to use of a dataset (repeatable). Default: all. E.g. --bands s1grd=vv,vh",
        "DATASET=BAND,...")] = None,
    root: Annotated[str | None, _opt(
        "The --out folder of fetch. Default: data. E.g. --root /data/m3leo", "DIR")] = None,
    grid: Annotated[str | None, _opt(
        "Grid file with the splits (or --aoi). Default: none. "
        "E.g. --grid grids/conus/tiles.geojson", "FILE")] = None,
    aoi: Annotated[str | None, _opt(
        "AOI name: its grid under --grids-dir (or --grid). Default: none. E.g. --aoi conus",
        "NAME")] = None,
    grids_dir: Annotated[str | None, _opt(
        "Where grids are kept. Default: grids. E.g. --grids-dir /data/grids", "DIR")] = None,
    epochs: Annotated[str | None, _opt(
        "Epochs in all. Default: 10. E.g. --epochs 20", "N")] = None,
    batch_size: Annotated[str | None, _opt(
        "Tiles per batch. Default: 8. E.g. --batch-size 16", "N")] = None,
    lr: Annotated[str | None, _opt(
        "Adam learning rate. Default: 1e-3. E.g. --lr 1e-4", "RATE")] = None,
    device: Annotated[str | None, _opt(
        "cpu or cuda. Default: cpu. E.g. --device cuda", "DEVICE")] = None,
    seed: Annotated[str | None, _opt(
        "Same seed, same run on CPU. Default: 0. E.g. --seed 1", "N")] = None,
    width: Annotated[str | None, _opt(
        "UNet's first width (paper: 32). Default: 32. E.g. --width 16", "N")] = None,
    chip_size: Annotated[str | None, _opt(
        "Pixels per side. Default: the finest input's. E.g. --chip-size 224", "PX")] = None,
    workers: Annotated[str | None, _opt(
        "DataLoader worker processes. Default: 0. E.g. --workers 4", "N")] = None,
    reader_threads: Annotated[str | None, _opt(
        "Read batches ahead in N threads instead of --workers processes. Default: 0. "
        "E.g. --reader-threads 2", "N")] = None,
    threads: Annotated[str | None, _opt(
        "torch CPU threads. Default: torch's. E.g. --threads 4", "N")] = None,
    no_normalize: Annotated[bool, _opt(
        "Feed raw values (no train statistics). Default: off. E.g. --no-normalize", None,
        "--no-normalize")] = False,
    out: Annotated[str, _opt(
        "Run folder (required). E.g. --out runs/esawc", "DIR")] = "",
    resume: Annotated[bool, _opt(
        "Continue the run in --out. Default: off. E.g. --resume", None, "--resume")] = False,
    quiet: Annotated[bool, _opt(
        "No progress bar. Default: off. E.g. --quiet", None, "--quiet")] = False,
) -> None:  # fmt: skip
    """Train the M3LEO paper's baseline (a UNet with half the usual channels and bilinear
    upsampling) on fetched chips. Each epoch writes checkpoints/last.pt and a row of
    metrics.csv; the end writes test_metrics.json, curves.png and predictions.png.

    Exit codes: 0 done, 2 bad usage or configuration (one error line), 1 or another code
    for errors of their own, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM); finished
    epochs are kept in every case and --resume carries on.
    """
    options = dict(ctx.params)
    _check_usage(ctx, options)
    config = config_from_options(options)
    _run(config, out, resume=resume, progress=not quiet)


def _check_usage(ctx: typer.Context, options: dict[str, Any]) -> None:
    """What argparse checked while parsing: nothing unknown, choices, --grid xor --aoi, --out."""
    if ctx.args:
        raise UsageError(f"unrecognized arguments: {' '.join(ctx.args)}")
    for name, choices in (("task", tuple(TASKS)), ("target_type", TARGET_TYPES)):
        value = options[name]
        if value is not None and value not in choices:
            known = ", ".join(repr(choice) for choice in choices)
            raise UsageError(
                f"argument {_flag(name)}: invalid choice: {value!r} (choose from {known})"
            )
    given = [name for name in options if name in ("grid", "aoi") and options[name] is not None]
    if len(given) == 2:  # in the order given (click fills ctx.params so)
        raise UsageError(f"argument {_flag(given[1])}: not allowed with argument {_flag(given[0])}")
    if not options["out"]:
        raise UsageError("the following arguments are required: --out")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _number(options: dict[str, Any], name: str, kind: Callable[[str], N]) -> N | None:
    """An option's number, or None when not given; argparse's wording when it is no number."""
    value = options[name]
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError:
        raise UsageError(
            f"argument {_flag(name)}: invalid {kind.__name__} value: {value!r}"
        ) from None


def _csv(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def _bands(values: Sequence[str]) -> dict[str, tuple[str, ...]]:
    found = {}
    for value in values:
        name, sep, bands = value.partition("=")
        if not sep or not bands:
            raise ConfigError(f"--bands takes DATASET=BAND,BAND: {value!r}")
        found[name.strip()] = _csv(bands)
    return found


def _classes(text: str | None) -> str | tuple[int, ...] | None:
    """``10,20,...`` as integers; a preset name (``esa-worldcover``) as it is."""
    if not text or not text[0].isdigit():
        return text
    try:
        return tuple(int(v) for v in _csv(text))
    except ValueError:
        raise ConfigError(f"--classes takes integers or a preset name: {text!r}") from None


def config_from_options(options: dict[str, Any]) -> Any:
    """The run's ``TrainConfig``: from the options, or the stored one for ``--resume`` (where
    only how long and where it runs may change)."""
    from m3leo_tiles.ml.train import TrainConfig

    out = Path(options["out"])
    numbers = {"epochs": int, "batch_size": int, "lr": float, "seed": int, "width": int,
               "chip_size": int, "workers": int, "threads": int, "reader_threads": int}  # fmt: skip
    given = {name: _number(options, name, kind) for name, kind in numbers.items()}
    given.update({name: options[name] for name in ("device", "root", "grids_dir")})
    if options["resume"]:
        if not (out / CONFIG_NAME).exists():
            raise ConfigError(
                f"no run to resume in {out} (no {CONFIG_NAME}); start one without --resume"
            )
        stored = TrainConfig.from_json((out / CONFIG_NAME).read_text(encoding="utf-8"))
        allowed = {k: v for k, v in given.items() if k in RESUMABLE and v is not None}
        return replace(stored, **allowed)
    classes = _classes(options["classes"])
    return TrainConfig(
        out=str(out),
        task=options["task"],
        target=options["target"],
        target_type=options["target_type"],
        target_bands=_csv(options["target_bands"]),
        classes=classes,
        inputs=_csv(options["inputs"]),
        bands=_bands(options["bands"] or ()),
        grid=options["grid"],
        aoi=options["aoi"],
        normalize=not options["no_normalize"],
        **{k: v for k, v in given.items() if v is not None},
    )


def _run(config: Any, out: str, resume: bool, progress: bool) -> None:
    """Train (SIGTERM stops it as Ctrl-C does) and say where the results are, or how to
    resume."""
    from m3leo_tiles.core.signals import sigterm_as_interrupt
    from m3leo_tiles.ml import train as training

    try:
        with sigterm_as_interrupt():
            result = training.train(config, resume=resume, progress=progress)
    except KeyboardInterrupt as error:  # typer would turn it into a silent exit 130
        raise typer.Exit(_stopped(error, out)) from None
    metric = "miou" if "miou" in result else "rmse"
    print(
        f"{result['split']} {metric} {result[metric]:.4f} over {result['tiles']} tiles → "
        f"{Path(out) / TEST_METRICS_NAME}, {CURVES_NAME}, {PREDICTIONS_NAME}"
    )


def _stopped(error: KeyboardInterrupt, out: str | None) -> int:
    """One line: stopped, what is kept and the command that resumes; 130 or 143."""
    from m3leo_tiles.cli.common import exit_code_of_interrupt

    code = exit_code_of_interrupt(error)
    said = "terminated (SIGTERM)" if code == 143 else "interrupted"
    if out is None:  # stopped before the options were read
        print(said, file=sys.stderr)
        return code
    print(
        f"{said}; finished epochs are kept in {out}/checkpoints/last.pt; resume with: "
        f"m3leo-train --out {out} --resume",
        file=sys.stderr,
    )
    return code


def _usage_message(error: UsageError, prog_name: str) -> str:
    """argparse's wording of the usage mistakes that click words otherwise."""
    if isinstance(error, MissingParameter):
        names = error.param.opts if error.param is not None else ["--out"]
        text = f"the following arguments are required: {', '.join(names)}"
    elif isinstance(error, BadOptionUsage) and "requires an argument" in error.message:
        text = f"argument {error.option_name}: expected one argument"
    else:
        text = one_line(error.format_message())
    return f"{text} (see {prog_name} --help)"


def main(argv: list[str] | None = None) -> NoReturn:
    """Console entry point (``m3leo-train``): exit codes as the command's help says."""
    run_app(
        app,
        argv,
        PROG,
        on_interrupt=lambda error: _stopped(error, None),
        usage_message=_usage_message,
    )


if __name__ == "__main__":
    main()
