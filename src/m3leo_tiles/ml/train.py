"""``m3leo-train``: train the paper's baseline on fetched chips, resumably, with curves.

One command (``m3leo_tiles.cli.train``; notebooks call ``train(TrainConfig(...))``), from
chips to a trained model and pictures::

    m3leo-train --task esawc --aoi conus --epochs 20 --out runs/esawc
    m3leo-train --out runs/esawc --resume          # after Ctrl-C: carries on where it stopped

The run folder holds ``config.json`` (everything needed to resume), ``checkpoints/last.pt``
(written atomically after every epoch: model, optimiser, history, RNG state) and ``best.pt``
(best validation metric), ``metrics.csv`` (one row per epoch), and at the end
``test_metrics.json``, ``curves.png`` and ``predictions.png``.

Why resuming gives the same result as an uninterrupted run: every epoch's shuffling comes from
a generator seeded by (seed, epoch), not from a stream that an interruption would cut; the
checkpoint holds the model, the optimiser and torch's RNG state; and CPU kernels are run in
deterministic mode. ``metrics.csv`` is rewritten from the checkpoint's history, so an epoch
that finished after the last checkpoint (and is therefore redone) is not listed twice.
"""

from __future__ import annotations

import csv
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from m3leo_tiles.core import strict_json
from m3leo_tiles.core.atomic import replacing, write_text
from m3leo_tiles.core.errors import ConfigError

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.csv"
TEST_METRICS_NAME = "test_metrics.json"
CURVES_NAME = "curves.png"
PREDICTIONS_NAME = "predictions.png"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run; stored in the run folder so ``--resume`` needs no more."""

    out: str
    task: str | None = None
    target: str | None = None
    target_type: str | None = None
    target_bands: tuple[str, ...] = ()
    classes: str | tuple[int, ...] | None = None
    inputs: tuple[str, ...] = ()
    bands: dict[str, tuple[str, ...]] = field(default_factory=dict)
    root: str = "data"
    grid: str | None = None
    aoi: str | None = None
    grids_dir: str = "grids"
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    device: str = "cpu"
    seed: int = 0
    width: int = 32
    chip_size: int | None = None
    workers: int = 0
    reader_threads: int = 0  # batches read ahead by threads of the training process
    threads: int | None = None  # torch's CPU threads (None: torch's default)
    normalize: bool = True
    predictions: int = 4

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        data = strict_json.loads(text)
        for key in ("target_bands", "inputs"):
            data[key] = tuple(data.get(key) or ())
        if isinstance(data.get("classes"), list):
            data["classes"] = tuple(data["classes"])
        data["bands"] = {k: tuple(v) for k, v in (data.get("bands") or {}).items()}
        return cls(**data)

    def to_json(self) -> str:
        return strict_json.dumps(asdict(self), indent=1)


# --- data ----------------------------------------------------------------------------------


@dataclass
class Data:
    train: Any
    val: Any | None
    test: Any | None
    target_mean: float = 0.0
    target_std: float = 1.0


def build_data(config: TrainConfig, log: Callable[[str], None]) -> Data:
    from m3leo_tiles.dataset.chipsets import find_dataset
    from m3leo_tiles.grid import read_grid
    from m3leo_tiles.ml.dataset import M3LEODataset, NoChipsError
    from m3leo_tiles.ml.tasks import make_task
    from m3leo_tiles.tools.stats import ensure_train_stats, read_stats

    task = make_task(
        config.task, config.target, config.target_type, config.inputs or None,
        config.target_bands, config.classes,
    )  # fmt: skip
    grid = config.grid or config.aoi
    if grid is None:
        raise ConfigError("give --grid FILE or --aoi NAME (the grid whose splits to use)")
    from m3leo_tiles.dataset.chipsets import grid_path_for

    grid_file = grid_path_for(grid, "", Path(config.grids_dir))
    if not grid_file.exists():
        raise ConfigError(f"grid {grid_file} not found; make it with `m3leo-tiles grid`")
    aoi = read_grid(grid_file).aoi
    root = Path(config.root)
    folders = {name: find_dataset(name, root, aoi) for name in (*task.inputs, task.target)}
    needs_stats = [folders[n] for n in task.inputs] if config.normalize else []
    if not task.categorical or task.classes is None:
        needs_stats.append(folders[task.target])
    for folder in dict.fromkeys(needs_stats):
        ensure_train_stats(folder, grid_file, Path(config.grids_dir), log)

    def make(split: str) -> Any:
        return M3LEODataset(
            root, grid_file, inputs=task.inputs, target=task.target, split=split,
            bands=config.bands, chip_size=config.chip_size, normalize=config.normalize,
            target_type=task.target_type, target_bands=task.target_bands or None,
            classes=task.classes, grids_dir=config.grids_dir,
        )  # fmt: skip

    train = make("train")
    optional = {}
    for split in ("val", "test"):
        try:
            optional[split] = make(split)
        except NoChipsError:
            log(f"no {split} tiles with a {task.target} chip: {split} metrics are skipped")
            optional[split] = None
    data = Data(train, optional["val"], optional["test"])
    if not train.categorical:
        band = read_stats(folders[task.target], "train").band(train.target.bands[0])
        data.target_mean = band.mean
        data.target_std = band.std if band.std > 0 else 1.0
    return data


# --- losses and metrics --------------------------------------------------------------------


class Meter:
    """Accumulates the loss and the task's metric over batches (confusion matrix or sums)."""

    def __init__(self, categorical: bool, num_classes: int, mean: float, std: float) -> None:
        import torch

        self.categorical, self.mean, self.std = categorical, mean, std
        self.loss_sum, self.batches = 0.0, 0
        self.confusion = torch.zeros((num_classes, num_classes), dtype=torch.int64)
        self.squared, self.absolute, self.pixels, self.squared_mean = 0.0, 0.0, 0, 0.0

    def add(self, loss: float, output: Any, batch: dict[str, Any]) -> None:
        import torch

        self.loss_sum += loss
        self.batches += 1
        with torch.no_grad():
            if self.categorical:
                mask = batch["mask"]
                valid = mask >= 0
                predicted = output.argmax(1)[valid]
                truth = mask[valid]
                n = self.confusion.shape[0]
                counts = torch.bincount(truth * n + predicted, minlength=n * n).view(n, n)
                self.confusion += counts.cpu()  # counted where the model runs (GPU or CPU)
            else:
                target = batch["target"]
                valid = torch.isfinite(target)
                prediction = output * self.std + self.mean
                error = (prediction[valid] - target[valid]).double()
                self.squared += float((error**2).sum())
                self.absolute += float(error.abs().sum())
                self.squared_mean += float(((target[valid].double() - self.mean) ** 2).sum())
                self.pixels += int(valid.sum())

    def result(self) -> dict[str, Any]:
        loss = self.loss_sum / max(1, self.batches)
        if self.categorical:
            c = self.confusion.double()
            tp = c.diag()
            union = c.sum(0) + c.sum(1) - tp
            present = union > 0
            ratio = tp / union.clamp(min=1)
            iou = [float(v) if p else math.nan for v, p in zip(ratio, present, strict=True)]
            miou = float(ratio[present].mean()) if present.any() else math.nan
            accuracy = float(tp.sum() / c.sum().clamp(min=1))
            return {"loss": loss, "miou": miou, "iou": iou, "pixel_accuracy": accuracy}
        mse = self.squared / max(1, self.pixels)
        return {
            "loss": loss, "mse": mse, "rmse": math.sqrt(mse),
            "mae": self.absolute / max(1, self.pixels),
            # what predicting the train mean everywhere would score: the bar to beat
            "rmse_of_train_mean": math.sqrt(self.squared_mean / max(1, self.pixels)),
        }  # fmt: skip


