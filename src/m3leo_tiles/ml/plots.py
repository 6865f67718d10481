"""The pictures at the end of a run: loss and metric curves, predictions beside targets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from m3leo_tiles.core.atomic import replacing

# ESA WorldCover's own legend colours, in class order (10, 20, ..., 100).
ESA_WORLDCOVER_COLOURS = (
    "#006400", "#ffbb22", "#ffff4c", "#f096ff", "#fa0000", "#b4b4b4",
    "#f0f0f0", "#0064c8", "#0096a0", "#00cf75", "#fae6a0",
)  # fmt: skip


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: Sequence[dict[str, Any]], path: Path, metric: str) -> Path:
    """Train/val loss and the validation metric per epoch, side by side."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    left.plot(epochs, [row["train_loss"] for row in history], "o-", label="train")
    val = [row.get("val_loss", math.nan) for row in history]
    if not all(math.isnan(v) for v in val):
        left.plot(epochs, val, "o-", label="val")
    left.set(xlabel="epoch", ylabel="loss", title="loss")
    left.legend()
    right.plot(epochs, [row.get(f"train_{metric}", math.nan) for row in history], "o-",
               label="train")  # fmt: skip
    values = [row.get(f"val_{metric}", math.nan) for row in history]
    if not all(math.isnan(v) for v in values):
        right.plot(epochs, values, "o-", label="val")
    else:
        right.set_title(f"{metric} (no validation tiles)")
    right.set(xlabel="epoch", ylabel=metric)
    if not right.get_title():
        right.set_title(metric)
    right.legend()
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.xaxis.get_major_locator().set_params(integer=True)
    with replacing(path) as partial:  # never through a link planted in the run folder
        figure.savefig(partial, dpi=100, format="png")
    plt.close(figure)
    return path


def _rgb(image: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """The first three real channels (or one in grey), stretched 2–98 %."""
    channels = [c for c in range(image.shape[0]) if not filled[c]][:3] or [0]
    if len(channels) < 3:
        channels = [channels[0]] * 3
    picture = np.stack([image[c] for c in channels], axis=-1).astype(np.float64)
    low, high = np.percentile(picture, [2, 98])
    return np.clip((picture - low) / (high - low if high > low else 1.0), 0, 1)


def plot_predictions(model: Any, dataset: Any, data: Any, config: Any, path: Path) -> Path:
    """A row per sample: the input, the target, the prediction (first ``config.predictions``)."""
    import torch
    from matplotlib.colors import ListedColormap

    plt = _pyplot()
    count = max(1, min(config.predictions, len(dataset)))
    categorical = dataset.categorical
    figure, axes = plt.subplots(
        count, 3, figsize=(9, 3 * count), squeeze=False, constrained_layout=True
    )
    if categorical:
        from m3leo_tiles.ml.dataset import ESA_WORLDCOVER_CLASSES

        n = dataset.num_classes
        if tuple(dataset.classes) == ESA_WORLDCOVER_CLASSES:
            cmap = ListedColormap(ESA_WORLDCOVER_COLOURS)
        else:
            cmap = plt.get_cmap("tab20", n)
    model.eval()
    for row in range(count):
        sample = dataset[row]
        with torch.no_grad():
            output = model(sample["image"][None].to(config.device))[0].cpu()
        image = sample["image"].numpy()
        axes[row, 0].imshow(_rgb(image, sample["filled"].numpy()))
        axes[row, 0].set_title(f"{sample['tile_id']} input")
        if categorical:
            truth = sample["mask"].numpy().astype(float)
            truth[truth < 0] = np.nan
            shown = [truth, output.argmax(0).numpy()]
            options = {"cmap": cmap, "vmin": -0.5, "vmax": n - 0.5, "interpolation": "nearest"}
        else:
            truth = sample["target"][0].numpy()
            prediction = output[0].numpy() * data.target_std + data.target_mean
            prediction[~np.isfinite(truth)] = np.nan  # only where there is a target
            shown = [truth, prediction]
            finite = truth[np.isfinite(truth)]
            low, high = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
            options = {"cmap": "viridis", "vmin": low, "vmax": high}
        for column, title in ((1, "target"), (2, "prediction")):
            shown_image = axes[row, column].imshow(shown[column - 1], **options)
            axes[row, column].set_title(title)
        bar = figure.colorbar(shown_image, ax=axes[row, 1:], shrink=0.8)
        if categorical:  # label the colours with the class values, not their indices
            bar.set_ticks(range(n), labels=[str(v) for v in dataset.classes])
        for axis in axes[row]:
            axis.set_xticks([])
            axis.set_yticks([])
    with replacing(path) as partial:
        figure.savefig(partial, dpi=80, format="png")
    plt.close(figure)
    return path
