"""Task presets of ``m3leo-train``: the paper's tasks as input/target recipes, loss and metric.

A task is data: which datasets go in, which one is predicted, whether it is categorical
(cross-entropy; per-class and mean IoU) or continuous (MSE; RMSE in the target's units).
``--target DATASET --target-type ...`` builds the same object for any other dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

from m3leo_tiles.core.errors import ConfigError


@dataclass(frozen=True)
class Task:
    name: str
    inputs: tuple[str, ...]
    target: str
    target_type: str  # categorical | continuous
    target_bands: tuple[str, ...] = ()
    classes: str | tuple[int, ...] | None = None
    description: str = ""

    @property
    def categorical(self) -> bool:
        return self.target_type == "categorical"

    @property
    def metric(self) -> str:
        """The metric that is reported each epoch (higher mIoU, lower RMSE is better)."""
        return "miou" if self.categorical else "rmse"

    @property
    def loss(self) -> str:
        return "cross-entropy" if self.categorical else "mse"


PAPER_INPUTS = ("s1grd", "s2srm")

TASKS: dict[str, Task] = {
    "esawc": Task(
        "esawc", PAPER_INPUTS, "esawc", "categorical", classes="esa-worldcover",
        description="ESA WorldCover segmentation, 11 classes (values 10…100), mIoU",
    ),
    "agb": Task(
        "agb", PAPER_INPUTS, "agb", "continuous", target_bands=("agb",),
        description="above-ground biomass regression (Mg/ha), RMSE",
    ),
    "ghsbuilts": Task(
        "ghsbuilts", PAPER_INPUTS, "ghsbuilts", "continuous", target_bands=("built_surface",),
        description="built-up surface regression (m² per pixel), RMSE",
    ),
}  # fmt: skip


def make_task(
    task: str | None,
    target: str | None,
    target_type: str | None,
    inputs: tuple[str, ...] | None,
    target_bands: tuple[str, ...] = (),
    classes: str | tuple[int, ...] | None = None,
) -> Task:
    """The preset ``task`` (inputs overridable), or a task for any target dataset."""
    if task is not None and target is not None:
        raise ConfigError("give either --task or --target, not both")
    if task is not None:
        if task not in TASKS:
            raise ConfigError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
        preset = TASKS[task]
        return Task(
            preset.name,
            inputs or preset.inputs,
            preset.target,
            preset.target_type,
            target_bands or preset.target_bands,
            classes or preset.classes,
            preset.description,
        )
    if target is None:
        raise ConfigError("give --task esawc|agb|ghsbuilts or --target DATASET --target-type ...")
    if target_type not in {"categorical", "continuous"}:
        raise ConfigError("--target needs --target-type categorical or continuous")
    if not inputs:
        raise ConfigError("--target needs --inputs, e.g. --inputs s1grd,s2srm")
    return Task(target, inputs, target, target_type, target_bands, classes, "custom target")