def compute_loss(output: Any, batch: dict[str, Any], categorical: bool, mean: float, std: float):
    import torch.nn.functional as F

    from m3leo_tiles.ml.dataset import IGNORE_INDEX

    if categorical:
        mask = batch["mask"]
        if not (mask >= 0).any():
            return output.sum() * 0.0
        return F.cross_entropy(output, mask, ignore_index=IGNORE_INDEX)
    target = batch["target"]
    valid = target == target  # not NaN
    if not valid.any():
        return output.sum() * 0.0
    scaled = (target - mean) / std
    return F.mse_loss(output[valid], scaled[valid])


# --- the run -------------------------------------------------------------------------------


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _loader(dataset: Any, config: TrainConfig, shuffle: bool, epoch: int = 0) -> Any:
    import torch

    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    return dataset.loader(
        config.batch_size,
        shuffle,
        num_workers=config.workers,
        threads=config.reader_threads,
        generator=generator,
    )


def _save_atomically(payload: dict[str, Any], path: Path) -> None:
    import torch

    with replacing(path) as partial:
        torch.save(payload, partial)


def _write_metrics(path: Path, history: Sequence[dict[str, Any]]) -> None:
    if not history:
        return
    columns = list(history[0])
    with replacing(path) as partial, partial.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in history:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})


def _evaluate(model: Any, loader: Any, data: Data, device: str, num_classes: int) -> dict:
    import torch

    categorical = data.train.categorical
    meter = Meter(categorical, num_classes, data.target_mean, data.target_std)
    model.eval()
    with torch.no_grad():
        for batch in loader:
            batch = _to(batch, device)
            output = model(batch["image"])
            loss = compute_loss(output, batch, categorical, data.target_mean, data.target_std)
            meter.add(loss.item(), output, batch)
    return meter.result()


def _to(batch: dict[str, Any], device: str) -> dict[str, Any]:
    return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}


def train(
    config: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Run (or resume) training; returns the test metrics. ``stop_after`` ends the run after
    that many epochs of this call without the final evaluation (as an interruption would)."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        return _train(config, resume, progress, log, stop_after)
    finally:  # a notebook's torch settings are its own
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(
    config: TrainConfig,
    resume: bool,
    progress: bool,
    log: Callable[[str], None],
    stop_after: int | None,
) -> dict[str, Any]:
    import torch

    from m3leo_tiles.ml.unet import UNet, parameter_count

    out = Path(config.out)
    checkpoint_path = out / "checkpoints" / "last.pt"
    _check_run(config, resume, checkpoint_path)
    _seed_everything(config.seed)
    if config.device == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    data = build_data(config, log)
    categorical = data.train.categorical
    outputs = data.train.num_classes if categorical else len(data.train.target.bands)
    model = UNet(len(data.train.channel_names), outputs, config.width).to(config.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    run = _Run(config, data, model, optimizer, outputs, checkpoint_path)
    if resume:
        run.restore(log)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / CONFIG_NAME, config.to_json() + "\n")
    _write_metrics(out / METRICS_NAME, run.history)
    log(
        f"{data.train!r}; UNet width {config.width}: {parameter_count(model):,} parameters; "
        f"{config.device}"
    )
    for done_now, epoch in enumerate(range(run.start, config.epochs + 1)):
        if stop_after is not None and done_now >= stop_after:
            return {}
        began = time.perf_counter()
        row = run.train_epoch(epoch, progress)
        row.update(run.validate())
        row["seconds"] = time.perf_counter() - began
        run.save(row)
        log(
            " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
        )
    return finish(model, data, config, run.history, outputs)


def _check_run(config: TrainConfig, resume: bool, checkpoint_path: Path) -> None:
    """Settings that cannot run, a run that would be overwritten; sets torch's threads."""
    import torch

    out = Path(config.out)
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda, but torch sees no CUDA device; use --device cpu")
    if config.epochs < 1 or config.batch_size < 1 or config.lr <= 0 or config.width < 1:
        raise ConfigError("--epochs, --batch-size, --width must be at least 1 and --lr above 0")
    if not resume and checkpoint_path.exists():
        raise ConfigError(f"{out} already holds a run; add --resume, or choose another --out")
    if config.threads is not None:
        if config.threads < 1:
            raise ConfigError("--threads must be at least 1")
        torch.set_num_threads(config.threads)


@dataclass
class _Run:
    """One training run's moving parts, and its steps: restore, train an epoch, validate, save.

    ``history`` holds one row per finished epoch; ``best`` the best validation metric so far
    (higher mIoU, lower RMSE); ``start`` the first epoch still to train.
    """

    config: TrainConfig
    data: Data
    model: Any
    optimizer: Any
    outputs: int
    checkpoint_path: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    best: float | None = None
    start: int = 1

    @property
    def metric(self) -> str:
        return "miou" if self.data.train.categorical else "rmse"

    def restore(self, log: Callable[[str], None]) -> None:
        """Model, optimiser, RNG state and history from ``checkpoints/last.pt``."""
        import torch

        if not self.checkpoint_path.exists():
            out = Path(self.config.out)
            raise ConfigError(f"nothing to resume in {out}: no checkpoints/last.pt")
        # on the CPU: the RNG state must stay a CPU tensor; load_state_dict moves the rest
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        self.history = list(state["history"])
        self.best = state.get("best")
        self.start = int(state["epoch"]) + 1
        log(f"resuming {Path(self.config.out)} after epoch {state['epoch']}")

    def train_epoch(self, epoch: int, progress: bool) -> dict[str, Any]:
        """One pass over the train split; the row's train loss and metric."""
        from tqdm import tqdm

        config, data = self.config, self.data
        self.model.train()
        loader = _loader(data.train, config, shuffle=True, epoch=epoch)
        meter = Meter(data.train.categorical, self.outputs, data.target_mean, data.target_std)
        bar = tqdm(
            loader, desc=f"epoch {epoch}/{config.epochs}", leave=False, disable=not progress,
            file=sys.stderr, dynamic_ncols=True,
        )  # fmt: skip
        for batch in bar:
            batch = _to(batch, config.device)
            self.optimizer.zero_grad()
            output = self.model(batch["image"])
            loss = compute_loss(
                output, batch, data.train.categorical, data.target_mean, data.target_std
            )
            loss.backward()
            self.optimizer.step()
            meter.add(loss.item(), output.detach(), batch)
            bar.set_postfix(loss=f"{meter.loss_sum / meter.batches:.4f}")
        trained = meter.result()
        return {
            "epoch": epoch, "train_loss": trained["loss"],
            f"train_{self.metric}": trained[self.metric],
        }  # fmt: skip

    def validate(self) -> dict[str, float]:
        """The row's validation loss and metric (NaN without a val split)."""
        if self.data.val is None:
            return {"val_loss": math.nan, f"val_{self.metric}": math.nan}
        loader = _loader(self.data.val, self.config, False)
        result = _evaluate(self.model, loader, self.data, self.config.device, self.outputs)
        return {"val_loss": result["loss"], f"val_{self.metric}": result[self.metric]}

    def save(self, row: dict[str, Any]) -> None:
        """Add the epoch's row; write last.pt (and best.pt when it improved) and metrics.csv."""
        import torch

        self.history.append(row)
        value = row[f"val_{self.metric}"]
        categorical = self.data.train.categorical
        improved = not math.isnan(value) and (
            self.best is None or (value > self.best if categorical else value < self.best)
        )
        if improved:
            self.best = value
        state = {
            "epoch": row["epoch"], "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "rng": torch.get_rng_state(),
            "history": self.history, "best": self.best, "config": asdict(self.config),
        }  # fmt: skip
        _save_atomically(state, self.checkpoint_path)
        if improved:
            _save_atomically(state, self.checkpoint_path.parent / "best.pt")
        _write_metrics(Path(self.config.out) / METRICS_NAME, self.history)


def finish(
    model: Any, data: Data, config: TrainConfig, history: list[dict[str, Any]], outputs: int
) -> dict[str, Any]:
    """Test metrics (of the last epoch's model), the curves and the prediction pictures."""
    out = Path(config.out)
    evaluated = data.test or data.val or data.train
    split = "test" if data.test is not None else ("val" if data.val is not None else "train")
    result = _evaluate(model, _loader(evaluated, config, False), data, config.device, outputs)
    result = {
        "split": split, "tiles": len(evaluated), "epochs": len(history),
        **({"classes": list(data.train.classes)} if data.train.categorical else {}),
        **result,
    }  # fmt: skip
    # a class absent from the split has a NaN IoU: written null (strict JSON)
    strict_json.write(out / TEST_METRICS_NAME, result, indent=1, default=str)
    from m3leo_tiles.ml.plots import plot_curves, plot_predictions

    plot_curves(history, out / CURVES_NAME, metric="miou" if data.train.categorical else "rmse")
    plot_predictions(model, evaluated, data, config, out / PREDICTIONS_NAME)
    return result


# --- command line --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """``m3leo-train``, now ``m3leo_tiles.cli.train:main``: kept for the console scripts that
    installs made before the move still hold (their ``bin/m3leo-train`` imports this)."""
    from m3leo_tiles.cli.train import main as command_main

    command_main(argv)
